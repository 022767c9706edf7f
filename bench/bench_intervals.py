"""Benchmark: fitting + predicting the interval baselines for 40 pairs on the CPU, and the
model confidence set.

    python bench/bench_intervals.py                          # 20 coins x 2 timeframes, 3,000 candles
    python bench/bench_intervals.py --pairs 2 --candles 800 --in-process   # tiny (the tests)

Prepares 40 pairs of synthetic candles as step 3 does (FeatureConfig(): window 60, 30 PCA
components; not timed), then times, per pair, what `v3_intervals.evaluate_intervals` does for
the baselines: `rolling` (fit = its window chosen on validation from 5 candidates),
`ewma` (df fitted on training), `garch` (arch's fit on training, filtered through
validation and test) and `har` (OLS on the training split), each then predicting the test
split's 7 quantiles; the metrics; and the 90 % model confidence set over the four (arch's MCS,
1,000 stationary-bootstrap resamples). Goals (issue 20): `har` adds under 2 s for 40 pairs,
the MCS under 1 s per pair.
One untimed pair first, so imports (arch: ~1.5 s) and first calls are not counted.
By default it runs twice, each in a fresh process: with OMP_NUM_THREADS=1 (and the other BLAS
thread variables) and with the environment as it is. Goal: under 10 s for all 40 pairs on
a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib

import arch  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402

import benchlib  # noqa: E402

from v3_common import DEFAULT_COINS  # noqa: E402
from v3_data_processor import FeatureConfig, prepare_dataset  # noqa: E402
from v3_interval_scores import interval_metrics, model_confidence_set, per_sample_pinball
from v3_intervals import interval_baseline_models, sample_returns
from v3_market_data import synthetic_klines  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def machine() -> str:
    return benchlib.machine(f"numpy {np.__version__}", f"scipy {scipy.__version__}",
                            f"arch {arch.__version__}")


def score_pair(data) -> dict[str, float]:
    """Seconds per baseline (fit + predict on the test split), and for the metrics."""
    idx = data.split("test")
    y = sample_returns(data)[idx]
    secs, preds = {}, {}
    for m in interval_baseline_models():
        t = time.perf_counter()
        m.fit(data)
        preds[m.name] = m.predict_returns(data, idx)
        secs[m.name] = time.perf_counter() - t
    t = time.perf_counter()
    losses = {k: per_sample_pinball(y, q) for k, q in preds.items()}
    for q in preds.values():
        interval_metrics(y, q, baseline_losses=losses)
    secs["metrics"] = time.perf_counter() - t
    t = time.perf_counter()
    model_confidence_set(losses)
    secs["mcs"] = time.perf_counter() - t
    return secs


def measure(pairs: int, candles: int) -> dict:
    todo = [(c, tf) for c in DEFAULT_COINS for tf in ("15m", "1h")]
    todo = (todo * (pairs // len(todo) + 1))[:pairs]
    datasets = [prepare_dataset(synthetic_klines(s, tf, candles), FeatureConfig(), interval=tf,
                                name=s) for s, tf in todo]
    score_pair(datasets[0])  # warm-up: imports, first calls
    per = []
    t0 = time.perf_counter()
    for d in datasets:
        per.append(score_pair(d))
    total = time.perf_counter() - t0
    parts = {k: sum(p[k] for p in per) for k in per[0]}
    return {"pairs": pairs, "candles": candles, "total_s": total, "parts_s": parts,
            "median_pair_ms": 1000 * statistics.median(sum(p.values()) for p in per),
            "max_mcs_ms": 1000 * max(p["mcs"] for p in per),
            "max_pair_ms": 1000 * max(sum(p.values()) for p in per),
            "train_val_test": [datasets[0].n_train, datasets[0].n_val, datasets[0].n_test],
            "threads": os.environ.get("OMP_NUM_THREADS", "default")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=40, help="how many pairs (default 40)")
    ap.add_argument("--candles", type=int, default=3000, help="candles per pair (default 3000)")
    ap.add_argument("--in-process", action="store_true",
                    help="one run in this process, threads as the environment sets them")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child output
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.pairs, args.candles)))
        return
    if args.in_process:
        runs = [measure(args.pairs, args.candles)]
    else:
        runs = []
        for threads in ("1", None):
            env = dict(os.environ)
            for v in THREAD_VARS:
                if threads:
                    env[v] = threads
            cmd = [sys.executable, __file__, "--json", "--pairs", str(args.pairs),
                   "--candles", str(args.candles)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"machine: {machine()}")
    print(f"command: python bench/bench_intervals.py {' '.join(argv or sys.argv[1:])}".rstrip())
    tvt = runs[0]["train_val_test"]
    print(f"{args.pairs} pairs x {args.candles} synthetic candles, samples train/val/test = "
          f"{tvt[0]}/{tvt[1]}/{tvt[2]}; fit + predict of the test split's 7 quantiles, "
          f"metrics included; data preparation not timed\n")
    head = (f"{'OMP_NUM_THREADS':>15} {'total s':>8} {'rolling s':>10} {'ewma s':>8} "
            f"{'garch s':>8} {'har s':>6} {'metrics s':>10} {'MCS s':>6} {'max MCS ms':>11} "
            f"{'median ms/pair':>15} {'max ms/pair':>12}")
    print(head)
    for r in runs:
        p = r["parts_s"]
        print(f"{r['threads']:>15} {r['total_s']:8.2f} {p['rolling']:10.2f} {p['ewma']:8.2f} "
              f"{p['garch']:8.2f} {p['har']:6.2f} {p['metrics']:10.2f} {p['mcs']:6.2f} "
              f"{r['max_mcs_ms']:11.1f} {r['median_pair_ms']:15.1f} {r['max_pair_ms']:12.1f}")
    if args.pairs >= 40:
        ok = lambda b: "met" if b else "NOT met"  # noqa: E731
        print(f"\ngoals: 40 pairs < 10 s: {ok(all(r['total_s'] < 10.0 for r in runs))}; "
              f"har < 2 s: {ok(all(r['parts_s']['har'] < 2.0 for r in runs))}; "
              f"MCS < 1 s per pair: {ok(all(r['max_mcs_ms'] < 1000 for r in runs))}")


if __name__ == "__main__":
    main()
