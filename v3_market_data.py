"""Candle files and the offline sources of step 2: a CSV folder and a synthetic generator.

Every series V3 stores is `base_dir/data/SYMBOL_INTERVAL.csv` in Binance's kline layout:
open_time,open,high,low,close,volume,close_time,quote_volume,trades,taker_buy_base,taker_buy_quote
(times in ms UTC). Files are written through a temporary file and renamed.
"""
from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import (INTERVAL_MS, KLINE_COLUMNS, REQUIRED_COLUMNS, ConfigError,
                       DataValidationError, atomic_write_bytes, check_interval, pair_key)

# A fixed end for synthetic series, so that the same call always gives the same candles.
SYNTHETIC_END_MS = 1_735_689_600_000  # 2025-01-01 00:00 UTC

# Rough starting prices, so synthetic coins look like their names; others start at 1.0.
_START_PRICE = {"BTC": 30_000.0, "ETH": 2_000.0, "BNB": 300.0, "SOL": 60.0, "XRP": 0.5,
                "LTC": 80.0, "ADA": 0.4, "DOGE": 0.08, "AVAX": 15.0, "LINK": 7.0}


def data_path(data_dir: str | Path, symbol: str, interval: str) -> Path:
    return Path(data_dir) / f"{pair_key(symbol, interval)}.csv"


def latest_candles(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """The latest `n` candles of `df`, re-indexed from 0. Files grow with every incremental
    download; steps 3, 4 and the walk-forward all work on this same cut."""
    return df.tail(n).reset_index(drop=True)


def find_csv(folder: str | Path, symbol: str, interval: str) -> Path:
    """The file for a pair in a CSV folder: SYMBOL_INTERVAL.csv or SYMBOL_INTERVAL.csv.gz."""
    folder = Path(folder)
    for name in (f"{symbol}_{interval}.csv", f"{symbol}_{interval}.csv.gz"):
        if (folder / name).exists():
            return folder / name
    raise ConfigError(f"no CSV for {symbol} {interval} in {folder}: expected "
                      f"{symbol}_{interval}.csv or {symbol}_{interval}.csv.gz with the header "
                      f"{','.join(KLINE_COLUMNS)}.")


def read_klines(path: str | Path) -> pd.DataFrame:
    """Read a kline CSV (optionally gzipped). Optional columns may be missing or empty."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist: run step 2 (download) first, or point "
                          f"--data-dir at a folder of SYMBOL_INTERVAL.csv files.")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            EOFError, zlib.error) as e:
        raise DataValidationError(f"{path} is not a readable kline CSV ({type(e).__name__}: "
                                  f"{e}). Re-download it or fix the file.") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{path} lacks the column(s) {missing}; its header is {list(df.columns)[:12]}. "
            f"A kline CSV needs {','.join(KLINE_COLUMNS)} (the first six are required).")
    for c in KLINE_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    return df[KLINE_COLUMNS]


def write_klines(df: pd.DataFrame, path: str | Path) -> bool:
    """Write candles in the kline layout, atomically (temporary file, then rename), only when
    the file's bytes change: an unchanged file keeps its mtime. Returns whether it wrote."""
    out = df.copy()
    for c in KLINE_COLUMNS:
        if c not in out.columns:
            out[c] = np.nan
    out = out[KLINE_COLUMNS]
    for c in ("open_time", "close_time"):
        if out[c].notna().all():
            out[c] = out[c].astype(np.int64)  # a float format would round 13-digit times
    for c in out.columns:  # '%.12g' by hand: pandas' float_format costs ~3x the whole write
        if out[c].dtype.kind == "f":
            out[c] = ["" if v != v else "%.12g" % v for v in out[c].to_numpy()]
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    data = buf.getvalue().encode()
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def synthetic_klines(symbol: str, interval: str, n: int, *, end_ms: int = SYNTHETIC_END_MS,
                     seed: int = 0) -> pd.DataFrame:
    """Deterministic, realistic-looking candles with no predictable signal.

    Log returns follow a GARCH(1,1) with Student-t (df=4) shocks: heavy tails and volatility
    clustering. Each candle is built from 12 sub-steps, so open/high/low/close are
    consistent; volume rises with the size of the move. The same (symbol, interval, n, seed)
    always gives the same frame. The series ends with the candle that opens at `end_ms`.
    """
    check_interval(interval)
    if n < 1:
        raise ConfigError(f"synthetic candles: n must be >= 1, got {n}.")
    step_ms = INTERVAL_MS[interval]
    key = zlib.crc32(f"{symbol}|{interval}|{seed}".encode())
    rng = np.random.default_rng(key)
    sub = 12
    # per-candle volatility scales with sqrt(interval length): ~0.5 % per hour
    base_vol = 0.005 * np.sqrt(step_ms / 3_600_000)
    omega, alpha, beta = 0.05 * base_vol**2, 0.08, 0.87
    nu = 4.0
    shocks = rng.standard_t(nu, size=n) / np.sqrt(nu / (nu - 2))
    var = np.empty(n)
    r = np.empty(n)
    var[0] = base_vol**2
    for t in range(n):  # the GARCH recursion is inherently sequential
        if t:
            var[t] = omega + alpha * r[t - 1] ** 2 + beta * var[t - 1]
        r[t] = np.sqrt(var[t]) * shocks[t]
    # split each candle's return into sub-steps (a Brownian bridge to the candle's return)
    w = rng.standard_normal((n, sub)) * np.sqrt(var)[:, None] / np.sqrt(sub)
    path = np.cumsum(w, axis=1)
    path = path - np.linspace(1 / sub, 1, sub)[None, :] * (path[:, -1] - r)[:, None]
    base = _START_PRICE.get(symbol.replace("USDT", ""), 1.0)
    log_open = np.log(base) + np.concatenate([[0.0], np.cumsum(r)[:-1]])
    log_path = log_open[:, None] + path
    open_ = np.exp(log_open)
    close = np.exp(log_path[:, -1])
    high = np.maximum(np.exp(log_path.max(axis=1)), open_)
    low = np.minimum(np.exp(log_path.min(axis=1)), open_)
    rel_move = np.abs(r) / base_vol
    volume = np.exp(rng.normal(0, 0.4, n)) * (1 + 0.8 * rel_move) * 1_000_000 / base
    open_time = end_ms - step_ms * np.arange(n - 1, -1, -1, dtype=np.int64)
    typical = (high + low + close) / 3
    taker = volume * rng.beta(5, 5, n)
    df = pd.DataFrame({
        "open_time": open_time,
        "open": open_, "high": high, "low": low, "close": close, "volume": volume,
        "close_time": open_time + step_ms - 1,
        "quote_volume": volume * typical,
        "trades": np.maximum(1, (volume * typical / 2_000 * rng.uniform(0.8, 1.2, n))).astype(np.int64),
        "taker_buy_base": taker, "taker_buy_quote": taker * typical,
    })
    return df[KLINE_COLUMNS]
