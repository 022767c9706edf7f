"""Benchmark: the vectorised indicators vs the same work done row by row in Python loops.

    python bench/bench_features.py                          # 40 pairs x 3,000 candles
    python bench/bench_features.py --candles 100000 --repeat 3   # 40 pairs x 100,000 (issue 20)
    python bench/bench_features.py --pairs 2 --candles 600  # the tiny run the tests use

All implementations run on the same synthetic candles in the same process; the table shows
the machine, the command, OMP_NUM_THREADS and the load average. Timed: compute_indicators on
each pair, the table dropped before the next pair (as the pipeline does), best of --repeat.
Baselines in the same run:
- the row-by-row loops (`loop_indicators`), on the first --loop-candles candles of every pair
  (default 3,000: the loops take ~2 ms a candle-pair); speed-ups are per candle. The loops are
  also a second, independent implementation of every column (same conventions): the run
  checks both agree on those rows, and that the vectorised rows of the full series equal
  those of the prefix bit for bit (no look-ahead);
- the previous vectorised compute_indicators (bench/indicators_v2.py, FEATURE_SET_VERSION 2,
  its 45 columns), on the full series; the run checks the 45 shared columns still agree.
One process, one pair after another: no parallelism anywhere.
Goals: 40 pairs x 3,000 candles in under 1 s (issue 3), x 100,000 in under 2 s (issue 20),
on a 2-core machine.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from v3_common import DEFAULT_COINS, DEFAULT_TIMEFRAMES, plural  # noqa: E402
from v3_data_processor import WARMUP_CANDLES, compute_indicators  # noqa: E402
from v3_indicators import FEATURE_DOCS, PARKINSON_FLOOR  # noqa: E402
from v3_market_data import synthetic_klines  # noqa: E402

import indicators_v2  # noqa: E402  (bench/, the frozen previous implementation)

NAN = float("nan")


def guide_obv(close: list[float], volume: list[float]) -> list[float]:
    """On-balance volume the way the guide's original code built it: one row at a time."""
    obv = [0.0]
    for i in range(1, len(close)):
        if close[i] > close[i - 1]:
            obv.append(obv[-1] + volume[i])
        elif close[i] < close[i - 1]:
            obv.append(obv[-1] - volume[i])
        else:
            obv.append(obv[-1])
    return obv


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _pstd(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def loop_indicators(o: list[float], h: list[float], l: list[float], c: list[float],
                    v: list[float], open_time: list[int]) -> dict[str, list[float]]:
    """Every column of compute_indicators, computed row by row with plain Python."""
    n = len(c)
    pv = [math.log(h[t] / l[t]) ** 2 / (4 * math.log(2)) for t in range(n)]
    col = {name: [NAN] * n for name in FEATURE_DOCS}
    tp = [(h[t] + l[t] + c[t]) / 3 for t in range(n)]
    obv = guide_obv(c, v)
    ema = {12: NAN, 26: NAN}
    gain = loss = atr = signal = adx = NAN
    s_pdm = s_mdm = s_tr = 0.0  # TA-Lib's Wilder sums for +DI/-DI/ADX
    macd, gains, losses, trs, fast_k, slow_k, dxs, lr = ([NAN] * n for _ in range(8))
    for t in range(n):
        for k in (1, 3, 6, 12):
            if t >= k:
                col[f"ret_{k}"][t] = c[t] / c[t - k] - 1
                col[f"log_ret_{k}"][t] = math.log(c[t] / c[t - k])
        for w in (7, 14, 30, 50):
            if t >= w - 1:
                col[f"sma_{w}_rel"][t] = _mean(c[t - w + 1:t + 1]) / c[t] - 1
        for span in (12, 26):  # EMA seeded with the SMA of the first `span` closes
            if t == span - 1:
                ema[span] = _mean(c[:span])
            elif t >= span:
                ema[span] += 2 / (span + 1) * (c[t] - ema[span])
            if t >= span - 1:
                col[f"ema_{span}_rel"][t] = ema[span] / c[t] - 1
        if t >= 19:
            mid, sd = _mean(c[t - 19:t + 1]), _pstd(c[t - 19:t + 1])
            up, lo = mid + 2 * sd, mid - 2 * sd
            col["bb_upper_rel"][t], col["bb_lower_rel"][t] = up / c[t] - 1, lo / c[t] - 1
            col["bb_width"][t] = (up - lo) / mid
            col["bb_pct_b"][t] = 0.5 if sd <= 1e-12 * mid else (c[t] - lo) / (up - lo)
        if t >= 1:
            d = c[t] - c[t - 1]
            gains[t], losses[t] = max(d, 0.0), max(-d, 0.0)
            trs[t] = max(h[t] - l[t], abs(h[t] - c[t - 1]), abs(l[t] - c[t - 1]))
            col["true_range_rel"][t] = trs[t] / c[t]
        if t == 14:
            gain, loss, atr = _mean(gains[1:15]), _mean(losses[1:15]), _mean(trs[1:15])
        elif t > 14:
            gain, loss = (gain * 13 + gains[t]) / 14, (loss * 13 + losses[t]) / 14
            atr = (atr * 13 + trs[t]) / 14
        if t >= 14:
            col["rsi_14"][t] = 50.0 if gain + loss == 0 else 100 * gain / (gain + loss)
            col["atr_14_rel"][t] = atr / c[t]
        if t >= 25:
            macd[t] = ema[12] - ema[26]
            col["macd_rel"][t] = macd[t] / c[t]
        if t == 33:
            signal = _mean(macd[25:34])
        elif t > 33:
            signal += 2 / 10 * (macd[t] - signal)
        if t >= 33:
            col["macd_signal_rel"][t] = signal / c[t]
            col["macd_hist_rel"][t] = (macd[t] - signal) / c[t]
        if t >= 13:
            hh, ll = max(h[t - 13:t + 1]), min(l[t - 13:t + 1])
            fast_k[t] = 50.0 if hh == ll else 100 * (c[t] - ll) / (hh - ll)
            col["williams_r"][t] = -50.0 if hh == ll else -100 * (hh - c[t]) / (hh - ll)
        if t >= 15:
            slow_k[t] = _mean(fast_k[t - 2:t + 1])
            col["stoch_k"][t] = slow_k[t]
        if t >= 17:
            col["stoch_d"][t] = _mean(slow_k[t - 2:t + 1])
        if t >= 19:
            m = _mean(tp[t - 19:t + 1])
            mad = _mean([abs(x - m) for x in tp[t - 19:t + 1]])
            col["cci_20"][t] = 0.0 if mad <= 1e-12 * m else (tp[t] - m) / (0.015 * mad)
        if t >= 1:  # TA-Lib: sum 13 values, then Wilder steps S = S - S/14 + x from row 14 on
            up_move, down_move = h[t] - h[t - 1], l[t - 1] - l[t]
            pdm = up_move if up_move > down_move and up_move > 0 else 0.0
            mdm = down_move if down_move > up_move and down_move > 0 else 0.0
            if t <= 13:
                s_pdm, s_mdm, s_tr = s_pdm + pdm, s_mdm + mdm, s_tr + trs[t]
            else:
                s_pdm, s_mdm = s_pdm - s_pdm / 14 + pdm, s_mdm - s_mdm / 14 + mdm
                s_tr = s_tr - s_tr / 14 + trs[t]
                pdi = 0.0 if s_tr == 0 else 100 * s_pdm / s_tr
                mdi = 0.0 if s_tr == 0 else 100 * s_mdm / s_tr
                col["plus_di_14"][t], col["minus_di_14"][t] = pdi, mdi
                dxs[t] = 0.0 if pdi + mdi == 0 else 100 * abs(pdi - mdi) / (pdi + mdi)
        if t == 27:
            adx = _mean(dxs[14:28])
        elif t > 27:
            adx = (adx * 13 + dxs[t]) / 14
        if t >= 27:
            col["adx_14"][t] = adx
        if t >= 10:
            col["roc_10"][t] = 100 * (c[t] / c[t - 10] - 1)
            col["momentum_10_rel"][t] = (c[t] - c[t - 10]) / c[t]
        if t >= 20:
            vol20 = sum(v[t - 19:t + 1])
            col["obv_slope_20"][t] = 0.0 if vol20 == 0 else (obv[t] - obv[t - 20]) / vol20
        if t >= 14:
            pos = sum(tp[s] * v[s] for s in range(t - 13, t + 1) if tp[s] > tp[s - 1])
            neg = sum(tp[s] * v[s] for s in range(t - 13, t + 1) if tp[s] < tp[s - 1])
            col["mfi_14"][t] = 50.0 if pos + neg == 0 else 100 * pos / (pos + neg)
        if t >= 1:
            lr[t] = math.log(c[t] / c[t - 1])
        for w in (10, 30, 60):
            if t >= w:
                col[f"volatility_{w}"][t] = _pstd(lr[t - w + 1:t + 1])
        if t >= 19:
            sma20 = _mean(v[t - 19:t + 1])
            col["volume_ratio_20"][t] = 1.0 if sma20 == 0 else v[t] / sma20
            col["volume_ratio_5_20"][t] = 1.0 if sma20 == 0 else _mean(v[t - 4:t + 1]) / sma20
            m = sma20 / 1000
            col["log_volume_change"][t] = 0.0 if m == 0 else math.log((v[t] + m) / (v[t - 1] + m))
        span = h[t] - l[t]
        col["range_rel"][t] = span / c[t]
        col["body"][t] = 0.0 if span == 0 else (c[t] - o[t]) / span
        col["upper_wick"][t] = 0.0 if span == 0 else (h[t] - max(o[t], c[t])) / span
        col["lower_wick"][t] = 0.0 if span == 0 else (min(o[t], c[t]) - l[t]) / span
        col["log_parkinson_var"][t] = math.log(max(pv[t], PARKINSON_FLOOR))
        s = t  # walk back over the candles opened less than a day before this one
        while s > 0 and open_time[s - 1] > open_time[t] - 86_400_000:
            s -= 1
        col["log_parkinson_var_day"][t] = math.log(max(_mean(pv[s:t + 1]), PARKINSON_FLOOR))
        when = datetime.fromtimestamp(open_time[t] / 1000, tz=timezone.utc)
        minute = when.hour * 60 + when.minute
        col["hour_sin"][t] = math.sin(2 * math.pi * minute / 1440)
        col["hour_cos"][t] = math.cos(2 * math.pi * minute / 1440)
        col["is_weekend"][t] = 1.0 if when.weekday() >= 5 else 0.0  # Saturday 5, Sunday 6
    for name in col:
        col[name][:WARMUP_CANDLES] = [NAN] * min(WARMUP_CANDLES, n)
    return col


def max_disagreement(vec: np.ndarray, loop: np.ndarray) -> float:
    """Largest |a - b| / max(|b|, median |b| of the column) over all rows and columns; inf when
    the NaN patterns differ. Equal values count as 0 (a column whose median is 0, such as
    is_weekend, would otherwise give 0 / 0)."""
    if not np.array_equal(np.isnan(vec), np.isnan(loop)):
        return float("inf")
    if np.isnan(loop).all():
        return 0.0
    floor = np.nanmedian(np.abs(loop), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(vec - loop) / np.maximum(np.abs(loop), floor)
    err[(vec == loop) | np.isnan(loop)] = 0.0
    return float(np.max(err))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _best_total(fn, frames: list[pd.DataFrame], repeat: int) -> float:
    """Seconds for fn(df) over all frames, one after another (the result dropped each time),
    best of `repeat` runs."""
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for df in frames:
            fn(df)
        times.append(time.perf_counter() - t0)
    return min(times)


def v2_compute_indicators(df: pd.DataFrame) -> pd.DataFrame:
    """compute_indicators as it was at FEATURE_SET_VERSION 2: indicators_v2's 45 columns, the
    warm-up rows blanked, wrapped in a DataFrame (which copied the table)."""
    out = indicators_v2.indicator_table(df)
    out[:WARMUP_CANDLES] = np.nan
    return pd.DataFrame(out, index=df.index, columns=list(indicators_v2.FEATURE_DOCS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=40, help="pairs (coin x timeframe), default 40")
    ap.add_argument("--candles", type=int, default=3000, help="candles per pair, default 3000")
    ap.add_argument("--repeat", type=int, default=5, help="vectorised runs, best counts (5)")
    ap.add_argument("--loop-candles", type=int, default=3000,
                    help="candles per pair for the row-by-row loops (the first ones), default "
                         "3000 or --candles if fewer")
    args = ap.parse_args(argv)
    n_loop = min(args.candles, args.loop_candles)

    guide = [(s, i) for s in DEFAULT_COINS for i in DEFAULT_TIMEFRAMES]  # the guide's 40 pairs
    frames = [synthetic_klines(*guide[k % len(guide)], args.candles, seed=k // len(guide))
              for k in range(args.pairs)]
    prefixes = [df.iloc[:n_loop] for df in frames]
    cols = [{k: df[k].tolist() for k in ("open", "high", "low", "close", "volume", "open_time")}
            for df in prefixes]

    vec_s = _best_total(compute_indicators, frames, args.repeat)
    v2_s = _best_total(v2_compute_indicators, frames, args.repeat)
    t0 = time.perf_counter()
    loop = [loop_indicators(d["open"], d["high"], d["low"], d["close"], d["volume"], d["open_time"])
            for d in cols]
    loop_s = time.perf_counter() - t0

    obv_vec_s = _best_total(lambda df: np.cumsum(np.r_[0.0, np.sign(np.diff(df["close"].to_numpy()))
                                                        * df["volume"].to_numpy()[1:]]),
                            frames, args.repeat)
    obv_cols = [(df["close"].tolist(), df["volume"].tolist()) for df in frames]
    t0 = time.perf_counter()
    for close, volume in obv_cols:
        guide_obv(close, volume)
    obv_loop_s = time.perf_counter() - t0

    # the checks (not timed): loops vs vectorised on the prefixes, prefix rows bit-identical
    # to the full series' rows, and the previous implementation's 45 columns on the full series
    err = v2_err = 0.0
    prefix_identical = True
    for df, pre, lp in zip(frames, prefixes, loop):
        full = compute_indicators(df).to_numpy()
        short = compute_indicators(pre).to_numpy()
        prefix_identical &= bool(np.array_equal(full[:n_loop], short, equal_nan=True))
        err = max(err, max_disagreement(short, np.column_stack([lp[k] for k in FEATURE_DOCS])))
        v2_err = max(v2_err, max_disagreement(full[:, :len(indicators_v2.FEATURE_DOCS)],
                                              v2_compute_indicators(df).to_numpy()))

    n, n_cols, n_v2 = len(frames), len(FEATURE_DOCS), len(indicators_v2.FEATURE_DOCS)
    per_candle = loop_s / n_loop  # loop seconds per candle (all pairs)
    rows = [(f"all {n_cols} indicators, vectorised (compute_indicators)", args.candles, vec_s,
             per_candle / (vec_s / args.candles)),
            (f"{n_v2} indicators, previous compute_indicators (v2)", args.candles, v2_s,
             per_candle / (v2_s / args.candles)),
            (f"all {n_cols} indicators, row-by-row Python loops", n_loop, loop_s, 1.0),
            ("OBV only, vectorised (numpy cumsum)", args.candles, obv_vec_s, obv_loop_s / obv_vec_s),
            ("OBV only, the guide's row-by-row loop", args.candles, obv_loop_s, 1.0)]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"bench_features: {plural(n, 'pair')} x {args.candles} candles (synthetic GARCH candles), "
          f"{n_cols} indicator columns")
    print(f"machine: {platform.system()} {platform.machine()}, {_cpu_name()}, {os.cpu_count()} cores,"
          f" load average {os.getloadavg()[0]:.2f}; Python {platform.python_version()}, numpy "
          f"{np.__version__}, pandas {pd.__version__}; OMP_NUM_THREADS={threads}")
    print(f"command: python bench/bench_features.py --pairs {args.pairs} --candles {args.candles} "
          f"--repeat {args.repeat} --loop-candles {args.loop_candles}")
    print()
    print(f"| {'implementation':52s} | {'candles':>7s} | {'total s':>8s} | {'ms/pair':>8s} "
          f"| {'speed-up':>8s} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for what, candles, s, speed in rows:
        print(f"| {what:52s} | {candles:7d} | {s:8.3f} | {1000 * s / n:8.2f} | {speed:7.1f}x |")
    print()
    where = "" if n_loop == args.candles else f" (run on the first {n_loop} candles of each pair)"
    print(f"vectorised: best of {max(1, args.repeat)} runs, one pair after another, each table "
          "dropped before the next; speed-ups of the indicator rows are per candle against the "
          f"loops{where}")
    ok = err <= 1e-9 and prefix_identical and v2_err <= 1e-9
    print(f"agreement (vectorised vs loops, every row and column of the first {n_loop} candles): "
          f"max error {err:.1e} (relative, floored at the column's median magnitude); those rows "
          f"bit-identical to the full series' rows: {'yes' if prefix_identical else 'NO'}; "
          f"previous implementation's {n_v2} columns: max error {v2_err:.1e} -> "
          f"{'OK' if ok else 'MISMATCH'}")
    if n == 40 and args.candles in (3000, 100_000):
        goal = 1.0 if args.candles == 3000 else 2.0
        print(f"goal (40 pairs x {args.candles:,} candles < {goal:g} s): "
              f"{'met' if vec_s < goal else 'NOT met'} "
              f"({vec_s:.3f} s, best of {max(1, args.repeat)})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
