"""Run the indicators on real Binance candles and report what could go wrong on real data.

    python bench/check_real_data.py --data-dir path/to/binance-csvs

For every SYMBOL_INTERVAL.csv[.gz] file: validation, gaps, zero-volume and flat candles;
indicator columns that are constant, NaN after the warm-up, or inf; the largest |value| in
units of the column's std (outliers); the explained variance of 30 PCA components fitted on
the training rows of the last 3,000 candles (as the pipeline does). Then the warm-up check:
for cut points every `--cut-every` rows, the indicators computed on the 600 candles from the
cut agree with those computed on the full history from which row on (error relative to the
value, floored at the column's median magnitude, must stay below 1e-6).
Not a test: the data are not in the repository.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import v3_data_processor as dp  # noqa: E402
from v3_indicators import feature_names  # noqa: E402
from v3_common import INTERVAL_MS, V3Error  # noqa: E402
from v3_market_data import read_klines  # noqa: E402

TOL = 1e-6


def warmup_errors(df, *, cut_every: int, length: int = 600) -> np.ndarray:
    """(length, F) worst error at each row offset from a cut, over all cuts of this series."""
    full = dp.compute_indicators(df).to_numpy()
    floor = np.nanmedian(np.abs(full), axis=0)
    worst = np.zeros((length, full.shape[1]))
    for s in range(cut_every, len(df) - length, cut_every):
        short = dp.compute_indicators(df.iloc[s:s + length]).to_numpy()
        ref = full[s:s + length]
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.abs(short - ref) / np.maximum(np.abs(ref), floor)
        err[np.isnan(short) & np.isnan(ref)] = 0.0   # both still warming up
        err[np.isnan(err)] = np.inf                  # NaN on one side only
        worst = np.maximum(worst, err)
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent
                                               / "shared" / "data" / "binance-dev"))
    ap.add_argument("--cut-every", type=int, default=97, help="rows between cut points (97)")
    args = ap.parse_args(argv)
    files = sorted(Path(args.data_dir).glob("*_*.csv*"))
    if not files:
        print(f"no SYMBOL_INTERVAL.csv[.gz] files in {args.data_dir}")
        return 2
    t0 = time.perf_counter()
    saved_warmup = dp.WARMUP_CANDLES
    names = feature_names()
    worst = np.zeros((600, len(names)))
    problems = 0
    print(f"{'file':22s} {'rows':>6s} {'gaps':>4s} {'vol=0':>5s} {'flat':>4s} "
          f"{'PCA30 var':>9s}  {'max |z| (column)':24s} issues")
    for path in files:
        interval = path.name.split("_")[-1].split(".")[0]
        try:
            df = dp.validate_klines(read_klines(path), path.name).reset_index(drop=True)
        except V3Error as e:
            print(f"{path.name:22s} INVALID: {e}")
            problems += 1
            continue
        feats = dp.compute_indicators(df).iloc[dp.WARMUP_CANDLES:]
        a = feats.to_numpy()
        issues = []
        for what, mask in (("NaN", np.isnan(a).any(axis=0)), ("inf", np.isinf(a).any(axis=0)),
                           ("constant", np.nanstd(a, axis=0) == 0)):
            if mask.any():
                issues.append(f"{what}: {list(feats.columns[mask])}")
        problems += bool(issues)
        z = np.abs(a - np.nanmean(a, axis=0)) / np.nanstd(a, axis=0)
        j = int(np.nanargmax(np.nanmax(z, axis=0)))
        gaps = int((np.diff(df["open_time"].to_numpy()) != INTERVAL_MS[interval]).sum())
        flat = int((df["high"] == df["low"]).sum())
        zero_vol = int((df["volume"] == 0).sum())
        try:
            data = dp.prepare_dataset(df.tail(3000), interval=interval, name=path.name)
            var = f"{100 * data.transform.explained_variance_ratio.sum():8.2f}%"
        except V3Error as e:
            var = type(e).__name__
        print(f"{path.name:22s} {len(df):6d} {gaps:4d} {zero_vol:5d} {flat:4d} {var:>9s}  "
              f"{np.nanmax(z):6.1f} ({names[j]:15s}) {'; '.join(issues) or 'none'}")
        dp.WARMUP_CANDLES = 0
        try:
            worst = np.maximum(worst, warmup_errors(df, cut_every=args.cut_every))
        finally:
            dp.WARMUP_CANDLES = saved_warmup
    print()
    print(f"warm-up: rows after a cut until a 600-candle history agrees with the full one "
          f"(< {TOL:g})")
    need = {}
    for j, name in enumerate(names):
        bad = np.flatnonzero(worst[:, j] >= TOL)
        need[name] = int(bad[-1]) + 1 if len(bad) else 0
    for name in sorted(need, key=need.get, reverse=True)[:8]:
        j = names.index(name)
        print(f"  {name:18s} needs {need[name]:3d} rows; worst error at row "
              f"{saved_warmup}: {worst[saved_warmup, j]:.1e}")
    overall = max(need.values())
    ok = overall <= saved_warmup
    print(f"all columns need {overall} rows; WARMUP_CANDLES = {saved_warmup}: "
          f"{'enough' if ok else 'NOT enough'} (worst error at row {saved_warmup}: "
          f"{worst[saved_warmup].max():.1e})")
    print(f"{len(files)} files, {problems} with problems, {time.perf_counter() - t0:.0f} s")
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
