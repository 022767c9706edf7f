"""Step 2's per-pair outcome: the offline sources (load_offline_pair), writes only when the
bytes change, messages that fit the source, and the closing table."""
from __future__ import annotations

import time

import pytest

from v3_common import (ConfigError, DataValidationError, DownloadError, InsufficientDataError,
                       InvalidSymbolError)
from v3_market_data import data_path, synthetic_klines, write_klines
from v3_pair_download import PairDownload, format_download_table, load_offline_pair

NEED = 496  # FeatureConfig().min_candles(): the guide's 60-candle windows


def test_synthetic_rerun_writes_nothing_and_says_unchanged(tmp_path):
    """Issue 12, item 6: every re-run printed '+2000 new' and rewrote data/."""
    first = load_offline_pair("BTCUSDT", "1h", source="synthetic", n_candles=2000,
                              data_dir=tmp_path, min_candles=NEED)
    assert first.ok and first.rows == first.new_rows == 2000 and not first.unchanged
    assert "+2000 new" in format_download_table([first])
    path = data_path(tmp_path, "BTCUSDT", "1h")
    mtime, data = path.stat().st_mtime_ns, path.read_bytes()
    time.sleep(0.02)
    again = load_offline_pair("BTCUSDT", "1h", source="synthetic", n_candles=2000,
                              data_dir=tmp_path, min_candles=NEED)
    assert again.ok and again.unchanged and again.new_rows == 0 and again.rows == 2000
    assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    table = format_download_table([again])
    assert "ok, unchanged" in table and "new" not in table
    assert again.info()["unchanged"] is True and again.info()["new_rows"] == 0
    # a different request does write
    more = load_offline_pair("BTCUSDT", "1h", source="synthetic", n_candles=2100,
                             data_dir=tmp_path, min_candles=NEED)
    assert not more.unchanged and more.new_rows == 2100 and path.stat().st_mtime_ns != mtime


def test_csv_rerun_is_unchanged_too(tmp_path):
    src = tmp_path / "csv"
    write_klines(synthetic_klines("ETHUSDT", "15m", 800), src / "ETHUSDT_15m.csv")
    kw = dict(source="csv", n_candles=700, data_dir=tmp_path / "data", csv_dir=src,
              min_candles=NEED)
    a = load_offline_pair("ETHUSDT", "15m", **kw)
    b = load_offline_pair("ETHUSDT", "15m", **kw)
    assert a.ok and a.rows == 700 and not a.unchanged
    assert b.ok and b.unchanged and b.new_rows == 0 and b.sources_used == ["csv"]


def test_short_csv_names_the_file_its_rows_and_a_fix_that_exists(tmp_path):
    """Issue 12, item 9: a 400-row CSV with --candles 2000 was told 'Download more candles
    (--candles) or shorten the window'; the file is what is short."""
    src = tmp_path / "csv"
    write_klines(synthetic_klines("BTCUSDT", "1h", 400), src / "BTCUSDT_1h.csv")
    r = load_offline_pair("BTCUSDT", "1h", source="csv", n_candles=2000, data_dir=tmp_path / "d",
                          csv_dir=src, min_candles=NEED)
    assert isinstance(r.error, InsufficientDataError)
    msg = str(r.error)
    assert "BTCUSDT_1h.csv: 400 candles (lines 2-401)" in msg
    assert f"needs >= {NEED}" in msg and "Give a longer file" in msg
    assert "window" not in msg.split("needs")[1].split(")")[1] and "Download" not in msg
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())
    assert "failed: BTCUSDT_1h.csv: 400 candles" in format_download_table([r])


def test_too_small_candles_option_is_the_fix_when_the_file_is_long(tmp_path):
    src = tmp_path / "csv"
    write_klines(synthetic_klines("BTCUSDT", "1h", 900), src / "BTCUSDT_1h.csv")
    r = load_offline_pair("BTCUSDT", "1h", source="csv", n_candles=300, data_dir=tmp_path,
                          csv_dir=src, min_candles=NEED)
    assert isinstance(r.error, InsufficientDataError)
    assert f"Use --candles {NEED} or more" in str(r.error) and "longer file" not in str(r.error)


def test_csv_errors_name_file_lines_and_print_times_as_integers_and_utc(tmp_path):
    src = tmp_path / "csv"
    k = synthetic_klines("BNBUSDT", "1h", 700)
    k.loc[[123, 456], "high"] = k.loc[[123, 456], "low"] * 0.5
    write_klines(k, src / "BNBUSDT_1h.csv")
    r = load_offline_pair("BNBUSDT", "1h", source="csv", n_candles=700, data_dir=tmp_path,
                          csv_dir=src, min_candles=NEED)
    assert isinstance(r.error, DataValidationError)
    msg = str(r.error)
    # frame position 123 is the file's line 125 (the header is line 1)
    assert "high < low in 2 rows: line 125 (open_time=" in msg and "; line 458 (" in msg
    t = int(k["open_time"].iloc[123])
    assert f"open_time={t} (" in msg and "UTC)" in msg
    assert "e+12" not in msg and f"{t}.0" not in msg
    # the line is really that row of the file
    line = (src / "BNBUSDT_1h.csv").read_text().splitlines()[125 - 1]
    assert line.startswith(f"{t},")


def test_load_offline_pair_refuses_what_it_does_not_serve(tmp_path):
    with pytest.raises(ConfigError, match="serves"):
        load_offline_pair("BTCUSDT", "1h", source="binance", n_candles=500, data_dir=tmp_path)
    with pytest.raises(ConfigError, match="--data-dir"):
        load_offline_pair("BTCUSDT", "1h", source="csv", n_candles=500, data_dir=tmp_path)
    r = load_offline_pair("BTCUSDT", "1h", source="csv", n_candles=500, data_dir=tmp_path,
                          csv_dir=tmp_path / "none")
    assert isinstance(r.error, ConfigError) and "no CSV for BTCUSDT 1h" in str(r.error)


def test_table_keeps_its_columns_cuts_reasons_at_words_and_counts_gaps():
    ok = PairDownload("BTCUSDT", "BTCUSDT", "1h", rows=500, new_rows=5,
                      first_open_time=1_735_689_600_000, last_open_time=1_737_482_400_000,
                      sources_used=["binance"], gaps=[{"missing": 1}])
    same = PairDownload("ETHUSDT", "ETHUSDT", "1h", rows=500, sources_used=["binance"],
                        unchanged=True)
    bad = PairDownload("FOOUSDT", "FOOUSDT", "1h", error=InvalidSymbolError(
        "FOOUSDT: invalid symbol: Binance's exchangeInfo does not list it. Check the spelling "
        "on binance.com (a USDT pair such as BTCUSDT) or remove it from COINS."))
    lines = format_download_table([ok, same, bad]).splitlines()
    assert lines[0].split() == ["pair", "requested", "rows", "first", "candle", "last", "candle",
                                "source", "status"]
    assert lines[1].endswith("ok, +5 new, 1 gap")  # not '1 gap(s)'
    assert lines[2].endswith("ok, up to date")     # Binance had nothing newer
    status = lines[3].split("  ")[-1]
    assert status.startswith("failed: invalid symbol:") and status.endswith("...")
    assert len(status) <= 78 and status[:-3].split()[-1] in bad.error.args[0].split()
    assert all(line == line.rstrip() for line in lines)
    assert isinstance(bad.error, DownloadError)
