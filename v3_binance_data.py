"""Step 2's Binance source: the latest N closed candles per pair into data/SYMBOL_INTERVAL.csv,
from the API (or the archive), many pairs at once. The HTTP side (base fallback, retries,
418 ban, weight budget) is v3_binance_client's, the per-pair outcome and the table
v3_pair_download's.

- When every API base is blocked, banned or unreachable, the bulk archive on
  data.binance.vision (v3_binance_archive) is the last resort; `source='binance-archive'`
  uses it first.
- Symbols are checked against exchangeInfo: known renames are followed with a warning, an
  unknown symbol fails its pair with InvalidSymbolError ("invalid symbol"), a non-TRADING or
  stale one with DelistedSymbolError ("delisted or halted").
- Pages forward by 1,000 from the first wanted candle; a candle whose close time is not yet
  past (on Binance's clock) is dropped. An existing CSV only gets the newer candles.

The names v3_colab_training, v3_predict and the tests import from here before the split
(api_urls_from_env, BinanceDownloader, PairDownload, check_series, ...) are re-exported.
"""
from __future__ import annotations

import dataclasses
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from v3_binance_archive import DAY_MS, ArchiveEmptyError, archive_url_from_env, fetch_archive_klines
from v3_binance_client import (BACKOFF_S, BINANCE_WEIGHT_LIMIT_PER_MIN, DEFAULT_API_URLS,
                               EXCHANGE_INFO_WEIGHT, KLINES_WEIGHT, MAX_ATTEMPTS,
                               MAX_RETRY_AFTER_S, WEIGHT_BUDGET_PER_MIN, ApiBase,
                               ApiUnavailableError, BinanceHttp, WeightBudget, api_urls_from_env,
                               make_client)
from v3_candle_series import check_series, find_gaps, log_gaps, merge_klines
from v3_common import (INTERVAL_MS, KLINE_COLUMNS, ConfigError, DelistedSymbolError,
                       DownloadError, InvalidSymbolError, V3Error, log, progress, utc_minute)
from v3_market_data import data_path, read_klines, write_klines
from v3_pair_download import PairDownload, format_download_table, load_offline_pair

__all__ = [  # defined here, and re-exported from the modules split out of this one
    "PAGE_LIMIT", "DEFAULT_WORKERS", "STALE_INTERVALS", "ARCHIVE_LAG_MS", "RENAMED_SYMBOLS",
    "RENAME_NOTES", "SYMBOL_NOTES", "klines_to_frame", "SymbolCheck", "BinanceDownloader",
    "download_klines",
    "BACKOFF_S", "BINANCE_WEIGHT_LIMIT_PER_MIN", "DEFAULT_API_URLS", "EXCHANGE_INFO_WEIGHT",
    "KLINES_WEIGHT", "MAX_ATTEMPTS", "MAX_RETRY_AFTER_S", "WEIGHT_BUDGET_PER_MIN", "ApiBase",
    "ApiUnavailableError", "BinanceHttp", "WeightBudget", "api_urls_from_env", "make_client",
    "check_series", "find_gaps", "log_gaps", "merge_klines",
    "PairDownload", "format_download_table", "load_offline_pair",
]

PAGE_LIMIT = 1000                  # candles per klines request (Binance's maximum)
DEFAULT_WORKERS = 4                # pairs downloaded at once
STALE_INTERVALS = 2                # newest candle older than this many intervals: halted
ARCHIVE_LAG_MS = 2 * 86_400_000    # the archive ends with yesterday (or the day before)

# Pairs of the guide's coin list that Binance renamed (Binance's delisting announcements).
RENAMED_SYMBOLS = {"MATICUSDT": "POLUSDT", "FTMUSDT": "SUSDT"}
RENAME_NOTES = {
    "MATICUSDT": "MATIC became POL: MATICUSDT was delisted on 2024-09-10, POLUSDT opened on "
                 "2024-09-13",
    "FTMUSDT": "Fantom became Sonic: FTMUSDT was delisted on 2025-01-13, SUSDT opened on "
               "2025-01-16",
}
SYMBOL_NOTES = {"LUNAUSDT": "LUNAUSDT is Terra 2.0 (since 2022-05-31); the original LUNA "
                            "trades as LUNCUSDT"}


def klines_to_frame(rows: list) -> pd.DataFrame:
    """Binance's 12-field kline rows (strings for prices) -> the kline layout."""
    ints = ("open_time", "close_time", "trades")
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ints else np.float64)
                             for c in KLINE_COLUMNS})
    try:  # column by column through numpy: twice as fast as DataFrame(rows).astype
        a = np.array([r[:11] for r in rows], dtype=object)
        return pd.DataFrame({c: a[:, j].astype(np.int64 if c in ints else np.float64)
                             for j, c in enumerate(KLINE_COLUMNS)})
    except (ValueError, TypeError, IndexError) as e:
        raise DownloadError(f"Binance sent kline rows V3 cannot read ({e}); first row: "
                            f"{rows[0]!r:.200}") from e


@dataclass(frozen=True)
class SymbolCheck:
    """What exchangeInfo said about a requested symbol."""
    requested: str
    symbol: str                         # the symbol to download: renamed or the same
    error: DownloadError | None = None  # InvalidSymbolError / DelistedSymbolError
    checked: bool = True                # False when exchangeInfo could not be reached

    @property
    def renamed(self) -> bool:
        return self.symbol != self.requested


# ---------------------------------------------------------------------------------------
# The downloader


class BinanceDownloader(BinanceHttp):
    """Downloads many pairs at once through python-binance; see the module docstring.

    One instance serves one run: it remembers the working base, the blocked ones and the
    weight spent (BinanceHttp). `stats` counts requests and weight; `close()` frees the
    clients.
    """

    def __init__(self, api_urls: list[str] | str | None = None, *, archive_url: str | None = None,
                 archive_fallback: bool = True, workers: int = DEFAULT_WORKERS,
                 weight_budget: int | WeightBudget = WEIGHT_BUDGET_PER_MIN, timeout_s: float = 10.0,
                 show_progress: bool = False, clock_ms: Callable[[], float] | None = None):
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"download workers must be an integer >= 1, got {workers!r} "
                              f"(default {DEFAULT_WORKERS}; Binance asks for few connections).")
        super().__init__(api_urls, weight_budget=weight_budget, timeout_s=timeout_s,
                         clock_ms=clock_ms)
        self.archive_url = archive_url_from_env(archive_url)
        self.archive_fallback = archive_fallback
        self.workers = workers
        self.show_progress = show_progress
        self._fallback_lock = threading.Lock()
        self._fallback_logged = False

    def __enter__(self) -> "BinanceDownloader":
        return self

    # -- symbols ------------------------------------------------------------------------
    def check_symbols(self, symbols: list[str]) -> dict[str, SymbolCheck]:
        """Check each symbol against exchangeInfo (one request); follow known renames.

        When no API base can be reached the symbols go unchecked: known renames are
        followed anyway, and the candles' age decides "delisted or halted".
        """
        symbols = list(dict.fromkeys(symbols))
        for s in symbols:
            if s in SYMBOL_NOTES:
                log.info("%s", SYMBOL_NOTES[s])
        wanted = list(dict.fromkeys(symbols + [RENAMED_SYMBOLS[s] for s in symbols
                                               if s in RENAMED_SYMBOLS]))
        try:
            status = self.exchange_status(wanted)
        except DownloadError as e:  # blocked everywhere, or Binance busy: go on unchecked
            log.warning("symbols not checked against exchangeInfo (%s); known renames are "
                        "followed and the candles' age tells delisted pairs", e)
            status = None
        return {s: _symbol_check(s, status) for s in symbols}

    # -- klines -------------------------------------------------------------------------
    def fetch_klines(self, symbol: str, interval: str, *, start_ms: int,
                     max_candles: int | None = None, label: str | None = None) -> pd.DataFrame:
        """Closed candles from `start_ms` on (at most `max_candles`), paging forward by 1,000.

        A candle whose close time is not yet past on Binance's clock is dropped.
        """
        label = label or f"{symbol} {interval}"
        step = INTERVAL_MS[interval]
        frames, have, cursor = [], 0, int(start_ms)
        while max_candles is None or have < max_candles:
            rows = self.request(label, KLINES_WEIGHT, lambda c, cur=cursor: c.get_klines(
                symbol=symbol, interval=interval, startTime=cur, limit=PAGE_LIMIT))
            page = klines_to_frame(rows)
            closed = page[page["close_time"] < self.now_ms()]
            if len(closed):
                frames.append(closed)
                have += len(closed)
            if len(rows) < PAGE_LIMIT or len(closed) < len(page) or not len(closed):
                break  # the newest candle, or the end of the pair's history
            nxt = int(closed["open_time"].iloc[-1]) + step
            if nxt <= cursor:
                break
            cursor = nxt
        df = pd.concat(frames, ignore_index=True) if frames else klines_to_frame([])
        return df.head(max_candles) if max_candles is not None else df

    def fetch_older(self, symbol: str, interval: str, *, before_ms: int, n_candles: int,
                    label: str | None = None) -> pd.DataFrame:
        """Up to `n_candles` candles opening before `before_ms`, paging backward by 1,000."""
        label = label or f"{symbol} {interval}"
        frames, end = [], int(before_ms) - 1
        need = n_candles
        while need > 0:
            limit = min(PAGE_LIMIT, need)
            rows = self.request(label, KLINES_WEIGHT, lambda c, e=end, n=limit: c.get_klines(
                symbol=symbol, interval=interval, endTime=e, limit=n))
            page = klines_to_frame(rows)
            page = page[page["open_time"] < before_ms]
            if not len(page):
                break
            frames.append(page)
            need -= len(page)
            end = int(page["open_time"].iloc[0]) - 1
            if len(rows) < limit:
                break  # the start of the pair's history
        if not frames:
            return klines_to_frame([])
        return pd.concat(frames[::-1], ignore_index=True)

    def fetch_archive(self, symbol: str, interval: str, *, start_ms: int, end_ms: int) -> pd.DataFrame:
        return fetch_archive_klines(symbol, interval, start_ms=start_ms, end_ms=end_ms,
                                    now_ms=self.now_ms(), base_url=self.archive_url,
                                    get=self.archive_get)

    # -- one pair -----------------------------------------------------------------------
    def download_pair(self, check: SymbolCheck, interval: str, n_candles: int, *,
                      data_dir: str | Path, refresh: bool = False,
                      source: str = "binance") -> PairDownload:
        """Bring data_dir/SYMBOL_INTERVAL.csv up to date; never raises V3Error (returns it)."""
        out = PairDownload(check.requested, check.symbol, interval, source=source)
        try:
            if check.error is not None:
                raise check.error
            self._download_pair(out, n_candles, Path(data_dir), refresh=refresh)
        except (V3Error, OSError) as e:
            if isinstance(e, OSError) and not isinstance(e, V3Error):  # the old file is intact
                e = DownloadError(f"{check.symbol} {interval}: cannot write the candles "
                                  f"({type(e).__name__}: {e}); the previous file is unchanged.")
            out.error = e
            if isinstance(e, DelistedSymbolError):
                _move_aside(Path(data_dir), check.symbol, interval)
        return out

    def _download_pair(self, out: PairDownload, n_candles: int, data_dir: Path, *,
                       refresh: bool) -> None:
        name = f"{out.symbol} {out.interval}"
        step = INTERVAL_MS[out.interval]
        path = data_path(data_dir, out.symbol, out.interval)
        _remove_stale_temps(path)
        now = self.now_ms()
        last_closed = (now // step) * step - step          # open time of the newest closed candle
        old = self._saved_candles(path, out.interval, name, refresh=refresh,
                                  last_closed=last_closed, n_candles=n_candles)
        start = (int(old["open_time"].iloc[-1]) + step if old is not None
                 else last_closed - (n_candles - 1) * step)
        new = self._fetch_range(out, start_ms=start, end_ms=last_closed,
                                incremental=old is not None)
        merged = merge_klines(old, new)
        if len(merged) < n_candles and out.source == "binance" and self.api_available:
            # a gap inside the window, a saved file shorter than asked for, or a pair whose
            # candles stopped before the window (stale): fetch the older candles
            before = int(merged["open_time"].iloc[0]) if len(merged) else start
            merged = merge_klines(self.fetch_older(out.symbol, out.interval, before_ms=before,
                                                   n_candles=n_candles - len(merged),
                                                   label=name), merged)
        if not len(merged):
            raise DownloadError(f"{name}: Binance returned no closed candles.")
        merged, gaps = check_series(merged, out.interval, name)
        self._check_fresh(out, merged, now)
        n_new = len(merged) - (len(old) if old is not None else 0)
        wrote = (old is None or n_new > 0) and write_klines(merged, path)
        if len(merged) < n_candles:
            log.warning("%s: only %d closed candles exist (asked for %d)", name, len(merged),
                        n_candles)
        log_gaps(name, gaps)
        out.rows, out.new_rows, out.gaps, out.path = len(merged), n_new if wrote else 0, gaps, path
        out.unchanged = not wrote
        out.first_open_time = int(merged["open_time"].iloc[0])
        out.last_open_time = int(merged["open_time"].iloc[-1])

    def _saved_candles(self, path: Path, interval: str, name: str, *, refresh: bool,
                       last_closed: int, n_candles: int) -> pd.DataFrame | None:
        """The saved file's candles to append to, or None to download afresh (refresh, no
        file, unusable, empty, or ending more than n_candles ago)."""
        if refresh or not path.exists():
            return None
        try:
            old, _ = check_series(read_klines(path), interval, str(path))
        except V3Error as e:
            log.warning("%s: the saved file is unusable (%s); downloading afresh", name, e)
            return None
        if not len(old):
            return None
        step = INTERVAL_MS[interval]
        if (last_closed - int(old["open_time"].iloc[-1])) // step > n_candles:
            log.info("%s: the saved file ends %s, more than %d candles ago; downloading afresh",
                     name, utc_minute(old["open_time"].iloc[-1]), n_candles)
            return None
        return old

    def _check_fresh(self, out: PairDownload, merged: pd.DataFrame, now: int) -> None:
        """DelistedSymbolError when the newest candle closed more than STALE_INTERVALS ago."""
        step = INTERVAL_MS[out.interval]
        newest_close = int(merged["open_time"].iloc[-1]) + step
        allowed = STALE_INTERVALS * step
        if out.source == "binance-archive" and "binance" not in out.sources_used:
            allowed += ARCHIVE_LAG_MS  # the archive ends with yesterday at best
        if now - newest_close > allowed:
            raise DelistedSymbolError(
                f"{out.symbol} {out.interval}: delisted or halted: the newest candle closed "
                f"{_age(now - newest_close)} ago ({utc_minute(newest_close)}), more than "
                f"{allowed // step} intervals; V3 does not train on stale data. Remove it from "
                f"COINS.")

    def _fetch_range(self, out: PairDownload, *, start_ms: int, end_ms: int,
                     incremental: bool) -> pd.DataFrame:
        """Closed candles opening in [start_ms, end_ms]: from the API (the archive when every
        base is blocked), or for source 'binance-archive' from the archive, with the API
        adding the candles the archive does not have yet (today's)."""
        if start_ms > end_ms:
            return klines_to_frame([])
        if out.source == "binance":
            if self.api_available is not False:
                try:
                    return self._fetch_api(out, start_ms, end_ms)
                except ApiUnavailableError:
                    if not self.archive_fallback:
                        raise
            if not self.archive_fallback:
                raise ApiUnavailableError(
                    f"{out.symbol} {out.interval}: every Binance API base is blocked ("
                    f"{'; '.join(b.url + ': ' + b.reason for b in self.bases)}) and the archive "
                    f"fallback is off. Set V3_BINANCE_API_URLS to a base that works here.")
            self._log_fallback_once()
            out.source = "binance-archive"
        return self._fetch_from_archive(out, start_ms, end_ms, incremental=incremental)

    def _fetch_api(self, out: PairDownload, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Candles opening in [start_ms, end_ms] from the API, noted on `out`."""
        step = INTERVAL_MS[out.interval]
        df = self.fetch_klines(out.symbol, out.interval, start_ms=start_ms,
                               max_candles=(end_ms - start_ms) // step + 1,
                               label=f"{out.symbol} {out.interval}")
        out.sources_used.append("binance")
        out.api_url = self.working_url
        return df

    def _fetch_from_archive(self, out: PairDownload, start_ms: int, end_ms: int, *,
                            incremental: bool) -> pd.DataFrame:
        """The archive's candles in the range, then today's (and yesterday's if not archived
        yet) from the API when it is there."""
        step = INTERVAL_MS[out.interval]
        now = self.now_ms()
        archive_end = min(end_ms, now - now % DAY_MS - 1)  # nothing of today is archived
        if not incremental and self.api_available is False:
            # no API for today's candles: take the latest N the archive has (up to yesterday)
            start_ms -= (end_ms - (archive_end // step) * step) // step * step
        df = klines_to_frame([])
        if start_ms <= archive_end:
            try:
                df = self.fetch_archive(out.symbol, out.interval, start_ms=start_ms,
                                        end_ms=archive_end)
                out.sources_used.append("binance-archive")
            except ArchiveEmptyError:
                if not incremental:
                    raise
        after = int(df["open_time"].iloc[-1]) + step if len(df) else start_ms
        if self.api_available is not False and after <= end_ms:
            try:
                df = merge_klines(df, self._fetch_api(out, after, end_ms))
            except ApiUnavailableError:
                pass
        if self.api_available is False and len(df):
            log.warning("%s %s: archive only (the API is blocked): the newest candle opened %s, "
                        "%.0f h ago", out.symbol, out.interval, utc_minute(df["open_time"].iloc[-1]),
                        (now - int(df["open_time"].iloc[-1])) / 3_600_000)
        return df

    def _log_fallback_once(self) -> None:
        with self._fallback_lock:
            if self._fallback_logged:
                return
            self._fallback_logged = True
        log.warning("every Binance API base is blocked (%s); falling back to the archive at %s "
                    "(it ends with yesterday's candles)",
                    "; ".join(f"{b.url}: {b.reason}" for b in self.bases), self.archive_url)

    # -- many pairs ---------------------------------------------------------------------
    def download_pairs(self, pairs: list[tuple[str, str]], *, n_candles: int,
                       data_dir: str | Path, refresh: bool | set = False,
                       source: str = "binance") -> list[PairDownload]:
        """Check the symbols, then download every (requested symbol, interval) with a bounded
        pool of workers. One pair failing never stops the others. `refresh` is a bool or the
        set of (symbol, interval) to download afresh."""
        if source not in ("binance", "binance-archive"):
            raise ConfigError(f"source {source!r}: BinanceDownloader serves 'binance' and "
                              f"'binance-archive'.")
        if not isinstance(n_candles, int) or n_candles < 1:
            raise ConfigError(f"n_candles must be an integer >= 1, got {n_candles!r}.")
        if not pairs:
            return []
        checks = self.check_symbols([s for s, _ in pairs])
        # one download per traded pair, even when COINS names both MATICUSDT and POLUSDT
        jobs: dict[tuple[str, str], tuple[SymbolCheck, str]] = {}
        for s, i in pairs:
            jobs.setdefault((checks[s].symbol, i), (checks[s], i))
        done: dict[tuple[str, str], PairDownload] = {}
        bar = progress(total=len(jobs), enabled=self.show_progress, desc="download", unit="pair")
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(jobs)),
                                  thread_name_prefix="v3-download")
        try:
            futures = {pool.submit(self.download_pair, chk, i, n_candles, data_dir=data_dir,
                                   refresh=refresh if isinstance(refresh, bool)
                                   else (chk.symbol, i) in refresh or (chk.requested, i) in refresh,
                                   source=source): key for key, (chk, i) in jobs.items()}
            for fut in as_completed(futures):
                r = fut.result()
                done[futures[fut]] = r
                bar.update(1)
                bar.set_postfix_str(f"{r.key} {'ok' if r.ok else 'failed'}")
        except BaseException:
            self.stop_requests()  # workers stop at their next request; files stay whole
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown()
        return [dataclasses.replace(done[(checks[s].symbol, i)], requested_symbol=s)
                for s, i in pairs]


def download_klines(symbol: str, interval: str, n_candles: int, *,
                    api_urls: list[str] | str | None = None, data_dir: str | Path,
                    refresh: bool = False) -> pd.DataFrame:
    """One pair, the simple way: bring data_dir/SYMBOL_INTERVAL.csv up to date and return it.

    Raises the pair's DownloadError instead of recording it.
    """
    with BinanceDownloader(api_urls, workers=1) as dl:
        r = dl.download_pairs([(symbol, interval)], n_candles=n_candles, data_dir=data_dir,
                              refresh=refresh)[0]
    if r.error is not None:
        raise r.error
    return read_klines(r.path)


# ---------------------------------------------------------------------------------------


def sources_to_refresh(pairs: list[tuple[str, str]],
                       prior_source: Callable[[str, str], str | None]) -> set[tuple[str, str]]:
    """The pairs (under their requested or renamed symbol) whose saved candles came from
    another source (synthetic, csv; `prior_source(symbol, interval)`): downloaded afresh
    instead of appended to."""
    refresh = set()
    for s, i in pairs:
        for sym in {s, RENAMED_SYMBOLS.get(s, s)}:
            prior = prior_source(sym, i)
            if prior not in (None, "binance", "binance-archive"):
                log.info("%s %s: the saved candles came from %r; downloading afresh", sym, i,
                         prior)
                refresh.add((sym, i))
    return refresh


def _symbol_check(s: str, status: dict[str, str] | None) -> SymbolCheck:
    """One requested symbol against exchangeInfo's {symbol: status} (None: not reached)."""
    new = RENAMED_SYMBOLS.get(s)
    if status is None:
        if new:
            log.warning("%s: %s. Downloading %s instead; its data and model are named "
                        "%s.", s, RENAME_NOTES[s], new, new)
        return SymbolCheck(s, new or s, checked=False)
    if new and status.get(s) != "TRADING" and status.get(new) == "TRADING":
        log.warning("%s: %s. Downloading %s instead; its data and model are named %s.",
                    s, RENAME_NOTES[s], new, new)
        return SymbolCheck(s, new)
    if s not in status:
        return SymbolCheck(s, s, InvalidSymbolError(
            f"{s}: invalid symbol: Binance's exchangeInfo does not list it. Check the "
            f"spelling on binance.com (a USDT pair such as BTCUSDT) or remove it from "
            f"COINS."))
    if status[s] != "TRADING":
        hint = f" It trades as {new} now." if new else ""
        return SymbolCheck(s, s, DelistedSymbolError(
            f"{s}: delisted or halted: exchangeInfo status is {status[s]}, not TRADING; "
            f"V3 does not train on stale data.{hint} Remove it from COINS."))
    return SymbolCheck(s, s)


def _age(ms_: float) -> str:
    h = ms_ / 3_600_000
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _remove_stale_temps(path: Path) -> None:
    """Temporary files a killed earlier write left beside `path` (never the file itself)."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _move_aside(data_dir: Path, symbol: str, interval: str) -> None:
    """Keep a delisted pair's old file out of steps 3 and 4 without deleting it."""
    path = data_path(data_dir, symbol, interval)
    if path.exists():
        dest = data_dir / "stale" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), dest)
        log.warning("%s %s: moved the old candles to %s so that no step trains on them",
                    symbol, interval, dest)
