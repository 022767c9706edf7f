"""HTTP to Binance for step 2: API bases with fallback, retries with backoff, the 418 ban,
429 pauses, the shared weight budget and Binance's clock (the limits are those of Binance's
spot REST API documentation); the downloads themselves are v3_binance_data's.

- One python-binance `Client(ping=False)` per worker thread, aimed at each base URL in turn
  (`api_urls=`, else $V3_BINANCE_API_URLS, else the main API then the market-data-only host).
  A 451 (restricted location: Colab's US machines) or a 403 block from a base moves on to
  the next one with one log line; the base that worked serves the rest of the run.
- Retries come from tenacity: 429 waits its Retry-After (all workers pause); 5xx, timeouts
  and connection errors back off 1, 2, 4, 8 s (5 attempts); a 418 (IP banned) stops all
  requests to that base. The archive's GETs (data.binance.vision) retry the same way.
- A shared weight budget (3,000 of Binance's 6,000 per minute) paces all workers.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import requests
import tenacity

with warnings.catch_warnings():  # `import binance` warns about websockets internals
    warnings.simplefilter("ignore", DeprecationWarning)
    from binance.client import Client
    from binance.exceptions import BinanceAPIException, BinanceRequestException

from v3_common import (ConfigError, DownloadError, InvalidSymbolError, RetryableDownloadError,
                       log)

DEFAULT_API_URLS = ["https://api.binance.com/api", "https://data-api.binance.vision/api"]
KLINES_WEIGHT = 2                  # request weights, as Binance counts them
EXCHANGE_INFO_WEIGHT = 20
BINANCE_WEIGHT_LIMIT_PER_MIN = 6000
WEIGHT_BUDGET_PER_MIN = 3000       # ours: half of Binance's limit, for other tabs and tools
MAX_ATTEMPTS = 5                   # per request, for 429 / 5xx / timeouts / connection errors
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)   # waits between attempts
MAX_RETRY_AFTER_S = 120.0          # a longer Retry-After fails the pair instead of stalling

# 1, 2, 4, 8 s: BACKOFF_S as tenacity's exponential wait
_BACKOFF = tenacity.wait_exponential(multiplier=BACKOFF_S[0], exp_base=2, max=BACKOFF_S[-1])


def _sleep(seconds: float, stop: threading.Event | None = None) -> None:
    """Every wait of the download goes through here (tests patch it to record the waits);
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


def make_client(api_url: str, *, timeout: float = 10.0) -> Client:
    """A python-binance Client aimed at `api_url` (no ping in the constructor)."""
    client = Client(ping=False, requests_params={"timeout": timeout})
    client.API_URL = api_url.rstrip("/")
    return client


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
# API bases and the errors of a request


# what to do when no API base answers, in the pipeline's words (v3_predict has its own)
UNAVAILABLE_HINT = ("Set V3_BINANCE_API_URLS (or --api-urls) to a base that works from this "
                    "machine, or use --source binance-archive or --source csv.")


class ApiUnavailableError(DownloadError):
    """Every API base refused this machine (blocked, banned or unreachable)."""


class _BaseUnusable(Exception):
    """Internal: this base cannot serve the request (blocked, banned, unreachable)."""


class _Retry(Exception):
    """Internal: an attempt failed in a way worth another one. `wait` (s) overrides the
    backoff (a Retry-After); `pause_all` makes every worker wait too (a 429)."""

    def __init__(self, what: str, wait: float | None = None, *, pause_all: bool = False):
        super().__init__(what)
        self.what, self.wait, self.pause_all = what, wait, pause_all


def _wait(state: tenacity.RetryCallState) -> float:
    """tenacity's wait: the error's own (Retry-After), else 1, 2, 4, 8 s."""
    e = state.outcome.exception() if state.outcome else None
    wait = getattr(e, "wait", None)
    return float(wait) if wait is not None else _BACKOFF(state)


@dataclass
class ApiBase:
    """One API base URL and what this run learnt about it."""
    url: str
    state: str = "ok"            # 'ok', 'blocked' (451/403), 'banned' (418), 'unreachable'
    reason: str = ""
    pause_until: float = 0.0     # _monotonic(); set by 429s and the used-weight header
    paused_minute: int = -1      # the minute whose used weight last paused this base
    requests: int = 0


# ---------------------------------------------------------------------------------------
# The HTTP side of a download run


class BinanceHttp:
    """Requests to Binance's API bases and archive for one run, from many worker threads.

    It remembers the working base, the blocked ones and the weight spent. `stats` counts
    requests and weight; `close()` frees the clients; `stop_requests()` makes every worker
    stop at its next request.
    """

    def __init__(self, api_urls: list[str] | str | None = None, *,
                 weight_budget: int | WeightBudget = WEIGHT_BUDGET_PER_MIN,
                 timeout_s: float = 10.0, clock_ms: Callable[[], float] | None = None,
                 unavailable_hint: str = UNAVAILABLE_HINT):
        self.bases = [ApiBase(u) for u in api_urls_from_env(api_urls)]
        self.unavailable_hint = unavailable_hint  # the fixes the caller's user has
        self.budget = (weight_budget if isinstance(weight_budget, WeightBudget)
                       else WeightBudget(weight_budget))
        self.timeout_s = timeout_s
        self._clock_ms = clock_ms or (lambda: time.time() * 1000)
        self._offset_ms = 0.0         # Binance's clock minus ours, from exchangeInfo
        self._working: ApiBase | None = None
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

    @property
    def working_url(self) -> str | None:
        """The base that answered last (it serves the rest of the run), or None."""
        return self._working.url if self._working else None

    def stop_requests(self) -> None:
        """Every worker stops at its next request or wait (Ctrl-C); files stay whole."""
        self._stop.set()

    # -- clients ------------------------------------------------------------------------
    def _client(self, url: str) -> Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients:
            clients[url] = make_client(url, timeout=self.timeout_s)
            with self._lock:
                self.stats["clients"] += 1
                self._clients.append((clients[url], threading.current_thread()))
        return clients[url]

    def _archive_session(self) -> requests.Session:
        s = getattr(self._local, "archive_session", None)
        if s is None:
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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------
    def _bases_in_order(self) -> list[ApiBase]:
        w = self._working
        return ([w] if w is not None else []) + [b for b in self.bases if b is not w]

    def request(self, label: str, weight: int, call: Callable[[Any], Any]) -> Any:
        """`call(client)` on the working base, falling back through the list on blocks.

        Raises ApiUnavailableError when no base can serve, DownloadError for answers that
        need a person (InvalidSymbolError ...), RetryableDownloadError when retries ran out.
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
        raise ApiUnavailableError(f"{label}: no Binance API base can be used "
                                  f"({'; '.join(reasons)}). {self.unavailable_hint}")

    def _retrying(self, before_sleep: Callable[[tenacity.RetryCallState], None]
                  ) -> tenacity.Retrying:
        """MAX_ATTEMPTS attempts of whatever raises _Retry, waits through _sleep (stoppable)."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(MAX_ATTEMPTS), wait=_wait,
            retry=tenacity.retry_if_exception_type(_Retry),
            sleep=lambda s: _sleep(s, self._stop), before_sleep=before_sleep, reraise=True)

    def _request_on(self, base: ApiBase, label: str, weight: int,
                    call: Callable[[Any], Any]) -> Any:
        state = {"attempts": 0, "waited_until": 0.0}

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            e, wait = rs.outcome.exception(), rs.next_action.sleep
            with self._lock:
                self.stats["retries"] += 1
                if e.pause_all:  # a 429: every worker waits, not only this one
                    base.pause_until = max(base.pause_until, _monotonic() + wait)
            if e.pause_all:
                log.warning("%s: HTTP 429 from %s (rate limit): waiting %g s as Retry-After "
                            "asks", label, base.url, wait)
            else:
                log.warning("%s: %s from %s; retry %d of %d in %g s", label, e.what, base.url,
                            rs.attempt_number, MAX_ATTEMPTS - 1, wait)
        try:
            return self._retrying(before_sleep)(self._attempt, base, label, weight, call, state)
        except _Retry as e:
            last = e.what
        if last in ("ConnectionError", "ConnectTimeout"):
            base.state, base.reason = "unreachable", f"unreachable ({last}, {MAX_ATTEMPTS} attempts)"
            log.warning("%s cannot be reached (%s after %d attempts); trying the next base",
                        base.url, last, MAX_ATTEMPTS)
            raise _BaseUnusable()
        raise RetryableDownloadError(f"{label}: {last} from {base.url} after {MAX_ATTEMPTS} "
                                     f"attempts; Binance is busy or down: try again later.")

    def _attempt(self, base: ApiBase, label: str, weight: int, call: Callable[[Any], Any],
                 state: dict) -> Any:
        """One attempt: wait out pauses and the budget, then `call(client)`; _Retry on a
        failure worth another attempt."""
        self._check_stop()
        if state["attempts"]:  # after a retry's wait: a pause begun meanwhile is over too
            state["waited_until"] = max(state["waited_until"], base.pause_until)
        state["attempts"] += 1
        pause = base.pause_until  # a 429 or the used-weight header paused every worker
        if pause > state["waited_until"]:
            _sleep(pause - _monotonic(), self._stop)
            state["waited_until"] = pause
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
            wait = self._on_api_error(base, label, e)
            raise _Retry(f"HTTP {e.status_code} ({_short(e.message)})", wait,
                         pause_all=e.status_code == 429) from e
        except (requests.RequestException, BinanceRequestException) as e:
            raise _Retry(type(e).__name__) from e
        self._note_used_weight(base, getattr(client, "response", None))
        return result

    def _on_api_error(self, base: ApiBase, label: str, e: BinanceAPIException) -> float | None:
        """Handle one error answer worth a retry (429, 5xx): returns its Retry-After (None:
        back off); raises for the others."""
        status, code = e.status_code, e.code
        if status in (451, 403):
            self._mark_blocked(base, status)
        if status == 418:
            self._mark_banned(base, e)
        if status == 429:
            wait = _retry_after(e.response)
            if wait is not None and wait > MAX_RETRY_AFTER_S:
                raise RetryableDownloadError(
                    f"{label}: HTTP 429 from {base.url} asks to wait {wait:g} s (more than "
                    f"{MAX_RETRY_AFTER_S:g}); try again later.")
            return wait
        if status >= 500:
            return None
        if code == -1121:
            raise InvalidSymbolError(f"{label}: invalid symbol: Binance does not list it "
                                     f"({e.message!r}). Check the spelling on binance.com or "
                                     f"remove it from COINS.")
        raise DownloadError(f"{label}: Binance answered HTTP {status} (code {code}: "
                            f"{_short(e.message)}).")

    def _mark_blocked(self, base: ApiBase, status: int) -> None:
        with self._lock:
            if base.state == "ok":
                why = ("restricted location: Binance refuses this machine's region, as it "
                       "does Colab's US servers" if status == 451 else "blocked by its firewall")
                base.state, base.reason = "blocked", f"HTTP {status}, {why}"
                nxt = [b.url for b in self.bases if b.state == "ok"]
                log.warning("%s answered HTTP %d (%s); %s", base.url, status, why,
                            f"trying {nxt[0]}" if nxt else "no other API base is left")
        raise _BaseUnusable()

    def _mark_banned(self, base: ApiBase, e: BinanceAPIException) -> None:
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

    def _note_used_weight(self, base: ApiBase, response) -> None:
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

    # -- exchangeInfo -----------------------------------------------------------------
    def exchange_status(self, symbols: list[str]) -> dict[str, str]:
        """{symbol: status} for the listed symbols (absent: Binance does not know it); sets
        Binance's clock from serverTime."""
        t0 = self._clock_ms()
        try:
            info = self.request("exchangeInfo", EXCHANGE_INFO_WEIGHT, lambda c: c._get(
                "exchangeInfo", data={"symbols": json.dumps(symbols, separators=(",", ":"))}))
        except InvalidSymbolError:
            # one of them is unknown: the whole list is refused, so ask for everything once
            t0 = self._clock_ms()
            info = self.request("exchangeInfo", EXCHANGE_INFO_WEIGHT,
                                lambda c: c.get_exchange_info())
        if isinstance(info.get("serverTime"), (int, float)):
            self._offset_ms = info["serverTime"] - (t0 + self._clock_ms()) / 2
        return {d["symbol"]: d.get("status", "") for d in info.get("symbols", [])
                if d.get("symbol") in symbols}

    # -- archive requests -------------------------------------------------------------
    def archive_get(self, url: str) -> bytes | None:
        """GET an archive file with the same retry policy; None when it does not exist."""
        def before_sleep(rs: tenacity.RetryCallState) -> None:
            log.warning("%s: %s; retry %d of %d in %g s", url, rs.outcome.exception().what,
                        rs.attempt_number, MAX_ATTEMPTS - 1, rs.next_action.sleep)
        try:
            return self._retrying(before_sleep)(self._archive_attempt, url)
        except _Retry as e:
            raise RetryableDownloadError(f"{url}: {e.what} after {MAX_ATTEMPTS} attempts; the "
                                         f"archive is busy or unreachable: try again later.")

    def _archive_attempt(self, url: str) -> bytes | None:
        self._check_stop()
        with self._lock:
            self.stats["archive_requests"] += 1
        try:
            r = self._archive_session().get(url, timeout=self.timeout_s)
        except (requests.Timeout, requests.ConnectionError) as e:
            raise _Retry(type(e).__name__) from e
        if r.status_code == 200:
            return r.content
        if r.status_code == 404:
            return None
        if r.status_code != 429 and r.status_code < 500:
            raise DownloadError(f"{url}: the archive answered HTTP {r.status_code}; "
                                f"check --archive-url / V3_BINANCE_ARCHIVE_URL.")
        wait = _retry_after(r)
        raise _Retry(f"HTTP {r.status_code}", min(wait, MAX_RETRY_AFTER_S) if wait else None)


# ---------------------------------------------------------------------------------------


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
