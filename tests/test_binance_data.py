"""Step 2's Binance download, through the real python-binance client, against the fake
Binance of tests/fake_binance.py on 127.0.0.1. No test touches the real network: the
autouse fixture points the default URLs at a closed local port."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import binance.client
import v3_binance_client
import v3_binance_data as bd
from fake_binance import FakeBinance, Reply, ms
from v3_common import (ConfigError, DataValidationError, DelistedSymbolError, DownloadError,
                       InvalidSymbolError, RetryableDownloadError, StorageError)
from v3_market_data import data_path, read_klines, write_klines

REPO = Path(__file__).resolve().parents[1]
H = 3_600_000
M15 = 900_000


@pytest.fixture(autouse=True)
def binance_sleeps(monkeypatch):
    """python-binance sleeps 1 s inside get_historical_klines (binance.client calls
    time.sleep): record the calls instead. V3 pages with get_klines, so none should come."""
    calls: list[float] = []
    monkeypatch.setattr(binance.client, "time", types.SimpleNamespace(time=time.time,
                                                                      sleep=calls.append))
    return calls


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """V3's own waits (backoff, Retry-After, weight budget), recorded and not slept: a
    wait moves V3's pause clock forward instead."""
    recorded: list[float] = []
    skipped = [0.0]

    def sleep(s: float, stop=None) -> None:
        if s > 0:
            recorded.append(round(s, 3))
            skipped[0] += s
    monkeypatch.setattr(v3_binance_client, "_sleep", sleep)
    monkeypatch.setattr(v3_binance_client, "_monotonic", lambda: time.monotonic() + skipped[0])
    return recorded


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="v3")


@pytest.fixture(autouse=True)
def no_real_binance(monkeypatch):
    """Defaults that would reach the real Binance point at a closed local port instead."""
    monkeypatch.setenv("V3_BINANCE_API_URLS", "http://127.0.0.1:9/api")
    monkeypatch.setenv("V3_BINANCE_ARCHIVE_URL", "http://127.0.0.1:9")


@pytest.fixture
def fake():
    with FakeBinance() as fb:
        yield fb


class Clock:
    """A settable clock (seconds) shared by a fake server and the downloader."""

    def __init__(self, t_ms: int):
        self.t = t_ms / 1000

    def __call__(self) -> float:
        return self.t

    def ms(self) -> float:
        return self.t * 1000


def downloader(*urls: str, clock: Clock | None = None, **kw) -> bd.BinanceDownloader:
    kw.setdefault("archive_fallback", False)
    kw.setdefault("workers", 2)
    kw.setdefault("timeout_s", 5.0)
    if clock is not None:
        kw["clock_ms"] = clock.ms
    return bd.BinanceDownloader(list(urls), **kw)


def fetch(dl: bd.BinanceDownloader, pairs, n: int, data_dir, **kw) -> list[bd.PairDownload]:
    with dl:
        return dl.download_pairs(pairs, n_candles=n, data_dir=data_dir, **kw)


def assert_regular(df: pd.DataFrame, step: int) -> None:
    t = df["open_time"].to_numpy()
    assert (np.diff(t) == step).all()
    assert (df["close_time"].to_numpy() == t + step - 1).all()


# ---------------------------------------------------------------------------------------
# Paging and the unfinished candle


@pytest.mark.parametrize("n, interval, pages", [(3000, "1h", 3), (10_000, "15m", 10)])
def test_latest_n_closed_candles_in_pages_of_1000(fake, tmp_path, binance_sleeps, n, interval,
                                                  pages):
    r, = fetch(downloader(fake.url), [("BTCUSDT", interval)], n, tmp_path)
    assert r.ok, r.error
    df = read_klines(data_path(tmp_path, "BTCUSDT", interval))
    step = {"1h": H, "15m": M15}[interval]
    assert len(df) == r.rows == n
    assert_regular(df, step)
    now = time.time() * 1000
    assert df["close_time"].iloc[-1] < now  # closed
    assert df["open_time"].iloc[-1] >= (now // step) * step - 2 * step  # and the newest ones
    assert fake.count("klines") == pages  # exactly ceil(n / 1000) requests
    assert fake.count("exchangeInfo") == 1
    assert binance_sleeps == []  # python-binance's 1 s sleep never ran


def test_unfinished_last_candle_is_dropped(fake, tmp_path):
    r, = fetch(downloader(fake.url), [("ETHUSDT", "1h")], 1500, tmp_path)
    assert fake.unfinished_served == 1  # the second page ended with the forming candle
    df = read_klines(r.path)
    now = time.time() * 1000
    assert len(df) == 1500 and df["close_time"].max() < now
    assert df["open_time"].iloc[-1] + H <= now < df["open_time"].iloc[-1] + 3 * H


# ---------------------------------------------------------------------------------------
# Base URLs: 451 / 403 fall back and the working base is remembered


@pytest.mark.parametrize("status, words", [(451, "restricted location"), (403, "firewall")])
def test_blocked_first_base_falls_back_to_the_second(tmp_path, caplog, status, words):
    with FakeBinance(block=status) as blocked, FakeBinance() as good:
        rs = fetch(downloader(blocked.url, good.url),
                   [("BTCUSDT", "1h"), ("ETHUSDT", "1h"), ("SOLUSDT", "15m")], 1200, tmp_path)
        assert all(r.ok for r in rs), [r.error for r in rs]
        assert blocked.count() == 1  # one refused request, then never again
        assert good.count("klines") == 6
    assert {r.api_url for r in rs} == {good.url}
    lines = [m for m in caplog.messages if f"HTTP {status}" in m]
    assert len(lines) == 1 and words in lines[0] and f"trying {good.url}" in lines[0]
    assert sum(f"using {good.url} for the rest of this run" in m for m in caplog.messages) == 1


def test_geo_block_body_is_binances(tmp_path):
    """python-binance reads the 451 answer like the real one: code 0 and Binance's text."""
    from binance.exceptions import BinanceAPIException
    with FakeBinance(block=451) as blocked:
        c = bd.make_client(blocked.url)
        with pytest.raises(BinanceAPIException) as e:
            c.get_klines(symbol="BTCUSDT", interval="1h", limit=5)
    assert e.value.status_code == 451 and e.value.code == 0
    assert e.value.message.startswith("Service unavailable from a restricted location according "
                                      "to 'b. Eligibility' in https://www.binance.com/en/terms.")


def test_dead_base_is_retried_then_skipped(tmp_path, waits, caplog):
    dead = FakeBinance().start()
    dead_url = dead.url
    dead.stop()
    with FakeBinance() as good:
        r, = fetch(downloader(dead_url, good.url), [("BTCUSDT", "1h")], 500, tmp_path)
    assert r.ok and r.api_url == good.url
    assert waits == [1.0, 2.0, 4.0, 8.0]  # bounded exponential backoff, then the next base
    assert any("cannot be reached (ConnectionError after 5 attempts)" in m for m in caplog.messages)


def test_api_urls_from_option_and_environment(monkeypatch):
    monkeypatch.setenv("V3_BINANCE_API_URLS", " http://a.test/api/, http://b.test/api ")
    assert bd.api_urls_from_env() == ["http://a.test/api", "http://b.test/api"]
    assert bd.api_urls_from_env(["https://c.test/api"]) == ["https://c.test/api"]
    assert bd.api_urls_from_env("https://c.test/api,https://d.test/api")[1] == "https://d.test/api"
    monkeypatch.delenv("V3_BINANCE_API_URLS")
    assert bd.api_urls_from_env() == ["https://api.binance.com/api",
                                      "https://data-api.binance.vision/api"]
    with pytest.raises(ConfigError, match="not http\\(s\\) URLs"):
        bd.api_urls_from_env(["api.binance.com"])


# ---------------------------------------------------------------------------------------
# Rate limits and temporary errors


def test_429_waits_retry_after(fake, tmp_path, waits, caplog):
    fake.script("klines", Reply(429, headers={"Retry-After": "3"}))
    r, = fetch(downloader(fake.url, workers=1), [("BTCUSDT", "1h")], 2000, tmp_path)
    assert r.ok and r.rows == 2000
    assert waits == [3.0]
    assert fake.count("klines", status=429) == 1 and fake.count("klines", status=200) == 2
    assert any("HTTP 429" in m and "waiting 3 s as Retry-After asks" in m for m in caplog.messages)


def test_418_stops_every_request_to_that_base(fake, tmp_path, caplog):
    fake.script("klines", Reply(418, headers={"Retry-After": "120"}))
    pairs = [("BTCUSDT", "1h"), ("ETHUSDT", "1h"), ("SOLUSDT", "1h")]
    rs = fetch(downloader(fake.url, workers=1), pairs, 500, tmp_path)
    assert not any(r.ok for r in rs)
    ban = [i for i, h in enumerate(fake.hits) if h.status == 418]
    assert len(ban) == 1 and ban[0] == len(fake.hits) - 1  # nothing after the 418
    assert "IP banned for 120 s" in str(rs[0].error)
    assert all("blocked" in str(r.error) or "banned" in str(r.error) for r in rs)
    assert any("HTTP 418" in m and "banned for 120 s" in m and "no more requests" in m
               for m in caplog.messages)
    assert not list(tmp_path.glob("*.csv"))


def test_5xx_backs_off_exponentially(fake, tmp_path, waits):
    fake.script("klines", Reply(500), Reply(502))
    r, = fetch(downloader(fake.url, workers=1), [("BTCUSDT", "1h")], 800, tmp_path)
    assert r.ok and r.rows == 800
    assert waits == [1.0, 2.0]


def test_5xx_attempts_are_bounded_and_fail_only_that_pair(fake, tmp_path, waits):
    fake.script("klines", *[Reply(500)] * 5)
    rs = fetch(downloader(fake.url, workers=1), [("BTCUSDT", "1h"), ("ETHUSDT", "1h")], 800,
               tmp_path)
    assert isinstance(rs[0].error, RetryableDownloadError)
    assert "HTTP 500" in str(rs[0].error) and "after 5 attempts" in str(rs[0].error)
    assert rs[1].ok and rs[1].rows == 800
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert fake.count("klines", status=500) == 5


def test_slow_answer_times_out_and_is_retried(fake, tmp_path, waits, caplog):
    fake.script("klines", Reply(delay_s=1.5))
    r, = fetch(downloader(fake.url, workers=1, timeout_s=0.4), [("BTCUSDT", "1h")], 600, tmp_path)
    assert r.ok and r.rows == 600
    assert waits == [1.0]
    assert any("ReadTimeout" in m and "retry 1 of 4" in m for m in caplog.messages)


def test_weight_budget_never_lets_a_window_overflow():
    rng = np.random.default_rng(0)
    now = [0.0]
    budget = bd.WeightBudget(100, window_s=60.0, clock=lambda: now[0])
    booked = []
    for _ in range(300):
        now[0] += float(rng.exponential(0.5))
        w = int(rng.choice([2, 2, 2, 20]))
        booked.append((now[0] + budget.reserve(w), w))
    times = np.array([t for t, _ in booked])
    weights = np.array([w for _, w in booked])
    for t in times:
        assert weights[(times > t - 60.0 + 1e-9) & (times <= t)].sum() <= 100
    assert times.max() > now[0]  # the budget did make callers wait


def test_weight_budget_waits():
    budget = bd.WeightBudget(24, window_s=60.0, clock=lambda: 0.0)
    assert [budget.reserve(w) for w in (20, 2, 2, 2, 20)] == pytest.approx(
        [0.0, 0.0, 0.0, 60.0, 60.0], abs=0.01)


def test_used_weight_header_pauses_all_workers(tmp_path, waits, caplog):
    with FakeBinance(used_weight_offset=2_995) as fb:  # another tool on this IP spent a lot
        r, = fetch(downloader(fb.url, workers=1), [("BTCUSDT", "1h")], 500, tmp_path)
    assert r.ok
    assert len(waits) == 1 and 0.5 <= waits[0] <= 60.5  # until the next minute
    assert any("reports 3015 weight used this minute (budget 3000)" in m for m in caplog.messages)


def test_pairs_download_concurrently_with_a_client_per_worker(fake, tmp_path):
    coins = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
    dl = downloader(fake.url, workers=3)
    rs = fetch(dl, [(c, "1h") for c in coins], 1000, tmp_path)
    assert all(r.ok and r.rows == 1000 for r in rs)
    assert [r.symbol for r in rs] == coins  # results in the order asked for
    assert 2 <= dl.stats["clients"] <= 4  # one per worker thread (+ the main thread's)
    assert dl.stats["requests"] == fake.count() == 1 + 6
    assert fake.max_weight_per_window() == 20 + 6 * 2 <= bd.WEIGHT_BUDGET_PER_MIN


# ---------------------------------------------------------------------------------------
# Symbols


def test_renamed_symbols_are_followed(fake, tmp_path, caplog):
    rs = fetch(downloader(fake.url), [("MATICUSDT", "1h"), ("FTMUSDT", "15m")], 700, tmp_path)
    assert [(r.requested_symbol, r.symbol, r.ok) for r in rs] == [
        ("MATICUSDT", "POLUSDT", True), ("FTMUSDT", "SUSDT", True)]
    assert (tmp_path / "POLUSDT_1h.csv").exists() and (tmp_path / "SUSDT_15m.csv").exists()
    assert not list(tmp_path.glob("MATIC*")) and not list(tmp_path.glob("FTM*"))
    assert fake.count("klines", symbol="MATICUSDT") == 0
    assert any(m.startswith("MATICUSDT: MATIC became POL") and "named POLUSDT" in m
               for m in caplog.messages)
    assert any(m.startswith("FTMUSDT: Fantom became Sonic") for m in caplog.messages)


def test_invalid_and_delisted_symbols_fail_only_their_pair(fake, tmp_path, caplog):
    write_klines(pd.DataFrame({"open_time": [0, H], "open": 1.0, "high": 1.0, "low": 1.0,
                               "close": 1.0, "volume": 1.0}), tmp_path / "STALEUSDT_1h.csv")
    pairs = [("FOOUSDT", "1h"), ("HALTUSDT", "1h"), ("STALEUSDT", "1h"), ("BTCUSDT", "1h")]
    rs = fetch(downloader(fake.url), pairs, 500, tmp_path)
    foo, halt, stale, btc = rs
    assert isinstance(foo.error, InvalidSymbolError) and not isinstance(foo.error,
                                                                         DelistedSymbolError)
    assert isinstance(halt.error, DelistedSymbolError) and isinstance(stale.error,
                                                                      DelistedSymbolError)
    assert "invalid symbol" in str(foo.error)
    assert "delisted or halted" in str(halt.error) and "status is BREAK" in str(halt.error)
    assert "delisted or halted" in str(stale.error) and "days ago" in str(stale.error)
    assert btc.ok and btc.rows == 500
    assert fake.count("klines", symbol="FOOUSDT") == fake.count("klines", symbol="HALTUSDT") == 0
    assert fake.count("exchangeInfo") == 2  # the list is refused (-1121), then all symbols once
    # the stale pair's old file is kept, but out of the way of steps 3 and 4
    assert not (tmp_path / "STALEUSDT_1h.csv").exists()
    assert (tmp_path / "stale" / "STALEUSDT_1h.csv").exists()
    table = bd.format_download_table(rs)
    assert "failed: invalid symbol" in table and "failed: delisted or halted" in table


def test_luna_note_is_logged(fake, tmp_path, caplog):
    fetch(downloader(fake.url), [("LUNAUSDT", "1h")], 300, tmp_path)
    assert any("LUNAUSDT is Terra 2.0 (since 2022-05-31)" in m for m in caplog.messages)


# ---------------------------------------------------------------------------------------
# Incremental, refresh, and writes that cannot leave a truncated file


def test_incremental_append_adds_exactly_the_new_candles(tmp_path):
    clock = Clock(ms(2026, 3, 1, 12, 30))
    with FakeBinance(clock=clock) as fb:
        r1, = fetch(downloader(fb.url, clock=clock), [("BTCUSDT", "1h")], 1000, tmp_path)
        before = read_klines(r1.path)
        clock.t += 5 * 3600
        n_klines = fb.count("klines")
        r2, = fetch(downloader(fb.url, clock=clock), [("BTCUSDT", "1h")], 1000, tmp_path)
        new_requests = [h.params for h in fb.hits[-1:]]
        assert fb.count("klines") == n_klines + 1
        assert int(new_requests[0]["startTime"]) == before["open_time"].iloc[-1] + H
        after = read_klines(r2.path)
        assert r2.new_rows == 5 and len(after) == 1005
        pd.testing.assert_frame_equal(after.head(1000), before)
        assert after["open_time"].is_unique
        assert_regular(after, H)
        # nothing new: no write at all
        mtime = r2.path.stat().st_mtime_ns
        time.sleep(0.01)
        r3, = fetch(downloader(fb.url, clock=clock), [("BTCUSDT", "1h")], 1000, tmp_path)
        assert r3.new_rows == 0 and r3.path.stat().st_mtime_ns == mtime
        assert "up to date" in bd.format_download_table([r3])
        # --refresh: the latest 1000 again, from scratch
        r4, = fetch(downloader(fb.url, clock=clock), [("BTCUSDT", "1h")], 1000, tmp_path,
                    refresh=True)
        df = read_klines(r4.path)
        assert len(df) == 1000 and df["open_time"].iloc[0] == before["open_time"].iloc[5]


def test_short_saved_file_is_extended_backwards(fake, tmp_path):
    fetch(downloader(fake.url), [("BTCUSDT", "1h")], 300, tmp_path)
    r, = fetch(downloader(fake.url), [("BTCUSDT", "1h")], 1300, tmp_path)
    df = read_klines(r.path)
    assert len(df) == 1300 and r.new_rows == 1000
    assert_regular(df, H)


def test_merge_keeps_one_row_per_open_time():
    a = pd.DataFrame({"open_time": [0, 1, 2], "close": [1.0, 1.0, 1.0]})
    b = pd.DataFrame({"open_time": [2, 3], "close": [2.0, 2.0]})
    m = bd.merge_klines(a, b)
    assert m["open_time"].tolist() == [0, 1, 2, 3] and m["close"].tolist() == [1, 1, 2, 2]


@pytest.mark.slow
def test_kill_during_write_leaves_the_old_csv_intact(fake, tmp_path):
    r, = fetch(downloader(fake.url), [("BTCUSDT", "1h")], 500, tmp_path)
    old = r.path.read_bytes()
    child = (
        "import os, signal, sys\n"
        "import v3_binance_data as bd\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write\n"
        "dl = bd.BinanceDownloader([sys.argv[1]], archive_fallback=False, workers=1)\n"
        "dl.download_pairs([('BTCUSDT', '1h')], n_candles=2000, data_dir=sys.argv[2],"
        " refresh=True)\n")
    p = subprocess.run([sys.executable, "-c", child, fake.url, str(tmp_path)], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                       timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    assert r.path.read_bytes() == old  # the old file, whole
    leftovers = list(tmp_path.glob(".BTCUSDT_1h.csv.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > len(old)  # the 2000-row try
    r2, = fetch(downloader(fake.url), [("BTCUSDT", "1h")], 500, tmp_path)
    assert r2.ok and not list(tmp_path.glob(".*.tmp"))  # the next run cleans up


def test_failed_write_keeps_the_old_file_and_the_other_pairs(fake, tmp_path, monkeypatch):
    r, = fetch(downloader(fake.url), [("BTCUSDT", "1h")], 500, tmp_path)
    old = r.path.read_bytes()
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("BTCUSDT_1h.csv"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    rs = fetch(downloader(fake.url), [("BTCUSDT", "1h"), ("ETHUSDT", "1h")], 900, tmp_path,
               refresh=True)
    # a StorageError (issue 21 item 5): the file, the disk's free space and the fix
    assert isinstance(rs[0].error, StorageError)
    assert "BTCUSDT_1h.csv: No space left on device (ENOSPC). The disk is full" in str(rs[0].error)
    assert r.path.read_bytes() == old and not list(tmp_path.glob(".*.tmp"))
    assert rs[1].ok and len(read_klines(rs[1].path)) == 900


# ---------------------------------------------------------------------------------------
# Series checks


def test_check_series_reports_gaps_with_times(klines):
    df = klines.drop(index=[100, 101, 102, 500]).reset_index(drop=True)
    out, gaps = bd.check_series(df, "15m", "BTCUSDT 15m")
    assert len(out) == len(df)
    assert [g["missing"] for g in gaps] == [3, 1]
    assert gaps[0]["after_open_time"] == klines["open_time"].iloc[99]
    assert gaps[0]["after"].endswith("UTC") and gaps[0]["before"].endswith("UTC")


def test_check_series_refuses_irregular_unsorted_or_inconsistent(klines):
    bad = klines.copy()
    bad.loc[10:, "open_time"] += 60_000  # one candle a minute off the 15m grid
    with pytest.raises(DataValidationError, match="irregular spacing"):
        bd.check_series(bad, "15m", "x")
    with pytest.raises(DataValidationError, match="not sorted"):
        bd.check_series(klines.iloc[::-1], "15m", "x")
    bad = klines.copy()
    bad.loc[5, "high"] = bad.loc[5, "low"] / 2
    with pytest.raises(DataValidationError, match="high < low"):
        bd.check_series(bad, "15m", "x")


# ---------------------------------------------------------------------------------------
# The archive (data.binance.vision): a second fake instance


ARCHIVE_NOW = ms(2025, 2, 10, 12, 30)


def test_archive_source_verifies_normalises_and_fills_today(tmp_path):
    clock = Clock(ARCHIVE_NOW)
    with FakeBinance(clock=clock) as api, FakeBinance(clock=clock) as archive:
        r, = fetch(downloader(api.url, clock=clock, archive_url=archive.root),
                   [("BTCUSDT", "1h")], 1000, tmp_path / "a", source="binance-archive")
        names = [h.path.rsplit("/", 1)[1] for h in archive.hits]
        ref, = fetch(downloader(api.url, clock=clock), [("BTCUSDT", "1h")], 1000, tmp_path / "b")
    assert r.ok, r.error
    assert r.source == "binance-archive" and r.sources_used == ["binance-archive", "binance"]
    # 2024-12 (ms) and 2025-01 (us) monthly, 2025-02-01..09 daily, each with its CHECKSUM
    assert {"BTCUSDT-1h-2024-12.zip", "BTCUSDT-1h-2025-01.zip", "BTCUSDT-1h-2025-02-09.zip",
            "BTCUSDT-1h-2025-02-09.zip.CHECKSUM"} <= set(names)
    assert not any("2025-02-10" in n for n in names)  # today is not archived yet
    df = read_klines(r.path)
    assert len(df) == 1000 and df["open_time"].max() < 10**14  # milliseconds throughout
    assert_regular(df, H)
    # the same candles as the API gives: microseconds were converted, nothing shifted
    pd.testing.assert_frame_equal(df, read_klines(ref.path), check_exact=False)


def test_archive_checksum_mismatch_is_refused(tmp_path, caplog):
    clock = Clock(ARCHIVE_NOW)
    bad = "BTCUSDT-1h-2025-02-03.zip"
    with FakeBinance(clock=clock) as api, FakeBinance(clock=clock, corrupt={bad}) as archive:
        rs = fetch(downloader(api.url, clock=clock, archive_url=archive.root),
                   [("BTCUSDT", "1h"), ("ETHUSDT", "1h")], 500, tmp_path, source="binance-archive")
        fetched = sum(h.path.endswith("/" + bad) for h in archive.hits)
    assert "checksum mismatch" in str(rs[0].error) and "refused" in str(rs[0].error)
    assert fetched == 2  # downloaded once more before giving up
    assert not (tmp_path / "BTCUSDT_1h.csv").exists()
    assert rs[1].ok and rs[1].rows == 500


def test_archive_is_the_last_resort_when_every_base_is_blocked(tmp_path, caplog):
    clock = Clock(ARCHIVE_NOW)
    with FakeBinance(block=451, clock=clock) as a, FakeBinance(block=403, clock=clock) as b, \
            FakeBinance(clock=clock) as archive:
        rs = fetch(downloader(a.url, b.url, clock=clock, archive_url=archive.root,
                              archive_fallback=True),
                   [("BTCUSDT", "1h"), ("MATICUSDT", "1h")], 600, tmp_path)
        assert a.count() == b.count() == 1
    assert all(r.ok for r in rs), [r.error for r in rs]
    assert [r.symbol for r in rs] == ["BTCUSDT", "POLUSDT"]  # known renames, unchecked
    assert all(r.source == "binance-archive" and r.sources_used == ["binance-archive"] for r in rs)
    df = read_klines(rs[0].path)
    assert len(df) == 600 and df["open_time"].iloc[-1] == ms(2025, 2, 9, 23)  # ends yesterday
    assert any("every Binance API base is blocked" in m and "falling back to the archive" in m
               for m in caplog.messages)


@pytest.mark.slow
def test_long_history_through_the_archive(tmp_path):
    clock = Clock(ARCHIVE_NOW)
    with FakeBinance(clock=clock) as api, FakeBinance(clock=clock) as archive:
        r, = fetch(downloader(api.url, clock=clock, archive_url=archive.root),
                   [("BTCUSDT", "15m")], 100_000, tmp_path, source="binance-archive")
        assert api.count("klines") == 1  # only today's candles came from the API
    assert r.ok and r.rows == 100_000
    df = read_klines(r.path)
    assert_regular(df, M15)
    assert df["open_time"].iloc[-1] == ms(2025, 2, 10, 12, 15)  # closed at 12:29:59.999


# ---------------------------------------------------------------------------------------
# Step 2 of the pipeline


def pipeline(tmp_path, fake_url, coins, **over):
    from conftest import tiny_config
    from v3_colab_training import V3CoLabPipeline
    cfg = tiny_config(source="binance", api_urls=[fake_url], archive_url="http://127.0.0.1:9",
                      candles=700, **over)
    return V3CoLabPipeline(tmp_path / "out", config=cfg, coins=coins, timeframes=["1h"])


@pytest.mark.slow
def test_step_2_records_renames_failures_and_a_table(fake, tmp_path, caplog):
    pipe = pipeline(tmp_path, fake.url, ["BTCUSDT", "MATICUSDT", "FOOUSDT"])
    done = pipe.step_2_download_binance_data()
    assert set(done) == {"BTCUSDT_1h", "POLUSDT_1h"}
    res = pipe.load_results()
    assert res["POLUSDT_1h"]["requested_symbol"] == "MATICUSDT"
    assert res["POLUSDT_1h"]["data"]["rows"] == 700
    assert res["BTCUSDT_1h"]["data"]["source"] == "binance"
    assert res["BTCUSDT_1h"]["data"]["api_url"] == fake.url
    assert res["FOOUSDT_1h"]["status"] == "failed" and "invalid symbol" in res["FOOUSDT_1h"]["reason"]
    table = next(m for m in caplog.messages if m.startswith("download summary (2 of 3 pairs ok)"))
    for words in ("pair", "requested", "rows", "first candle", "last candle", "source", "status",
                  "POLUSDT_1h  MATICUSDT", "failed: invalid symbol"):
        assert words in table
    # the later steps find the renamed pair through pipe.pairs()
    assert pipe.pairs() == [("BTCUSDT", "1h"), ("POLUSDT", "1h"), ("FOOUSDT", "1h")]
    assert pipe.requested_pairs()[1] == ("MATICUSDT", "1h")
    assert json.loads((pipe.data_dir / "symbol_renames.json").read_text()) == {
        "MATICUSDT": "POLUSDT"}
    pipe.step_3_preprocess_features()
    assert pipe.processed_path("POLUSDT", "1h").exists()


def test_step_2_replaces_synthetic_files_instead_of_appending(fake, tmp_path, caplog):
    pipe = pipeline(tmp_path, fake.url, ["BTCUSDT"])
    pipe.config = dataclasses.replace(pipe.config, source="synthetic")
    pipe.step_2_download_binance_data()
    pipe.config = dataclasses.replace(pipe.config, source="binance")
    pipe.step_2_download_binance_data()
    assert any("came from 'synthetic'; downloading afresh" in m for m in caplog.messages)
    df = read_klines(pipe.data_dir / "BTCUSDT_1h.csv")
    assert len(df) == 700 and df["open_time"].iloc[-1] > time.time() * 1000 - 3 * H
    assert pipe.load_results()["BTCUSDT_1h"]["data"]["synthetic"] is False


def test_cli_download_options():
    from v3_colab_training import build_parser, pipeline_from_args
    args = build_parser().parse_args([
        "--source", "binance-archive", "--api-urls", "http://a.test/api,http://b.test/api",
        "--archive-url", "http://c.test", "--refresh", "--download-workers", "2",
        "--candles", "100000"])
    pipe, _ = pipeline_from_args(args)
    c = pipe.config
    assert (c.source, c.api_urls, c.archive_url, c.refresh, c.download_workers, c.candles) == (
        "binance-archive", ["http://a.test/api", "http://b.test/api"], "http://c.test", True, 2,
        100_000)


def test_cli_refuses_a_bad_api_url(tmp_path, caplog):
    from v3_colab_training import main
    rc = main(["--base-dir", str(tmp_path), "--api-urls", "api.binance.com", "--steps", "download",
               "--no-progress"])
    assert rc == 2
    assert any("ConfigError" in m and "not http(s) URLs" in m for m in caplog.messages)


@pytest.mark.slow
def test_benchmark_runs_tiny():
    p = subprocess.run([sys.executable, "bench/bench_download.py", "--pairs", "4", "--candles",
                        "1500", "--latency-ms", "5"], cwd=REPO, capture_output=True, text=True,
                       timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-2000:]
    for words in ("machine:", "command:", "serial", "concurrent", "requests", "weight/min"):
        assert words in p.stdout


def test_download_klines_one_pair_the_simple_way(fake, tmp_path):
    df = bd.download_klines("BTCUSDT", "1h", 500, api_urls=[fake.url], data_dir=tmp_path)
    assert len(df) == 500 and (tmp_path / "BTCUSDT_1h.csv").exists()
    with pytest.raises(InvalidSymbolError, match="invalid symbol"):  # Binance's -1121
        bd.download_klines("NOPEUSDT", "1h", 500, api_urls=[fake.url], data_dir=tmp_path)


def test_fast_csv_writer_writes_what_pandas_float_format_writes(klines, tmp_path):
    """write_klines formats floats itself (3x faster for 100k-candle files); same bytes."""
    import io
    df = klines.copy()
    df.loc[3, "quote_volume"] = np.nan
    df.loc[4, "close"] = 1e-9
    write_klines(df, tmp_path / "a.csv")
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.12g")
    assert (tmp_path / "a.csv").read_text() == buf.getvalue()


def test_old_and_new_name_of_a_renamed_coin_download_once(fake, tmp_path):
    rs = fetch(downloader(fake.url), [("MATICUSDT", "1h"), ("POLUSDT", "1h")], 500, tmp_path)
    assert [(r.requested_symbol, r.symbol, r.ok) for r in rs] == [
        ("MATICUSDT", "POLUSDT", True), ("POLUSDT", "POLUSDT", True)]
    assert fake.count("klines") == 1


def test_symbols_go_unchecked_when_exchange_info_keeps_failing(fake, tmp_path, caplog):
    fake.script("exchangeInfo", *[Reply(500)] * 5)
    rs = fetch(downloader(fake.url, workers=1), [("FOOUSDT", "1h"), ("BTCUSDT", "1h")], 400,
               tmp_path)
    assert "invalid symbol" in str(rs[0].error)  # Binance's -1121 on the klines request
    assert isinstance(rs[0].error, InvalidSymbolError)
    assert rs[1].ok and rs[1].rows == 400
    assert any("symbols not checked against exchangeInfo" in m for m in caplog.messages)


# ---------------------------------------------------------------------------------------
# Errors by type, and the layout of the modules split out of this one (issue 12)


def _saved_pair(tmp_path) -> Path:
    path = tmp_path / "OLDUSDT_1h.csv"
    write_klines(pd.DataFrame({"open_time": [0, H], "open": 1.0, "high": 1.0, "low": 1.0,
                               "close": 1.0, "volume": 1.0}), path)
    return path


def test_a_delisted_pair_is_moved_aside_by_its_type_not_its_words(tmp_path):
    dl = bd.BinanceDownloader(["http://127.0.0.1:9/api"], archive_fallback=False)
    path = _saved_pair(tmp_path)
    # the words alone decide nothing: a plain DownloadError leaves the file where it is
    r = dl.download_pair(bd.SymbolCheck("OLDUSDT", "OLDUSDT", DownloadError(
        "OLDUSDT: delisted or halted, says some other message")), "1h", 500, data_dir=tmp_path)
    assert not r.ok and path.exists()
    # the type does, whatever the message says
    r = dl.download_pair(bd.SymbolCheck("OLDUSDT", "OLDUSDT", DelistedSymbolError(
        "OLDUSDT: gone")), "1h", 500, data_dir=tmp_path)
    assert isinstance(r.error, DelistedSymbolError) and not path.exists()
    assert (tmp_path / "stale" / "OLDUSDT_1h.csv").exists()
    dl.close()


def test_invalid_symbol_in_the_list_is_told_by_type(fake, tmp_path, monkeypatch):
    """exchangeInfo refuses the whole list for one unknown symbol (-1121): the downloader asks
    for everything once, decided by InvalidSymbolError, not by the message's words."""
    import v3_binance_client as client
    real = client.BinanceHttp._on_api_error

    def reworded(self, base, label, e):
        try:
            return real(self, base, label, e)
        except InvalidSymbolError as err:
            raise InvalidSymbolError(f"{label}: Binance knows no such pair") from err
    monkeypatch.setattr(client.BinanceHttp, "_on_api_error", reworded)
    rs = fetch(downloader(fake.url), [("FOOUSDT", "1h"), ("BTCUSDT", "1h")], 400, tmp_path)
    assert fake.count("exchangeInfo") == 2
    assert isinstance(rs[0].error, InvalidSymbolError) and rs[1].ok


def test_every_name_the_pipeline_and_predict_use_is_importable_from_here():
    from v3_binance_data import (RENAMED_SYMBOLS, BinanceDownloader, PairDownload,  # noqa: F401
                                 api_urls_from_env, check_series, download_klines,
                                 format_download_table, load_offline_pair, log_gaps)
    import v3_pair_download
    assert PairDownload is v3_pair_download.PairDownload
    assert all(hasattr(bd, n) for n in bd.__all__)
