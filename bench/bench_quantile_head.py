"""Benchmark: what the quantile head costs per training step, both engines, on the CPU.

    OMP_NUM_THREADS=1 python bench/bench_quantile_head.py          # ~3 minutes on 2 cores
    OMP_NUM_THREADS=1 python bench/bench_quantile_head.py --reps 1 --epochs 2   # quicker, noisier
    python bench/bench_quantile_head.py --tiny                     # seconds (the test runs it)

Trains the demo model (ModelConfig(hidden_size=32, num_layers=2)) and the guide's model
(128 hidden, 3 layers), dropout 0.3, window 60, 30 PCA components, batch 32, accumulation
2, on synthetic candles prepared as step 3 does, once with the quantile head
(ModelConfig.quantiles, the default) and once without (quantiles=()), with each engine:
'plain' (v3_engine.train_jobs, v3_trainer.train_model) and 'fast' (v3_fast_train's grouped
kernels, eager on the CPU). One torch thread. "ms/step" is an epoch's wall time (its
training steps and its validation pass, as bench_gpu_training.py counts it) divided by its
training batches; the first epoch of every run is a warm-up and not counted. Reported
over the other epochs of all repetitions: the best (fastest) epoch, which other processes
on a shared machine inflate least, and the median. Runs with and without the head
alternate, so a change in machine load hits both. The bar (issue 13): the head costs at
most 10 % more per step. Prints the machine, the command and a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from v3_common import log  # noqa: E402
from v3_data_processor import WARMUP_CANDLES, FeatureConfig, prepare_dataset  # noqa: E402
from v3_fast_train import train_jobs_fast  # noqa: E402
from v3_lstm_model import ModelConfig  # noqa: E402
from v3_market_data import synthetic_klines  # noqa: E402
from v3_trainer import TrainConfig, TrainJob, train_model  # noqa: E402

MODELS = {"demo (32 x 2)": ModelConfig(hidden_size=32, num_layers=2),
          "guide (128 x 3)": ModelConfig(hidden_size=128, num_layers=3)}
TINY_MODELS = {"tiny (4 x 1)": ModelConfig(hidden_size=4, num_layers=1, dropout=0.0)}
BAR = 0.10   # at most 10 % more time per step with the head


def make_data(features: FeatureConfig, train_batches: int, batch: int):
    """One synthetic pair with about `train_batches` training batches."""
    samples = math.ceil(train_batches * batch / features.train_frac) + 2
    candles = max(features.min_candles(), WARMUP_CANDLES + features.seq_len + samples)
    return prepare_dataset(synthetic_klines("BTCUSDT", "15m", candles), features, interval="15m")


def epoch_seconds(engine: str, model: ModelConfig, data, cfg: TrainConfig) -> list[float]:
    """Wall seconds of each epoch after the first (a warm-up) of one training run."""
    stamps: dict[int, float] = {}
    t0 = time.perf_counter()
    if engine == "plain":   # checkpoint_every_s=0: a state after every epoch, stamped here
        train_model(data, model, cfg, show_progress=False,
                    checkpoint_fn=lambda st: stamps.setdefault(int(st["epoch"]), time.perf_counter()))
    else:
        job = TrainJob(key="BTCUSDT_15m", symbol="BTCUSDT", interval="15m", data=data,
                       model_config=model, desc="bench")
        train_jobs_fast([job], cfg, device=torch.device("cpu"), show_progress=False,
                        on_epoch=lambda ep, _: stamps.setdefault(int(ep), time.perf_counter()))
    ends = [t0] + [stamps[e] for e in range(1, cfg.epochs + 1)]
    return [b - a for a, b in zip(ends[1:], ends[2:])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run, the first untimed "
                                                          "(default 4)")
    ap.add_argument("--reps", type=int, default=3, help="runs per cell (default 3)")
    ap.add_argument("--train-batches", type=int, default=8,
                    help="training batches per epoch (default 8)")
    ap.add_argument("--engines", default="plain,fast")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and window (seconds)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    log.setLevel("WARNING")
    models = TINY_MODELS if args.tiny else MODELS
    features = FeatureConfig(seq_len=8, n_components=4) if args.tiny else FeatureConfig()
    cfg = TrainConfig(epochs=max(2, args.epochs), early_stopping=False, checkpoint_every_s=0.0,
                      device="cpu", threads=1)
    data = make_data(features, args.train_batches, cfg.batch_size)
    n_batches = math.ceil(data.n_train / cfg.batch_size)
    cmd = "python bench/bench_quantile_head.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, 1 thread (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"command: {cmd}")
    print(f"data: {data.n_train} training windows ({n_batches} batches of {cfg.batch_size}), "
          f"{data.n_val} validation, window {data.seq_len}, {data.transform.n_components} "
          f"components; {cfg.epochs} epochs per run (first untimed) x {args.reps} runs")
    rows = []
    for name, base in models.items():
        for engine in args.engines.split(","):
            times: dict[bool, list[float]] = {True: [], False: []}
            for rep in range(args.reps):
                for head in ((False, True) if rep % 2 == 0 else (True, False)):
                    model = base if head else dataclasses.replace(base, quantiles=())
                    model = dataclasses.replace(model, input_size=data.transform.n_components)
                    times[head] += epoch_seconds(engine, model, data, cfg)
            best = {h: 1000 * min(t) / n_batches for h, t in times.items()}
            med = {h: 1000 * statistics.median(t) / n_batches for h, t in times.items()}
            over, over_med = best[True] / best[False] - 1, med[True] / med[False] - 1
            rows.append({"model": name, "engine": engine, "ms_per_step_without": best[False],
                         "ms_per_step_with": best[True], "overhead": over,
                         "median_ms_per_step_without": med[False],
                         "median_ms_per_step_with": med[True], "median_overhead": over_med,
                         "epochs_timed": len(times[True])})
            print(f"  {name:16} {engine:5}: best {best[False]:8.2f} ms/step without, "
                  f"{best[True]:8.2f} with the head ({100 * over:+.1f} %); median "
                  f"{med[False]:8.2f} / {med[True]:8.2f} ({100 * over_med:+.1f} %)", flush=True)
    print()
    print("| model | engine | ms/step without head (best / median) | ms/step with head "
          "(best / median) | overhead (best / median) | bar <= 10 % (best) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['engine']}{' (eager)' if r['engine'] == 'fast' else ''} | "
              f"{r['ms_per_step_without']:.2f} / {r['median_ms_per_step_without']:.2f} | "
              f"{r['ms_per_step_with']:.2f} / {r['median_ms_per_step_with']:.2f} | "
              f"{100 * r['overhead']:+.1f} % / {100 * r['median_overhead']:+.1f} % | "
              f"{'yes' if r['overhead'] <= BAR else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
