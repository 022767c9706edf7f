"""A small Binance look-alike for the tests and the benchmark, on 127.0.0.1 (port 0).

It serves what V3 uses of the spot REST API (`/api/v3/ping`, `/api/v3/time`,
`/api/v3/exchangeInfo`, `/api/v3/klines`) from generated candles, including the candle still
forming, with Binance's weights and `X-MBX-USED-WEIGHT-1M` header, and the archive layout
of data.binance.vision (`/data/spot/{monthly,daily}/klines/...zip` and `.CHECKSUM`, times in
microseconds from 2025-01-01). It can answer like the real service does when things go
wrong: 451 with Binance's exact geo-block body, a 403 firewall page, 429 with Retry-After,
418 (IP banned), 500, invalid symbol (-1121), a non-TRADING symbol, a delisted symbol whose
candles simply stop, slow answers, and one corrupt archive file.

    with FakeBinance() as fb:                     # fb.url: the API base for python-binance
        fb.script("klines", Reply(429, headers={"Retry-After": "3"}))   # the next klines call
        ...

Candles are a pure function of (symbol, interval, open time), so any two requests, and
the API and the archive, agree on every candle.
"""
from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import io
import json
import threading
import time
import zipfile
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlparse

import numpy as np

# Binance's answer to a restricted location, byte for byte (as Binance sends it).
GEO_BLOCK_BODY = ('{"code":0,"msg":"Service unavailable from a restricted location according to '
                  "'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer "
                  'service if you believe you received this message in error."}')
WAF_403_BODY = ("<HTML><HEAD><META HTTP-EQUIV=\"Content-Type\" CONTENT=\"text/html; "
                "charset=iso-8859-1\">\n<TITLE>ERROR: The request could not be satisfied</TITLE>\n"
                "</HEAD><BODY>\n<H1>403 ERROR</H1>\n<H2>The request could not be satisfied."
                "</H2>\n</BODY></HTML>")
INVALID_SYMBOL_BODY = '{"code":-1121,"msg":"Invalid symbol."}'
BAN_418_BODY = ('{"code":-1003,"msg":"Way too many requests; IP(127.0.0.1) banned until '
                '%d. Please use the websocket for live updates to avoid bans."}')
RATE_429_BODY = ('{"code":-1003,"msg":"Too much request weight used; current limit is 6000 '
                 'request weight per 1 MINUTE. Please use WebSocket Streams for live updates '
                 'to avoid polling the API."}')
SERVER_500_BODY = '{"code":-1000,"msg":"An unknown error occurred while processing the request."}'

WEIGHTS = {"ping": 1, "time": 1, "exchangeInfo": 20, "klines": 2}
INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
               "4h": 14_400_000, "1d": 86_400_000}
DAY_MS = 86_400_000
US_FROM_MS = 1_735_689_600_000  # 2025-01-01: archive files carry microseconds from here


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, 0)) * 1000


@dataclass
class FakeSymbol:
    status: str = "TRADING"
    listed_ms: int = ms(2017, 8, 17)
    last_ms: int | None = None        # open time of the newest candle; None: up to now
    ended_ago_ms: int | None = None   # or: the candles stopped this long before the server start
    price: float = 100.0


def default_symbols() -> dict[str, FakeSymbol]:
    """The guide's coins as Binance lists them today, plus three test cases."""
    s = {c: FakeSymbol(price=p) for c, p in (
        ("BTCUSDT", 60_000.0), ("ETHUSDT", 3_000.0), ("BNBUSDT", 600.0), ("XRPUSDT", 0.6),
        ("LTCUSDT", 80.0), ("ADAUSDT", 0.4), ("SOLUSDT", 150.0), ("DOGEUSDT", 0.1),
        ("AVAXUSDT", 30.0), ("LINKUSDT", 15.0), ("ATOMUSDT", 8.0), ("NEARUSDT", 5.0),
        ("ARBUSDT", 1.0), ("OPUSDT", 2.0), ("STXUSDT", 2.0), ("INJUSDT", 25.0),
        ("LUNCUSDT", 0.0001), ("LUNAUSDT", 0.5))}
    s["LUNAUSDT"].listed_ms = ms(2022, 5, 31)
    s["MATICUSDT"] = FakeSymbol(status="BREAK", last_ms=ms(2024, 9, 10, 3), price=0.4)
    s["POLUSDT"] = FakeSymbol(listed_ms=ms(2024, 9, 13, 10), price=0.4)
    s["FTMUSDT"] = FakeSymbol(status="BREAK", last_ms=ms(2025, 1, 13, 3), price=0.7)
    s["SUSDT"] = FakeSymbol(listed_ms=ms(2025, 1, 16, 8), price=0.7)
    s["HALTUSDT"] = FakeSymbol(status="BREAK", price=3.0)               # halted, candles recent
    s["STALEUSDT"] = FakeSymbol(ended_ago_ms=30 * DAY_MS, price=3.0)   # TRADING, candles stopped
    return s


@dataclass
class Reply:
    """A scripted answer for the next request to an endpoint. body None: the normal body."""
    status: int = 200
    body: str | None = None
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Hit:
    t: float              # server clock, seconds
    endpoint: str         # 'klines', 'exchangeInfo', ..., or 'archive'
    path: str
    params: dict
    status: int
    weight: int


def _h(k: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per integer."""
    x = (k.astype(np.uint64) * np.uint64(2654435761) + np.uint64(salt)) % np.uint64(2**32)
    x = (x ^ (x >> np.uint64(13))) * np.uint64(1274126177) % np.uint64(2**32)
    return x.astype(np.float64) / 2**32


def candle_rows(symbol: str, price: float, interval: str, open_ms: np.ndarray,
                time_scale: int = 1) -> list[list]:
    """Binance's 12-field rows for these open times (prices as strings)."""
    step = INTERVAL_MS[interval]
    k = open_ms // step
    salt = sum(map(ord, symbol + interval))

    def close_at(i):
        return price * np.exp(0.05 * np.sin(i / 97.0) + 0.01 * np.sin(i / 13.0)
                              + 0.004 * (_h(i, salt) - 0.5))
    o, c = close_at(k - 1), close_at(k)
    hi = np.maximum(o, c) * (1 + 0.002 * _h(k, salt + 7))
    lo = np.minimum(o, c) * (1 - 0.002 * _h(k, salt + 13))
    vol = 10 + 100 * _h(k, salt + 3)
    trades = (50 + 500 * _h(k, salt + 5)).astype(np.int64)
    taker = vol * (0.3 + 0.4 * _h(k, salt + 11))
    f = "{:.8f}".format
    return [[int(t) * time_scale, f(a), f(b), f(d), f(e), f(v), (int(t) + step - 1) * time_scale,
             f(v * e), int(n), f(tb), f(tb * e), "0"]
            for t, a, b, d, e, v, n, tb in zip(open_ms, o, hi, lo, c, vol, trades, taker)]


class FakeBinance:
    """The fake service. Start it with `with FakeBinance(...) as fb:` or `start()`/`stop()`.

    block: 451 or 403 answers every API request that way. clock: the server's time in
    seconds (default time.time). latency_s: added to every request. corrupt: archive file
    names (e.g. 'BTCUSDT-1h-2025-02-03.zip') served with a wrong byte.
    """

    def __init__(self, *, symbols: dict[str, FakeSymbol] | None = None, latency_s: float = 0.0,
                 block: int | None = None, clock: Callable[[], float] = time.time,
                 corrupt: set[str] | frozenset = frozenset(), weight_limit: int = 6000,
                 used_weight_offset: int = 0):
        self.symbols = symbols if symbols is not None else default_symbols()
        self.latency_s, self.block, self.clock = latency_s, block, clock
        self.corrupt, self.weight_limit = set(corrupt), weight_limit
        self.used_weight_offset = used_weight_offset  # pretend other tools used weight too
        self.hits: list[Hit] = []
        self.unfinished_served = 0
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._weight_by_minute: dict[int, int] = defaultdict(int)
        self._zips: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        start = self.clock() * 1000
        for s in self.symbols.values():
            if s.ended_ago_ms is not None and s.last_ms is None:
                s.last_ms = int(start - s.ended_ago_ms)

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> "FakeBinance":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.port = self._httpd.server_address[1]  # kept after stop(): a dead URL for tests
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True,
                         name="fake-binance").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeBinance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The API base, as python-binance's API_URL wants it."""
        return self.root + "/api"

    # -- scripting and inspection ---------------------------------------------------------
    def script(self, endpoint: str, *replies: Reply) -> None:
        """Answer the next requests to `endpoint` ('klines', 'exchangeInfo', 'archive') so."""
        with self._lock:
            self._scripts[endpoint].extend(replies)

    def count(self, endpoint: str | None = None, *, status: int | None = None,
              symbol: str | None = None) -> int:
        with self._lock:
            return sum(1 for h in self.hits if (endpoint is None or h.endpoint == endpoint)
                       and (status is None or h.status == status)
                       and (symbol is None or h.params.get("symbol") == symbol))

    def weight_used(self) -> int:
        with self._lock:
            return sum(h.weight for h in self.hits)

    def max_weight_per_window(self, window_s: float = 60.0) -> int:
        """The most weight received in any `window_s` seconds (sliding, by arrival time)."""
        with self._lock:
            hits = sorted((h.t, h.weight) for h in self.hits if h.weight)
        best, total, j = 0, 0, 0
        for t, w in hits:
            total += w
            while hits[j][0] <= t - window_s:
                total -= hits[j][1]
                j += 1
            best = max(best, total)
        return best

    # -- the service --------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def stats(self) -> dict:
        """Counts for a benchmark that runs the server in another process (GET /fake/stats)."""
        return {"requests": self.count(), "klines": self.count("klines"),
                "weight": self.weight_used(), "max_weight_60s": self.max_weight_per_window(60.0)}

    def handle(self, path: str, query: str) -> tuple[int, dict, bytes]:
        if path == "/fake/stats":
            return 200, {}, json.dumps(self.stats()).encode()
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if self.latency_s:
            time.sleep(self.latency_s)
        if path.startswith("/data/spot/"):
            endpoint, weight = "archive", 0
        elif path.startswith("/api/v3/"):
            endpoint = path[len("/api/v3/"):]
            weight = WEIGHTS.get(endpoint, 1)
        else:
            return self._log(path, "other", params, 404, 0, b"not found", {})
        with self._lock:
            scripted = self._scripts[endpoint].popleft() if self._scripts[endpoint] else None
        if scripted is not None and scripted.delay_s:
            time.sleep(scripted.delay_s)
        if scripted is not None and scripted.status != 200:
            return self._log(path, endpoint, params, scripted.status, weight,
                             (scripted.body or self._default_error(scripted.status)).encode(),
                             dict(scripted.headers))
        if endpoint == "archive":
            return self._archive(path, params)
        if self.block in (451, 403):
            body = GEO_BLOCK_BODY if self.block == 451 else WAF_403_BODY
            return self._log(path, endpoint, params, self.block, 0, body.encode(), {})
        now = self.now_ms()
        with self._lock:
            minute = now // 60_000
            used = self._weight_by_minute[minute] + weight + self.used_weight_offset
            if used > self.weight_limit:
                retry = 60 - (now // 1000) % 60
                status, body, headers = 429, RATE_429_BODY.encode(), {"Retry-After": str(retry)}
            else:
                self._weight_by_minute[minute] += weight
                status, body, headers = 200, b"", {}
            headers["X-MBX-USED-WEIGHT-1M"] = str(min(used, self.weight_limit)
                                                  if status == 429 else used)
        if status == 200:
            status, body = self._api(endpoint, params, now)
        return self._log(path, endpoint, params, status, weight, body, headers)

    def _default_error(self, status: int) -> str:
        return {451: GEO_BLOCK_BODY, 403: WAF_403_BODY, 429: RATE_429_BODY,
                418: BAN_418_BODY % (self.now_ms() + 120_000), 500: SERVER_500_BODY,
                400: INVALID_SYMBOL_BODY}.get(status, '{"code":-1,"msg":"error"}')

    def _log(self, path, endpoint, params, status, weight, body, headers):
        with self._lock:
            self.hits.append(Hit(self.clock(), endpoint, path, params, status,
                                 weight if status != 451 and status != 403 else 0))
        return status, headers, body

    def _api(self, endpoint: str, params: dict, now: int) -> tuple[int, bytes]:
        if endpoint == "ping":
            return 200, b"{}"
        if endpoint == "time":
            return 200, json.dumps({"serverTime": now}).encode()
        if endpoint == "exchangeInfo":
            if "symbols" in params:
                wanted = json.loads(params["symbols"])
            elif "symbol" in params:
                wanted = [params["symbol"]]
            else:
                wanted = list(self.symbols)
            if any(s not in self.symbols for s in wanted):
                return 400, INVALID_SYMBOL_BODY.encode()
            return 200, json.dumps({
                "timezone": "UTC", "serverTime": now,
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                                "intervalNum": 1, "limit": 6000}],
                "exchangeFilters": [],
                "symbols": [{"symbol": s, "status": self.symbols[s].status,
                             "baseAsset": s[:-4], "quoteAsset": s[-4:]} for s in wanted],
            }).encode()
        if endpoint == "klines":
            return self._klines(params, now)
        return 404, b'{"code":-1,"msg":"unknown endpoint"}'

    def _klines(self, params: dict, now: int) -> tuple[int, bytes]:
        sym = self.symbols.get(params.get("symbol", ""))
        if sym is None:
            return 400, INVALID_SYMBOL_BODY.encode()
        interval = params.get("interval", "")
        if interval not in INTERVAL_MS:
            return 400, b'{"code":-1120,"msg":"Invalid interval."}'
        step = INTERVAL_MS[interval]
        limit = min(int(params.get("limit", 500)), 1000)
        first = -(-sym.listed_ms // step) * step
        last = (now // step) * step  # the candle still forming
        if sym.last_ms is not None:
            last = min(last, (sym.last_ms // step) * step)
        if "startTime" in params:
            lo = max(first, -(-int(params["startTime"]) // step) * step)
            hi = min(last, (int(params["endTime"]) // step) * step) if "endTime" in params else last
            hi = min(hi, lo + (limit - 1) * step)
        else:
            hi = min(last, (int(params["endTime"]) // step) * step) if "endTime" in params else last
            lo = max(first, hi - (limit - 1) * step)
        opens = np.arange(lo, hi + 1, step, dtype=np.int64) if hi >= lo else np.array([], np.int64)
        rows = candle_rows(params["symbol"], sym.price, interval, opens)
        if len(opens) and opens[-1] + step > now:
            with self._lock:
                self.unfinished_served += 1
        return 200, json.dumps(rows, separators=(",", ":")).encode()

    # -- the archive --------------------------------------------------------------------
    def archive_file(self, name: str) -> tuple[bytes, str] | None:
        """(zip bytes, CHECKSUM text) for an archive file name, or None if not published."""
        stem = name[:-4]
        parts = stem.split("-")
        symbol, interval, period = parts[0], parts[1], "-".join(parts[2:])
        sym = self.symbols.get(symbol)
        if sym is None or interval not in INTERVAL_MS:
            return None
        y, m = int(period[:4]), int(period[5:7])
        if len(period) == 10:
            start = ms(y, m, int(period[8:10]))
            end = start + DAY_MS
        else:
            start = ms(y, m, 1)
            end = ms(y + (m == 12), m % 12 + 1, 1)
        if end > self.now_ms():
            return None  # monthly files appear after the month, daily ones the next day
        step = INTERVAL_MS[interval]
        lo = max(start, -(-sym.listed_ms // step) * step)
        hi = end - step if sym.last_ms is None else min(end - step, (sym.last_ms // step) * step)
        if hi < lo:
            return None
        with self._lock:
            if name in self._zips:
                return self._zips[name]
        opens = np.arange(lo, hi + 1, step, dtype=np.int64)
        scale = 1000 if start >= US_FROM_MS else 1
        rows = candle_rows(symbol, sym.price, interval, opens, time_scale=scale)
        csv = "".join(",".join(str(x) for x in r) + "\n" for r in rows)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            info = zipfile.ZipInfo(stem + ".csv", date_time=(2025, 1, 1, 0, 0, 0))
            z.writestr(info, csv)
        data = buf.getvalue()
        out = (data, f"{hashlib.sha256(data).hexdigest()}  {name}\n")
        with self._lock:
            self._zips[name] = out
        return out

    def _archive(self, path: str, params: dict) -> tuple[int, dict, bytes]:
        name = path.rsplit("/", 1)[-1]
        checksum = name.endswith(".CHECKSUM")
        got = self.archive_file(name[:-len(".CHECKSUM")] if checksum else name)
        if got is None:
            return self._log(path, "archive", params, 404, 0,
                             b"<Error><Code>NoSuchKey</Code></Error>", {})
        data, text = got
        if checksum:
            body = text.encode()
        elif name in self.corrupt:
            body = data[:-30] + bytes(b ^ 0xFF for b in data[-30:-29]) + data[-29:]
        else:
            body = data
        return self._log(path, "archive", params, 200, 0, body, {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as with the real service
    disable_nagle_algorithm = True  # else headers and body meet delayed ACKs: +40 ms a request
    fake: FakeBinance
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        u = urlparse(self.path)
        status, headers, body = self.fake.handle(u.path, u.query)
        self.send_response(status)
        ctype = ("application/zip" if u.path.endswith(".zip") else
                 "text/html" if body[:1] == b"<" else "application/json;charset=UTF-8")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # quiet
        pass


def utc(ms_: int) -> str:
    return dt.datetime.fromtimestamp(ms_ / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def main() -> None:
    """Serve in a process of its own (the benchmark's way, so that generating candles does
    not compete with the client for the GIL): prints 'PORT <n>', serves until stdin closes."""
    import argparse
    import sys
    p = argparse.ArgumentParser()
    p.add_argument("--latency-ms", type=float, default=0.0)
    args = p.parse_args()
    fb = FakeBinance(latency_s=args.latency_ms / 1000).start()
    print(f"PORT {fb.port}", flush=True)
    sys.stdin.read()
    fb.stop()


if __name__ == "__main__":
    main()
