import errno
import logging
import os

import pytest

from v3_common import (ConfigError, DamagedFileError, StorageError, atomic_write_bytes,
                       atomic_write_json, check_interval, normalize_symbol, pair_key, read_json,
                       read_json_or_set_aside, setup_logging)


@pytest.mark.parametrize("given,expected", [
    ("BTCUSDT", "BTCUSDT"), ("BTC", "BTCUSDT"), ("LUNC", "LUNCUSDT"), ("BNB", "BNBUSDT"),
    ("ETHBTC", "ETHBTC"), (" SOLUSDT ", "SOLUSDT"), ("1000PEPEUSDT", "1000PEPEUSDT"),
    # lower case is accepted and normalised (issue 12, item 3)
    ("btc", "BTCUSDT"), ("eth", "ETHUSDT"), ("btcusdt", "BTCUSDT"), ("Sol", "SOLUSDT"),
])
def test_normalize_symbol(given, expected):
    assert normalize_symbol(given) == expected


@pytest.mark.parametrize("bad,hint", [
    ("BTC-USDT", "BTCUSDT"), ("BTC/USDT", "BTCUSDT"), ("eth_usdt", "ETHUSDT"),
    # a trailing USD means USDT: 'BTCUSD' would become the pair BTCUSDUSDT (issue 12, item 3)
    ("BTC-USD", "BTCUSDT"), ("btc/usd", "BTCUSDT"), ("ETH USD", "ETHUSDT"), ("sol-", "SOLUSDT"),
    ("", None), ("B", None), (42, None), ("-", None)])
def test_normalize_symbol_rejects_with_a_fix(bad, hint):
    with pytest.raises(ConfigError) as e:
        normalize_symbol(bad)
    if hint:
        assert f"Did you mean {hint!r}" in str(e.value)
        assert normalize_symbol(hint) == hint  # the suggestion is a symbol V3 takes as it is
    else:
        assert "Did you mean" not in str(e.value)


def test_typed_symbol_errors_are_download_errors():
    from v3_common import DelistedSymbolError, DownloadError, InvalidSymbolError
    assert issubclass(InvalidSymbolError, DownloadError)
    assert issubclass(DelistedSymbolError, DownloadError)
    assert not issubclass(InvalidSymbolError, DelistedSymbolError)


def test_intervals():
    assert check_interval("15m") == "15m"
    with pytest.raises(ConfigError, match="use one of 1m, 3m"):
        check_interval("1M")
    assert pair_key("BTCUSDT", "1h") == "BTCUSDT_1h"


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError) as e:
        atomic_write_bytes(path, b"partial")
    monkeypatch.undo()
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert f"cannot write {path}: No space left on device (ENOSPC). The disk is full: " in str(e.value)
    assert "and this file alone needs 7 B" in str(e.value)


@pytest.mark.parametrize("code,fix", [
    (errno.EACCES, "Make {folder} writable (or choose another --base-dir)"),
    (errno.EROFS, "The file system is read-only: choose a --base-dir on a writable disk"),
    (errno.EIO, "Check the folder and the disk"),
])
def test_write_errors_are_storage_errors_with_the_fix(tmp_path, monkeypatch, code, fix):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code), dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError) as e:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert fix.format(folder=tmp_path) in str(e.value) and e.value.errno == code


@pytest.mark.parametrize("text", ['{"a": ', "", "\ufffd garbage"])
def test_damaged_json_is_a_named_error_and_can_be_set_aside(tmp_path, caplog, text):
    path = tmp_path / "x.json"
    path.write_bytes(text.encode() if text != "\ufffd garbage" else b"\xff\xfe garbage")
    with pytest.raises(DamagedFileError, match=r"x.json is damaged: not readable JSON") as e:
        read_json(path)
    assert e.value.path == path
    assert read_json_or_set_aside(path, {"default": 1}, fix="rebuilding it") == {"default": 1}
    kept = list(tmp_path.glob("x.damaged-*.json"))
    assert len(kept) == 1 and not path.exists()
    assert f"Kept it as {kept[0].name}; rebuilding it" in caplog.text


def test_setup_logging_is_idempotent():
    log = logging.getLogger("v3")
    n = len(log.handlers)
    setup_logging()
    setup_logging()
    assert len(log.handlers) == n  # the test suite's marked handler is kept, nothing added


def test_text_table_aligns_and_shortens_at_word_boundaries():
    from v3_common import text_table
    out = text_table(("pair", "note"), [("BTCUSDT_15m", "stopped early at epoch 8 of 40"),
                                        ("ETHUSDT_1h", "")], max_width={1: 20}).splitlines()
    assert out[0].startswith("pair         note")
    assert out[1].endswith("stopped early at...")  # not 'stopped early at ep...'
    assert all(line == line.rstrip() for line in out)  # no padding at the end of a row


def test_plural_and_fmt_num():
    from v3_common import fmt_num, plural
    assert (plural(1, "pair"), plural(2, "pair"), plural(0, "model")) == ("1 pair", "2 pairs",
                                                                          "0 models")
    assert fmt_num(-0.00001, ".2f") == "0.00" and fmt_num(-0.00001, "+.3f") == "+0.000"
    assert fmt_num(-1.25, ".1f") == "-1.2" and fmt_num(None, ".1f") == "-"
    assert fmt_num(float("nan"), ".1f") == "-"
