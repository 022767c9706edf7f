"""Benchmark step 2's download against the fake Binance with a realistic latency.

    python bench/bench_download.py                                   # 40 pairs x 3,000, 50 ms
    python bench/bench_download.py --pairs 4 --candles 1500 --latency-ms 5   # tiny (a test)

The guide's 20 coins x (15m, 1h) = 40 pairs (MATICUSDT and FTMUSDT are followed to POLUSDT
and SUSDT), the latest --candles closed candles each, every request delayed by --latency-ms
on the server. python-binance runs as users get it: nothing patched, no sleeps removed.
Rows, side by side, each against a fresh server and a fresh folder:

  get_historical_klines   what many notebooks do: python-binance's helper, pair after pair
                          (a probe request per pair, and its 1 s sleep after every 3rd page)
  serial                  V3's downloader with 1 worker
  concurrent              V3's downloader with 4 workers (the default), and with 8

Goal (issue 4): under 5 s for the 40 pairs at 50 ms, never above the weight budget
(3,000 of Binance's 6,000 per minute). Weight is counted by the server, as Binance does.
The server runs in a process of its own, so that generating candles does not take the
client's CPU (the real Binance does not run on the user's machine either).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

with warnings.catch_warnings():  # `import binance` warns about websockets internals
    warnings.simplefilter("ignore", DeprecationWarning)
    import binance  # noqa: E402

from v3_binance_data import (WEIGHT_BUDGET_PER_MIN, BinanceDownloader, klines_to_frame,  # noqa: E402
                             make_client)
from v3_common import DEFAULT_COINS, INTERVAL_MS, plural, text_table  # noqa: E402


@contextlib.contextmanager
def fake_server(latency_s: float):
    """tests/fake_binance.py in its own process; yields (API base URL, stats())."""
    p = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_binance.py"), "--latency-ms",
                          str(latency_s * 1000)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the fake server did not start: {line!r}")
        root = f"http://127.0.0.1:{int(line.split()[1])}"

        def stats() -> dict:
            with urllib.request.urlopen(root + "/fake/stats", timeout=10) as r:
                return json.load(r)
        yield root + "/api", stats
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def run_v3(pairs, n: int, latency_s: float, workers: int) -> dict:
    with fake_server(latency_s) as (url, stats), tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with BinanceDownloader([url], workers=workers, archive_fallback=False) as dl:
            rs = dl.download_pairs(pairs, n_candles=n, data_dir=d)
        secs = time.perf_counter() - t0
        return dict(stats(), seconds=secs, ok=sum(r.ok for r in rs), rows=sum(r.rows for r in rs))


def run_historical(pairs, n: int, latency_s: float) -> dict:
    """python-binance's get_historical_klines, one pair after another (no symbol checks)."""
    with fake_server(latency_s) as (url, stats):
        client = make_client(url)
        t0 = time.perf_counter()
        ok = rows = 0
        renamed = {"MATICUSDT": "POLUSDT", "FTMUSDT": "SUSDT"}
        for symbol, interval in pairs:
            symbol = renamed.get(symbol, symbol)
            step = INTERVAL_MS[interval]
            start = (int(time.time() * 1000) // step) * step - n * step
            df = klines_to_frame(client.get_historical_klines(symbol, interval, start))
            df = df[df["close_time"] < time.time() * 1000].tail(n)
            ok += len(df) == n
            rows += len(df)
        secs = time.perf_counter() - t0
        return dict(stats(), seconds=secs, ok=ok, rows=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=40, help="pairs (default 40: 20 coins x 2)")
    p.add_argument("--candles", type=int, default=3000, help="closed candles per pair")
    p.add_argument("--latency-ms", type=float, default=50.0, help="server delay per request")
    p.add_argument("--skip-historical", action="store_true",
                   help="leave out the get_historical_klines row (the slowest)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)
    all_pairs = [(c, tf) for c in DEFAULT_COINS for tf in ("15m", "1h")]
    pairs = all_pairs[:args.pairs]
    lat = args.latency_ms / 1000
    runs = []
    if not args.skip_historical:
        runs.append(("get_historical_klines", 1, run_historical(pairs, args.candles, lat)))
    runs.append(("serial", 1, run_v3(pairs, args.candles, lat, 1)))
    runs.append(("concurrent", 4, run_v3(pairs, args.candles, lat, 4)))
    runs.append(("concurrent", 8, run_v3(pairs, args.candles, lat, 8)))

    print(f"machine: {platform.node()} | {platform.platform()} | {os.cpu_count()} CPUs | "
          f"Python {platform.python_version()} | python-binance {binance.__version__}")
    print(f"command: python bench/bench_download.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{plural(len(pairs), 'pair')} x {args.candles} candles, {args.latency_ms:g} ms per request, "
          f"weight budget {WEIGHT_BUDGET_PER_MIN}/min (Binance's limit 6000)\n")
    serial = next(r for name, _, r in runs if name == "serial")["seconds"]
    head = ("mode", "workers", "seconds", "vs serial", "requests (klines + other)", "weight",
            "weight/min (max 60 s)", "pairs ok", "rows")
    print(text_table(head, [
        (name, workers, f"{r['seconds']:.2f}", f"{serial / r['seconds']:.1f}x",
         f"{r['requests']} ({r['klines']} + {r['requests'] - r['klines']})", r["weight"],
         r["max_weight_60s"], f"{r['ok']}/{len(pairs)}", r["rows"]) for name, workers, r in runs]))
    over = [r for _, _, r in runs if r["max_weight_60s"] > WEIGHT_BUDGET_PER_MIN]
    if over:
        print("\nWEIGHT BUDGET EXCEEDED")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
