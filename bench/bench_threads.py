"""Benchmark: torch CPU threads for V3's models, 1 thread vs all cores, idle and under load.

    python bench/bench_threads.py                  # a few seconds per cell, ~1 minute in all
    python bench/bench_threads.py --seconds 1      # quicker, noisier

Times training steps (forward, backward, clip, AdamW; what train_model does per batch) of
the demo model (ModelConfig(hidden_size=32, num_layers=2)) and the guide's model (128 hidden,
3 layers), batch 32, window 60, 30 features, with torch.set_num_threads(1) and with one
thread per core. The "load" rows start one busy-loop process per core first (what other
jobs on a shared machine, or a notebook's other cells, do to the cores). It prints the
machine, the command and a table of ms per step; v3_trainer.DEFAULT_THREADS is chosen from
these numbers (bench/README.md has them).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from v3_lstm_model import ModelConfig, V3LSTMModel  # noqa: E402

MODELS = {"demo (32 x 2)": ModelConfig(hidden_size=32, num_layers=2),
          "guide (128 x 3)": ModelConfig(hidden_size=128, num_layers=3)}
BATCH, SEQ, FEATURES = 32, 60, 30


def time_steps(cfg: ModelConfig, threads: int, seconds: float) -> tuple[float, int]:
    """ms per training step with `threads` intra-op threads: 2 untimed warm-up steps, then
    steps until `seconds` have passed (at least 3)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = V3LSTMModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.randn(BATCH, SEQ, FEATURES)
    y = torch.randn(BATCH)

    def step():
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return 1000 * (time.perf_counter() - t0) / n, n


def start_load(n: int) -> list[subprocess.Popen]:
    """n busy-loop processes (one per core); stop_load ends exactly these."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell (default 3)")
    ap.add_argument("--threads", default=None,
                    help="comma list of thread counts (default: 1 and the core count)")
    ap.add_argument("--no-load", action="store_true", help="skip the rows under load")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    counts = ([int(t) for t in args.threads.split(",")] if args.threads
              else sorted({1, cores}))
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch "
          f"{torch.__version__} (default {torch.get_num_threads()} threads), Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start")
    print("command: python bench/bench_threads.py " + " ".join(argv if argv is not None
                                                              else sys.argv[1:]))
    default = torch.get_num_threads()
    rows = []
    try:
        for state in ("idle",) + (() if args.no_load else ("load",)):
            procs = start_load(cores) if state == "load" else []
            try:
                time.sleep(0.5 if procs else 0)
                for name, cfg in MODELS.items():
                    for t in counts:
                        ms, n = time_steps(cfg, t, args.seconds)
                        rows.append((state, name, t, ms, n))
                        print(f"  {state:5} {name:16} {t:>2} thread(s): {ms:9.1f} ms/step "
                              f"({n} steps)", flush=True)
            finally:
                stop_load(procs)
    finally:
        torch.set_num_threads(default)
    print()
    print("| machine state | model | " + " | ".join(f"{t} thread(s) ms/step" for t in counts)
          + " | best |")
    print("|---|---|" + "---|" * (len(counts) + 1))
    for state in dict.fromkeys(r[0] for r in rows):
        for name in MODELS:
            cells = {r[2]: r[3] for r in rows if r[0] == state and r[1] == name}
            best = min(cells, key=cells.get)
            print(f"| {state} | {name} | " + " | ".join(f"{cells[t]:.1f}" for t in counts)
                  + f" | {best} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
