"""Step 2's Binance source: the latest N closed candles per pair, dependable on Colab and
within the real API's limits. Facts about the API are in REFERENCE.md sections 1-2.

- One python-binance `Client(ping=False)` per worker thread, aimed at each base URL in turn
  (`api_urls=`, else $V3_BINANCE_API_URLS, else the main API then the market-data-only host).
  A 451 (restricted location: Colab's US machines) or a 403 block from a base moves on to
  the next one with one log line; the base that worked serves the rest of the run.
- When every base is blocked, banned or unreachable, the bulk archive on data.binance.vision
  (v3_binance_archive) is the last resort; `source='binance-archive'` uses it first.
- 429 waits its Retry-After (all workers pause); 5xx, timeouts and connection errors back
  off 1, 2, 4, 8 s (5 attempts); a 418 (IP banned) stops all requests to that base.
- A shared weight budget (3,000 of Binance's 6,000 per minute) paces all workers.
- Symbols are checked against exchangeInfo: known renames are followed with a warning, an
  unknown symbol fails its pair with "invalid symbol", a non-TRADING or stale one with
  "delisted or halted".
- Pages forward by 1,000 from the first wanted candle; a candle whose close time is not yet
  past (on Binance's clock) is dropped. An existing CSV only gets the newer candles.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from v3_binance_archive import DAY_MS, ArchiveEmptyError, archive_url_from_env, fetch_archive_klines
from v3_common import (INTERVAL_MS, KLINE_COLUMNS, ConfigError, DataValidationError,
                       DownloadError, RetryableDownloadError, V3Error, log, pair_key, progress,
                       utc_minute)

DEFAULT_API_URLS = ["https://api.binance.com/api", "https://data-api.binance.vision/api"]
PAGE_LIMIT = 1000                  # candles per klines request (Binance's maximum)
KLINES_WEIGHT = 2                  # request weights, as Binance counts them
EXCHANGE_INFO_WEIGHT = 20
BINANCE_WEIGHT_LIMIT_PER_MIN = 6000
WEIGHT_BUDGET_PER_MIN = 3000       # ours: half of Binance's limit, for other tabs and tools
DEFAULT_WORKERS = 4                # pairs downloaded at once
MAX_ATTEMPTS = 5                   # per request, for 429 / 5xx / timeouts / connection errors
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)   # waits between attempts
MAX_RETRY_AFTER_S = 120.0          # a longer Retry-After fails the pair instead of stalling
STALE_INTERVALS = 2                # newest candle older than this many intervals: halted
ARCHIVE_LAG_MS = 2 * 86_400_000    # the archive ends with yesterday (or the day before)

# Pairs of the guide's coin list that Binance renamed (REFERENCE.md section 1).
RENAMED_SYMBOLS = {"MATICUSDT": "POLUSDT", "FTMUSDT": "SUSDT"}
RENAME_NOTES = {
    "MATICUSDT": "MATIC became POL: MATICUSDT was delisted on 2024-09-10, POLUSDT opened on "
                 "2024-09-13",
    "FTMUSDT": "Fantom became Sonic: FTMUSDT was delisted on 2025-01-13, SUSDT opened on "
               "2025-01-16",
}
SYMBOL_NOTES = {"LUNAUSDT": "LUNAUSDT is Terra 2.0 (since 2022-05-31); the original LUNA "
                            "trades as LUNCUSDT"}


def _sleep(seconds: float, stop: threading.Event | None = None) -> None:
    """Every wait of this module goes through here (tests patch it to record the waits);
    `stop` set ends it early (Ctrl-C in the main thread)."""
    if seconds > 0:
        if stop is not None:
            stop.wait(seconds)
        else:
            time.sleep(seconds)


def _monotonic() -> float:
    """The clock of pauses and the weight budget (tests patch it along with _sleep)."""
    return time.monotonic()


def api_urls_from_env(urls: list[str] | str | None = None) -> list[str]:
    """The API bases to try, in order: `urls`, else $V3_BINANCE_API_URLS (comma-separated),
    else DEFAULT_API_URLS. Raises ConfigError for anything that is not an http(s) URL."""
    if isinstance(urls, str):
        urls = urls.split(",")
    if not urls:
        env = os.environ.get("V3_BINANCE_API_URLS", "")
        urls = env.split(",") if env.strip() else list(DEFAULT_API_URLS)
    out = [u.strip().rstrip("/") for u in urls if u and u.strip()]
    bad = [u for u in out if not u.startswith(("http://", "https://"))]
    if bad or not out:
        raise ConfigError(f"Binance API base URLs {bad or urls!r} are not http(s) URLs: give "
                          f"a comma-separated list such as {','.join(DEFAULT_API_URLS)} "
                          f"(--api-urls or V3_BINANCE_API_URLS).")
    return list(dict.fromkeys(out))


def make_client(api_url: str, *, timeout: float = 10.0):
    """A python-binance Client aimed at `api_url` (no ping in the constructor)."""
    import warnings
    with warnings.catch_warnings():  # `import binance` warns about websockets internals
        warnings.simplefilter("ignore", DeprecationWarning)
        from binance.client import Client
    client = Client(ping=False, requests_params={"timeout": timeout})
    client.API_URL = api_url.rstrip("/")
    return client


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



# ---------------------------------------------------------------------------------------
# Series checks: sorted, unique, regular spacing, consistent OHLC; gaps reported with times.


def find_gaps(df: pd.DataFrame, interval: str) -> list[dict]:
    """Every hole in a sorted series: {'after', 'before' (ISO times of the candles either
    side), 'after_open_time', 'before_open_time', 'missing' (candles)}."""
    step = INTERVAL_MS[interval]
    t = df["open_time"].to_numpy(dtype=np.int64)
    out = []
    for i in np.flatnonzero(np.diff(t) > step):
        a, b = int(t[i]), int(t[i + 1])
        out.append({"after": utc_minute(a), "before": utc_minute(b), "after_open_time": a,
                    "before_open_time": b, "missing": (b - a) // step - 1})
    return out


def check_series(df: pd.DataFrame, interval: str, name: str) -> tuple[pd.DataFrame, list[dict]]:
    """Validate a candle series (raises DataValidationError) and return it with its gaps.

    Checks: required columns numeric and finite, open times unique and sorted, OHLC
    consistent (v3_data_processor.validate_klines), and every spacing a whole number of
    intervals. Gaps (Binance outages, delisting pauses) are returned, not raised.
    """
    from v3_data_processor import validate_klines
    out = validate_klines(df, name)
    step = INTERVAL_MS[interval]
    d = np.diff(out["open_time"].to_numpy(dtype=np.int64))
    bad = np.flatnonzero(d % step != 0)
    if len(bad):
        i = int(bad[0])
        raise DataValidationError(
            f"{name}: irregular spacing: candles at {utc_minute(out['open_time'].iloc[i])} and "
            f"{utc_minute(out['open_time'].iloc[i + 1])} are {d[i] / 1000:g} s apart, not a multiple "
            f"of {interval} ({len(bad)} such places). Re-download the pair (--refresh).")
    return out, find_gaps(out, interval)


def log_gaps(name: str, gaps: list[dict], *, limit: int = 3) -> None:
    if not gaps:
        return
    shown = "; ".join(f"{g['after']} -> {g['before']} ({g['missing']} missing)"
                      for g in gaps[:limit])
    more = f"; +{len(gaps) - limit} more" if len(gaps) > limit else ""
    log.warning("%s: %d gap(s) in the series (no candles from Binance): %s%s", name,
                len(gaps), shown, more)


def merge_klines(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """Old and new candles together, one row per open time (the newer copy wins), sorted."""
    frames = [f for f in (old, new) if f is not None and len(f)]
    if not frames:
        return new.iloc[:0]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df = df.drop_duplicates("open_time", keep="last").sort_values("open_time")
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# The weight budget, shared by every worker.


class WeightBudget:
    """A sliding-window budget of request weight, shared by all workers (thread-safe).

    `reserve(weight)` books the earliest moment at which `weight` more fits into every
    window of `window_s` seconds and returns how long the caller must wait for it.
    """

    def __init__(self, limit_weight: int = WEIGHT_BUDGET_PER_MIN, *, window_s: float = 60.0,
                 clock: Callable[[], float] | None = None):
        if limit_weight < EXCHANGE_INFO_WEIGHT:
            raise ConfigError(f"weight budget {limit_weight} is below one exchangeInfo "
                              f"request ({EXCHANGE_INFO_WEIGHT}); use 100..{BINANCE_WEIGHT_LIMIT_PER_MIN}.")
        self.limit_weight, self.window_s = limit_weight, window_s
        self._clock = clock or (lambda: _monotonic())
        self._slots: deque[tuple[float, int]] = deque()
        self._total = 0
        self._lock = threading.Lock()

    def reserve(self, weight: int) -> float:
        with self._lock:
            now = self._clock()
            t = max(now, self._slots[-1][0]) if self._slots else now
            while self._slots and self._slots[0][0] <= t - self.window_s:
                self._total -= self._slots.popleft()[1]
            while self._total + weight > self.limit_weight:
                t0, w0 = self._slots.popleft()
                self._total -= w0
                t = max(t, t0 + self.window_s + 0.001)  # 1 ms clear of the window edge
            self._slots.append((t, weight))
            self._total += weight
            return t - now


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class SymbolCheck:
    """What exchangeInfo said about a requested symbol."""
    requested: str
    symbol: str                         # the symbol to download: renamed or the same
    error: DownloadError | None = None  # invalid symbol / delisted or halted
    checked: bool = True                # False when exchangeInfo could not be reached

    @property
    def renamed(self) -> bool:
        return self.symbol != self.requested


@dataclass
class PairDownload:
    """The outcome of one (symbol, interval): a file written, or an error."""
    requested_symbol: str
    symbol: str
    interval: str
    error: V3Error | None = None
    rows: int = 0
    new_rows: int = 0
    first_open_time: int | None = None
    last_open_time: int | None = None
    source: str = "binance"             # 'binance' or 'binance-archive'
    sources_used: list[str] = field(default_factory=list)
    api_url: str | None = None
    gaps: list[dict] = field(default_factory=list)
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def key(self) -> str:
        return pair_key(self.symbol, self.interval)

    @property
    def renamed(self) -> bool:
        return self.symbol != self.requested_symbol

    def info(self) -> dict:
        """The `data` block of the results JSON."""
        return {"source": self.source, "synthetic": self.source == "synthetic", "rows": self.rows,
                "new_rows": self.new_rows, "first_open_time": self.first_open_time,
                "last_open_time": self.last_open_time, "first": utc_minute(self.first_open_time),
                "last": utc_minute(self.last_open_time), "sources_used": self.sources_used,
                "api_url": self.api_url, "n_gaps": len(self.gaps), "gaps": self.gaps[:20]}


class ApiUnavailableError(DownloadError):
    """Every API base refused this machine (blocked, banned or unreachable)."""


class _BaseUnusable(Exception):
    """Internal: this base cannot serve the request (blocked, banned, unreachable)."""


@dataclass
class _Base:
    url: str
    state: str = "ok"            # 'ok', 'blocked' (451/403), 'banned' (418), 'unreachable'
    reason: str = ""
    pause_until: float = 0.0     # _monotonic(); set by 429s and the used-weight header
    paused_minute: int = -1      # the minute whose used weight last paused this base
    requests: int = 0


# ---------------------------------------------------------------------------------------
# The downloader


class BinanceDownloader:
    """Downloads many pairs at once through python-binance; see the module docstring.

    One instance serves one run: it remembers the working base, the blocked ones and the
    weight spent. `stats` counts requests and weight; `close()` frees the clients.
    """

    def __init__(self, api_urls: list[str] | str | None = None, *, archive_url: str | None = None,
                 archive_fallback: bool = True, workers: int = DEFAULT_WORKERS,
                 weight_budget: int | WeightBudget = WEIGHT_BUDGET_PER_MIN, timeout_s: float = 10.0,
                 show_progress: bool = False, clock_ms: Callable[[], float] | None = None):
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"download workers must be an integer >= 1, got {workers!r} "
                              f"(default {DEFAULT_WORKERS}; Binance asks for few connections).")
        self.bases = [_Base(u) for u in api_urls_from_env(api_urls)]
        self.archive_url = archive_url_from_env(archive_url)
        self.archive_fallback = archive_fallback
        self.workers = workers
        self.budget = (weight_budget if isinstance(weight_budget, WeightBudget)
                       else WeightBudget(weight_budget))
        self.timeout_s = timeout_s
        self.show_progress = show_progress
        self._clock_ms = clock_ms or (lambda: time.time() * 1000)
        self._offset_ms = 0.0         # Binance's clock minus ours, from exchangeInfo
        self._working: _Base | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._clients: list = []
        self._stop = threading.Event()
        self.api_available: bool | None = None  # None until the first request answers
        self.stats = {"requests": 0, "weight": 0, "archive_requests": 0, "retries": 0,
                      "clients": 0}

    # -- time ---------------------------------------------------------------------------
    def now_ms(self) -> int:
        """Binance's clock (ours corrected by exchangeInfo's serverTime)."""
        return int(self._clock_ms() + self._offset_ms)

    # -- clients ------------------------------------------------------------------------
    def _client(self, url: str):
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients:
            clients[url] = make_client(url, timeout=self.timeout_s)
            with self._lock:
                self.stats["clients"] += 1
                self._clients.append((clients[url], threading.current_thread()))
        return clients[url]

    def _archive_session(self):
        s = getattr(self._local, "archive_session", None)
        if s is None:
            import requests
            s = self._local.archive_session = requests.Session()
            with self._lock:
                self._clients.append((s, threading.current_thread()))
        return s

    def close(self) -> None:
        """Close every HTTP session and the event loops python-binance made in workers."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c, thread in clients:
            session = getattr(c, "session", c)
            session.close()
            loop = getattr(c, "loop", None)
            if loop is not None and thread is not threading.main_thread() \
                    and not loop.is_running() and not loop.is_closed():
                loop.close()

    def __enter__(self) -> "BinanceDownloader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------
    def _bases_in_order(self) -> list[_Base]:
        w = self._working
        return ([w] if w is not None else []) + [b for b in self.bases if b is not w]

    def request(self, label: str, weight: int, call: Callable[[Any], Any]) -> Any:
        """`call(client)` on the working base, falling back through the list on blocks.

        Raises ApiUnavailableError when no base can serve, DownloadError for answers that
        need a person (invalid symbol ...), RetryableDownloadError when retries ran out.
        """
        reasons = []
        for base in self._bases_in_order():
            if base.state != "ok":
                reasons.append(f"{base.url}: {base.reason}")
                continue
            try:
                result = self._request_on(base, label, weight, call)
            except _BaseUnusable:
                reasons.append(f"{base.url}: {base.reason}")
                continue
            with self._lock:
                if self._working is not base:
                    if base is not self.bases[0] or self._working is not None:
                        log.info("using %s for the rest of this run", base.url)
                    self._working = base
                self.api_available = True
            return result
        self.api_available = False
        raise ApiUnavailableError(
            f"{label}: no Binance API base can be used ({'; '.join(reasons)}). Set "
            f"V3_BINANCE_API_URLS (or --api-urls) to a base that works from this machine, or "
            f"use --source binance-archive or --source csv.")

    def _request_on(self, base: _Base, label: str, weight: int, call: Callable[[Any], Any]) -> Any:
        from binance.exceptions import BinanceAPIException, BinanceRequestException
        import requests
        last, waited_until = "", 0.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self._check_stop()
            pause = base.pause_until  # a 429 or the used-weight header paused every worker
            if pause > waited_until:
                _sleep(pause - _monotonic(), self._stop)
                waited_until = pause
            if base.state != "ok":
                raise _BaseUnusable()
            _sleep(self.budget.reserve(weight), self._stop)
            client = self._client(base.url)
            with self._lock:
                self.stats["requests"] += 1
                self.stats["weight"] += weight
                base.requests += 1
            try:
                result = call(client)
            except BinanceAPIException as e:
                wait = self._on_api_error(base, label, e, attempt)
                last = f"HTTP {e.status_code} ({_short(e.message)})"
            except (requests.RequestException, BinanceRequestException) as e:
                wait = _backoff(attempt)
                last = type(e).__name__
            else:
                self._note_used_weight(base, getattr(client, "response", None))
                return result
            if attempt == MAX_ATTEMPTS:
                break
            with self._lock:
                self.stats["retries"] += 1
            if not last.startswith("HTTP 429"):  # a 429 was logged with its Retry-After
                log.warning("%s: %s from %s; retry %d of %d in %g s", label, last, base.url,
                            attempt, MAX_ATTEMPTS - 1, wait)
            _sleep(wait, self._stop)
            waited_until = max(waited_until, base.pause_until)
        if last in ("ConnectionError", "ConnectTimeout"):
            base.state, base.reason = "unreachable", f"unreachable ({last}, {MAX_ATTEMPTS} attempts)"
            log.warning("%s cannot be reached (%s after %d attempts); trying the next base",
                        base.url, last, MAX_ATTEMPTS)
            raise _BaseUnusable()
        raise RetryableDownloadError(f"{label}: {last} from {base.url} after {MAX_ATTEMPTS} "
                                     f"attempts; Binance is busy or down: try again later.")

    def _on_api_error(self, base: _Base, label: str, e, attempt: int) -> float:
        """Handle one error answer: returns the wait before the next attempt, or raises."""
        status, code = e.status_code, e.code
        if status in (451, 403):
            with self._lock:
                if base.state == "ok":
                    why = ("restricted location: Binance refuses this machine's region, as it "
                           "does Colab's US servers" if status == 451 else "blocked by its firewall")
                    base.state, base.reason = "blocked", f"HTTP {status}, {why}"
                    nxt = [b.url for b in self.bases if b.state == "ok"]
                    log.warning("%s answered HTTP %d (%s); %s", base.url, status, why,
                                f"trying {nxt[0]}" if nxt else "no other API base is left")
            raise _BaseUnusable()
        if status == 418:
            ban_s = _retry_after(e.response)
            until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=ban_s or 0))
            with self._lock:
                if base.state == "ok":
                    base.state = "banned"
                    base.reason = (f"HTTP 418, IP banned for {ban_s:g} s (until "
                                   f"{until:%Y-%m-%d %H:%M:%S} UTC)" if ban_s else
                                   f"HTTP 418, IP banned ({_short(e.message)})")
                    log.error("%s answered HTTP 418: this IP is banned for %s%s; no more "
                              "requests go to it in this run", base.url,
                              f"{ban_s:g} s" if ban_s else "an unknown time",
                              f" (until {until:%Y-%m-%d %H:%M:%S} UTC)" if ban_s else "")
            raise _BaseUnusable()
        if status == 429:
            wait = _retry_after(e.response)
            if wait is None:
                wait = _backoff(attempt)
            if wait > MAX_RETRY_AFTER_S:
                raise RetryableDownloadError(
                    f"{label}: HTTP 429 from {base.url} asks to wait {wait:g} s (more than "
                    f"{MAX_RETRY_AFTER_S:g}); try again later.")
            with self._lock:  # every worker waits, not only this one
                base.pause_until = max(base.pause_until, _monotonic() + wait)
            log.warning("%s: HTTP 429 from %s (rate limit): waiting %g s as Retry-After asks",
                        label, base.url, wait)
            return wait
        if status >= 500:
            return _backoff(attempt)
        if code == -1121:
            raise DownloadError(f"{label}: invalid symbol: Binance does not list it ({e.message!r}). "
                                f"Check the spelling on binance.com or remove it from COINS.")
        raise DownloadError(f"{label}: Binance answered HTTP {status} (code {code}: "
                            f"{_short(e.message)}).")

    def _note_used_weight(self, base: _Base, response) -> None:
        """Pause every worker until the next minute if Binance reports our budget spent (the
        same IP may run other tools)."""
        used = _int_header(response, "X-MBX-USED-WEIGHT-1M")
        if used is None or used < self.budget.limit_weight:
            return
        now_s = self.now_ms() / 1000.0
        minute = int(now_s // 60)
        with self._lock:
            if base.paused_minute == minute:
                return  # already waiting for the next minute
            base.paused_minute = minute
            wait = 60.0 - now_s % 60.0 + 0.5
            base.pause_until = max(base.pause_until, _monotonic() + wait)
        log.warning("%s reports %d weight used this minute (budget %d); pausing %.0f s, "
                    "until the next minute", base.url, used, self.budget.limit_weight, wait)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise DownloadError("download stopped (interrupted)")

    # -- archive requests -------------------------------------------------------------
    def _archive_get(self, url: str) -> bytes | None:
        """GET an archive file with the same retry policy; None when it does not exist."""
        import requests
        last = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            self._check_stop()
            with self._lock:
                self.stats["archive_requests"] += 1
            try:
                r = self._archive_session().get(url, timeout=self.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as e:
                last, wait = type(e).__name__, _backoff(attempt)
            else:
                if r.status_code == 200:
                    return r.content
                if r.status_code == 404:
                    return None
                if r.status_code != 429 and r.status_code < 500:
                    raise DownloadError(f"{url}: the archive answered HTTP {r.status_code}; "
                                        f"check --archive-url / V3_BINANCE_ARCHIVE_URL.")
                last = f"HTTP {r.status_code}"
                wait = _retry_after(r) or _backoff(attempt)
                wait = min(wait, MAX_RETRY_AFTER_S)
            if attempt == MAX_ATTEMPTS:
                break
            log.warning("%s: %s; retry %d of %d in %g s", url, last, attempt, MAX_ATTEMPTS - 1,
                        wait)
            _sleep(wait, self._stop)
        raise RetryableDownloadError(f"{url}: {last} after {MAX_ATTEMPTS} attempts; the "
                                     f"archive is busy or unreachable: try again later.")

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
            status = self._exchange_info(wanted)
        except DownloadError as e:  # blocked everywhere, or Binance busy: go on unchecked
            log.warning("symbols not checked against exchangeInfo (%s); known renames are "
                        "followed and the candles' age tells delisted pairs", e)
            status = None
        out = {}
        for s in symbols:
            new = RENAMED_SYMBOLS.get(s)
            if status is None:
                if new:
                    log.warning("%s: %s. Downloading %s instead; its data and model are named "
                                "%s.", s, RENAME_NOTES[s], new, new)
                out[s] = SymbolCheck(s, new or s, checked=False)
            elif new and status.get(s) != "TRADING" and status.get(new) == "TRADING":
                log.warning("%s: %s. Downloading %s instead; its data and model are named %s.",
                            s, RENAME_NOTES[s], new, new)
                out[s] = SymbolCheck(s, new)
            elif s not in status:
                out[s] = SymbolCheck(s, s, DownloadError(
                    f"{s}: invalid symbol: Binance's exchangeInfo does not list it. Check the "
                    f"spelling on binance.com (a USDT pair such as BTCUSDT) or remove it from "
                    f"COINS."))
            elif status[s] != "TRADING":
                hint = f" It trades as {new} now." if new else ""
                out[s] = SymbolCheck(s, s, DownloadError(
                    f"{s}: delisted or halted: exchangeInfo status is {status[s]}, not TRADING; "
                    f"V3 does not train on stale data.{hint} Remove it from COINS."))
            else:
                out[s] = SymbolCheck(s, s)
        return out

    def _exchange_info(self, symbols: list[str]) -> dict[str, str]:
        """{symbol: status} for the listed symbols (absent: Binance does not know it)."""
        t0 = self._clock_ms()
        try:
            info = self.request("exchangeInfo", EXCHANGE_INFO_WEIGHT, lambda c: c._get(
                "exchangeInfo", data={"symbols": json.dumps(symbols, separators=(",", ":"))}))
        except DownloadError as e:
            if "invalid symbol" not in str(e) or isinstance(e, ApiUnavailableError):
                raise
            # one of them is unknown: the whole list is refused, so ask for everything once
            t0 = self._clock_ms()
            info = self.request("exchangeInfo", EXCHANGE_INFO_WEIGHT,
                                lambda c: c.get_exchange_info())
        if isinstance(info.get("serverTime"), (int, float)):
            self._offset_ms = info["serverTime"] - (t0 + self._clock_ms()) / 2
        return {d["symbol"]: d.get("status", "") for d in info.get("symbols", [])
                if d.get("symbol") in symbols}

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
                                    get=self._archive_get)

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
            if isinstance(e, OSError):  # disk full, permissions: the old file is intact
                e = DownloadError(f"{check.symbol} {interval}: cannot write the candles "
                                  f"({type(e).__name__}: {e}); the previous file is unchanged.")
            out.error = e
            if "delisted or halted" in str(e):
                _move_aside(Path(data_dir), check.symbol, interval)
        return out

    def _download_pair(self, out: PairDownload, n_candles: int, data_dir: Path, *,
                       refresh: bool) -> None:
        from v3_market_data import data_path, read_klines, write_klines
        symbol, interval = out.symbol, out.interval
        name = f"{symbol} {interval}"
        step = INTERVAL_MS[interval]
        path = data_path(data_dir, symbol, interval)
        _remove_stale_temps(path)
        old = None
        if path.exists() and not refresh:
            try:
                old, _ = check_series(read_klines(path), interval, str(path))
            except V3Error as e:
                log.warning("%s: the saved file is unusable (%s); downloading afresh", name, e)
        now = self.now_ms()
        last_closed = (now // step) * step - step          # open time of the newest closed candle
        window_start = last_closed - (n_candles - 1) * step
        if old is not None and not len(old):
            old = None
        if old is not None and (last_closed - int(old["open_time"].iloc[-1])) // step > n_candles:
            log.info("%s: the saved file ends %s, more than %d candles ago; downloading afresh",
                     name, utc_minute(old["open_time"].iloc[-1]), n_candles)
            old = None
        start = int(old["open_time"].iloc[-1]) + step if old is not None else window_start
        new = self._fetch_range(out, start_ms=start, end_ms=last_closed,
                                incremental=old is not None)
        merged = merge_klines(old, new)
        if len(merged) < n_candles and out.source == "binance" and self.api_available:
            # a gap inside the window, a saved file shorter than asked for, or a pair whose
            # candles stopped before the window (stale): fetch the older candles
            before = int(merged["open_time"].iloc[0]) if len(merged) else start
            older = self.fetch_older(symbol, interval, before_ms=before,
                                     n_candles=n_candles - len(merged), label=name)
            merged = merge_klines(older, merged)
            new = merge_klines(new, older)
        if not len(merged):
            raise DownloadError(f"{name}: Binance returned no closed candles.")
        merged, gaps = check_series(merged, interval, name)
        newest_close = int(merged["open_time"].iloc[-1]) + step
        allowed = STALE_INTERVALS * step
        if out.source == "binance-archive" and "binance" not in out.sources_used:
            allowed += ARCHIVE_LAG_MS  # the archive ends with yesterday at best
        if now - newest_close > allowed:
            raise DownloadError(
                f"{name}: delisted or halted: the newest candle closed "
                f"{_age(now - newest_close)} ago ({utc_minute(newest_close)}), more than "
                f"{allowed // step} intervals; V3 does not train on stale data. Remove it from "
                f"COINS.")
        n_new = len(merged) - (len(old) if old is not None else 0)
        if old is None or n_new:
            write_klines(merged, path)
        if len(merged) < n_candles:
            log.warning("%s: only %d closed candles exist (asked for %d)", name, len(merged),
                        n_candles)
        log_gaps(name, gaps)
        out.rows, out.new_rows, out.gaps, out.path = len(merged), n_new, gaps, path
        out.first_open_time = int(merged["open_time"].iloc[0])
        out.last_open_time = int(merged["open_time"].iloc[-1])

    def _fetch_range(self, out: PairDownload, *, start_ms: int, end_ms: int,
                     incremental: bool) -> pd.DataFrame:
        """Closed candles opening in [start_ms, end_ms]: from the API (the archive when every
        base is blocked), or for source 'binance-archive' from the archive, with the API
        adding the candles the archive does not have yet (today's)."""
        symbol, interval = out.symbol, out.interval
        name = f"{symbol} {interval}"
        step = INTERVAL_MS[interval]
        if start_ms > end_ms:
            return klines_to_frame([])
        if out.source == "binance":
            if self.api_available is not False:
                try:
                    df = self.fetch_klines(symbol, interval, start_ms=start_ms,
                                           max_candles=(end_ms - start_ms) // step + 1, label=name)
                    out.sources_used.append("binance")
                    out.api_url = self._working.url if self._working else None
                    return df
                except ApiUnavailableError:
                    if not self.archive_fallback:
                        raise
            if not self.archive_fallback:
                raise ApiUnavailableError(
                    f"{name}: every Binance API base is blocked ("
                    f"{'; '.join(b.url + ': ' + b.reason for b in self.bases)}) and the archive "
                    f"fallback is off. Set V3_BINANCE_API_URLS to a base that works here.")
            self._log_fallback_once()
            out.source = "binance-archive"
        now = self.now_ms()
        archive_end = min(end_ms, now - now % DAY_MS - 1)  # nothing of today is archived
        if not incremental and self.api_available is False:
            # no API for today's candles: take the latest N the archive has (up to yesterday)
            start_ms -= (end_ms - (archive_end // step) * step) // step * step
        df = klines_to_frame([])
        if start_ms <= archive_end:
            try:
                df = self.fetch_archive(symbol, interval, start_ms=start_ms, end_ms=archive_end)
                out.sources_used.append("binance-archive")
            except ArchiveEmptyError:
                if not incremental:
                    raise
        if self.api_available is not False:  # today's candles, and yesterday's if not archived
            after = int(df["open_time"].iloc[-1]) + step if len(df) else start_ms
            try:
                recent = (self.fetch_klines(symbol, interval, start_ms=after,
                                            max_candles=(end_ms - after) // step + 1, label=name)
                          if after <= end_ms else None)
            except ApiUnavailableError:
                recent = None
            if recent is not None:
                out.sources_used.append("binance")
                out.api_url = self._working.url if self._working else None
                df = merge_klines(df, recent)
        if self.api_available is False and len(df):
            log.warning("%s: archive only (the API is blocked): the newest candle opened %s, "
                        "%.0f h ago", name, utc_minute(df["open_time"].iloc[-1]),
                        (now - int(df["open_time"].iloc[-1])) / 3_600_000)
        return df

    def _log_fallback_once(self) -> None:
        with self._lock:
            if getattr(self, "_fallback_logged", False):
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
            self._stop.set()  # workers stop at their next request; files stay whole
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown()
        return [dataclasses.replace(done[(checks[s].symbol, i)], requested_symbol=s)
                for s, i in pairs]


def format_download_table(outcomes: list[PairDownload]) -> str:
    """Step 2's closing table: pair, requested symbol (if renamed), rows, first and last
    candle, source used and status, one line per pair."""
    head = ("pair", "requested", "rows", "first candle", "last candle", "source", "status")
    rows = [head]
    for r in outcomes:
        if r.ok:
            status = "ok" + (f", +{r.new_rows} new" if r.new_rows else ", up to date")
            status += f", {len(r.gaps)} gap(s)" if r.gaps else ""
        else:
            status = "failed: " + _reason(str(r.error))
        rows.append((r.key, r.requested_symbol if r.renamed else "-",
                     str(r.rows) if r.ok else "-", utc_minute(r.first_open_time) or "-",
                     utc_minute(r.last_open_time) or "-", " + ".join(r.sources_used) or r.source, status))
    widths = [max(len(x[i]) for x in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() for x in rows)


def _reason(msg: str, n: int = 70) -> str:
    """A failure message without its 'SYMBOL interval: ' prefix, cut to n characters."""
    head, sep, rest = msg.partition(": ")
    if sep and head.replace(" ", "").isalnum() and head.split()[0].isupper():
        msg = rest
    msg = " ".join(msg.split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def download_klines(symbol: str, interval: str, n_candles: int, *,
                    api_urls: list[str] | str | None = None, data_dir: str | Path,
                    refresh: bool = False) -> pd.DataFrame:
    """One pair, the simple way: bring data_dir/SYMBOL_INTERVAL.csv up to date and return it.

    Raises the pair's DownloadError instead of recording it.
    """
    from v3_market_data import read_klines
    with BinanceDownloader(api_urls, workers=1) as dl:
        r = dl.download_pairs([(symbol, interval)], n_candles=n_candles, data_dir=data_dir,
                              refresh=refresh)[0]
    if r.error is not None:
        raise r.error
    return read_klines(r.path)


# ---------------------------------------------------------------------------------------


def _age(ms_: float) -> str:
    h = ms_ / 3_600_000
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _backoff(attempt: int) -> float:
    """The wait after failed attempt number `attempt` (1-based): 1, 2, 4, 8 s."""
    return BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]


def _retry_after(response) -> float | None:
    v = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _int_header(response, name: str) -> int | None:
    if response is None:
        return None
    v = response.headers.get(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _short(msg: Any, n: int = 120) -> str:
    s = " ".join(str(msg).split())
    return s if len(s) <= n else s[:n] + "..."


def _remove_stale_temps(path: Path) -> None:
    """Temporary files a killed earlier write left beside `path` (never the file itself)."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _move_aside(data_dir: Path, symbol: str, interval: str) -> None:
    """Keep a delisted pair's old file out of steps 3 and 4 without deleting it."""
    from v3_market_data import data_path
    path = data_path(data_dir, symbol, interval)
    if path.exists():
        dest = data_dir / "stale" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), dest)
        log.warning("%s %s: moved the old candles to %s so that no step trains on them",
                    symbol, interval, dest)
