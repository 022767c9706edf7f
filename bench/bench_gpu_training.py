"""Benchmark: the guide's 40-model training job, plain per-model loop vs the fast engine.

    python bench/bench_gpu_training.py                 # on a CUDA machine, < 5 minutes
    python bench/bench_gpu_training.py --tiny          # seconds, on CPU (the tests run this)

The job is the guide's: 20 coins x 2 timeframes of synthetic candles (3,000 each), window 60,
batch 32, the guide's model (BiLSTM 30->128 x3, attention), 100 epochs with early stopping
switched off for timing. Three measurements, all in this one run on this one device:

1. plain  - v3_trainer's per-model loop (engine='plain') on a few pairs for a few epochs,
            after one untimed warm-up epoch; projected to the full job per model-step.
2. parity - the fast engine on those same pairs, same data, seeds and epochs: its best
            validation loss must be within 2 % of the plain loop's, pair by pair (and the
            plain loop with another seed shows how much that varies by chance).
3. fast   - the fast engine on all 40 pairs for all epochs, measured end to end (capture,
            every step, every validation pass).

It prints a table (machine, command, ms per model-step, models/s, wall times, speedup, peak
GPU memory, parity) and writes the same as JSON (bench_gpu_training.json in the --out
folder: default $OUT when set, else v3_output/bench/, which git ignores) after each phase,
and a progress line (with the rate so far) every 10 epochs of the full job, so a run cut
short by a time limit still leaves what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from v3_common import DEFAULT_COINS, DEFAULT_TIMEFRAMES, atomic_write_json  # noqa: E402
from v3_data_processor import FeatureConfig, prepare_dataset  # noqa: E402
from v3_lstm_model import ModelConfig  # noqa: E402
from v3_market_data import synthetic_klines  # noqa: E402
from v3_engine import train_jobs  # noqa: E402
from v3_trainer import TrainConfig, TrainJob  # noqa: E402
import v3_fast_kernels as kernels  # noqa: E402
import v3_fast_train as fast  # noqa: E402

PARITY_TOLERANCE = 0.02   # the bar: fast best val loss within 2 % of plain, per pair
GOAL_FAST_WALL_S = 180.0  # the goal: the full job in <= 3 minutes ...
GOAL_SPEEDUP = 10.0       # ... and >= 10x the plain loop on the same card
PROGRESS_EVERY = 10       # epochs of the full job between progress lines
RESULT_FILE = "bench_gpu_training.json"


def default_out_dir() -> Path:
    """$OUT when set (the device machine's result folder), else v3_output/bench/ (ignored by
    git): never a file in bench/."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "v3_output" / "bench"


def _prepare(args: tuple) -> tuple:
    symbol, interval, candles, features = args
    return f"{symbol}_{interval}", prepare_dataset(synthetic_klines(symbol, interval, candles),
                                                   features, interval=interval)


def build_pairs(n_pairs: int, candles: int, features: FeatureConfig, *, workers: int) -> dict:
    """n_pairs synthetic pairs (coins x timeframes, in the guide's order), preprocessed as
    step 3 does. Several processes when there are many: pandas work, no torch."""
    names = [(c, tf) for c in DEFAULT_COINS for tf in DEFAULT_TIMEFRAMES][:n_pairs]
    todo = [(c, tf, candles, features) for c, tf in names]
    if workers > 1 and len(todo) > 4:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        try:  # fork, before anything touches CUDA
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
                return dict(ex.map(_prepare, todo))
        except Exception as e:  # noqa: BLE001  (any pool trouble: do it in this process)
            print(f"  (process pool failed: {type(e).__name__}; preparing in one process)")
    return dict(map(_prepare, todo))


def n_batches(data, batch_size: int) -> int:
    return (int(data.n_train) + batch_size - 1) // batch_size


def make_jobs(jobs_data: dict, model: ModelConfig) -> list[TrainJob]:
    return [TrainJob(key=k, symbol=k.split("_")[0], interval=k.split("_")[1], data=d,
                     model_config=model, desc=k) for k, d in jobs_data.items()]


def run(jobs_data: dict, model: ModelConfig, cfg: TrainConfig, device: torch.device) -> tuple:
    """Train the pairs with cfg (v3_engine.train_jobs); returns (outcomes, wall seconds)."""
    jobs = make_jobs(jobs_data, model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = train_jobs(jobs, cfg, show_progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_full_job(jobs_data: dict, model: ModelConfig, cfg: TrainConfig, device: torch.device, *,
                 steps_per_epoch: int, res: dict, save: Callable[[], None]) -> tuple:
    """The fast engine on the whole job (v3_fast_train.train_jobs_fast, no plain fallback:
    a failure is the result), with a progress line and the JSON saved every PROGRESS_EVERY
    epochs, so a run cut short still shows its rate. Returns (outcomes, wall seconds)."""
    jobs = make_jobs(jobs_data, model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    seen = {"epoch": 0}

    def on_epoch(epoch: int, training: int) -> None:
        if epoch // PROGRESS_EVERY == seen["epoch"] // PROGRESS_EVERY or epoch == seen["epoch"]:
            return
        seen["epoch"] = epoch
        wall = time.perf_counter() - t0
        ms = 1000 * wall / max(1, epoch * steps_per_epoch)
        res["fast_progress"] = {"epoch": epoch, "of": cfg.epochs, "wall_s": round(wall, 2),
                                "ms_per_model_step_so_far": round(ms, 4),
                                "projected_full_job_s": round(wall * cfg.epochs / epoch, 1)}
        save()
        print(f"  fast: epoch {epoch}/{cfg.epochs}, {training} models training, {wall:.1f} s, "
              f"{ms:.3f} ms/model-step so far -> full job ~{wall * cfg.epochs / epoch:.0f} s",
              flush=True)

    out = fast.train_jobs_fast(jobs, cfg, device=device, show_progress=False, on_epoch=on_epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def machine(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device_name=p.name, cuda=torch.version.cuda,
                    capability=f"{p.major}.{p.minor}", gpu_memory_gb=round(p.total_memory / 2**30, 1))
    else:
        info["device_name"] = "cpu"
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true",
                    help="a seconds-long CPU run (4 small pairs, tiny model, 2 epochs)")
    ap.add_argument("--pairs", type=int, help="pairs in the full job (default 40)")
    ap.add_argument("--epochs", type=int, help="epochs of the full job (default 100)")
    ap.add_argument("--candles", type=int, help="candles per pair (default 3000)")
    ap.add_argument("--plain-pairs", type=int, help="pairs the plain loop and the parity "
                    "check train (default 2)")
    ap.add_argument("--plain-epochs", type=int, help="epochs for those (default 20)")
    ap.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"folder for {RESULT_FILE} (default: $OUT when set, else "
                         f"v3_output/bench/)")
    args = ap.parse_args(argv)

    if args.tiny:
        model = ModelConfig(input_size=4, hidden_size=4, num_layers=2, dropout=0.0)
        features = FeatureConfig(seq_len=8, n_components=4)
        defaults = dict(pairs=4, epochs=2, candles=520, plain_pairs=2, plain_epochs=2)
        base = TrainConfig(batch_size=16)
    else:
        model, features = ModelConfig(), FeatureConfig()             # the guide's: 30->128 x3, window 60
        defaults = dict(pairs=40, epochs=100, candles=3000, plain_pairs=2, plain_epochs=20)
        base = TrainConfig()                                          # batch 32, lr 1e-3, AdamW ...
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)   # tiny models: one intra-op thread is the fastest
    try:
        return _bench(args, argv, model, features, base, device)
    finally:
        torch.set_num_threads(threads)


def _bench(args, argv, model: ModelConfig, features: FeatureConfig, base: TrainConfig,
           device: torch.device) -> int:
    base = dataclasses.replace(base, early_stopping=False, device=str(device),
                               checkpoint_every_s=1e9)
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    t0 = time.perf_counter()   # the data first: its worker processes fork before CUDA starts
    pairs = build_pairs(args.pairs, args.candles, features,
                        workers=1 if args.tiny else min(8, os.cpu_count() or 1))
    data_s = time.perf_counter() - t0
    out_path = (args.out if args.out is not None else default_out_dir()) / RESULT_FILE
    res: dict = {"command": " ".join(["python", "bench/bench_gpu_training.py", *(argv or sys.argv[1:])]),
                 "tiny": bool(args.tiny), **machine(device),
                 "job": {"pairs": args.pairs, "candles": args.candles, "window": features.seq_len,
                         "batch_size": base.batch_size, "epochs": args.epochs,
                         "early_stopping": False, "model": model.to_dict()},
                 "data_seconds": round(data_s, 2)}

    def save():
        atomic_write_json(out_path, res)

    say(f"machine: {res['device_name']} ({device}), torch {res['torch']}"
        + (f", CUDA {res.get('cuda')}" if device.type == "cuda" else "")
        + f", {res['cpu_count']} CPUs")
    say(f"command: {res['command']}")
    nb = {k: n_batches(d, base.batch_size) for k, d in pairs.items()}
    full_steps = sum(nb.values()) * args.epochs
    res["job"]["model_steps"] = full_steps
    say(f"data: {len(pairs)} pairs prepared in {res['data_seconds']:.1f} s; "
        f"{full_steps:,} model-steps in the full job")
    save()

    # 1. the plain loop on a few pairs (after an untimed warm-up epoch), projected
    few = dict(list(pairs.items())[:args.plain_pairs])
    plain_cfg = dataclasses.replace(base, engine="plain", epochs=args.plain_epochs)
    run(dict(list(few.items())[:1]), model, dataclasses.replace(plain_cfg, epochs=1), device)
    plain, plain_s = run(few, model, plain_cfg, device)
    plain_steps = sum(nb[k] for k in few) * args.plain_epochs
    ms_plain = 1000 * plain_s / plain_steps
    res["plain"] = {"pairs": len(few), "epochs": args.plain_epochs, "wall_s": round(plain_s, 3),
                    "model_steps": plain_steps, "ms_per_model_step": round(ms_plain, 4),
                    "projected_full_job_s": round(ms_plain * full_steps / 1000, 1),
                    "engine": "plain"}
    say(f"plain: {len(few)} pairs x {args.plain_epochs} epochs in {plain_s:.1f} s = "
        f"{ms_plain:.3f} ms/model-step -> full job projected {res['plain']['projected_full_job_s']:.0f} s")
    save()

    # 2. parity: the fast engine on the same pairs, data, seeds and epochs
    fast_cfg = dataclasses.replace(base, engine="fast")
    par, _ = run(few, model, dataclasses.replace(fast_cfg, epochs=args.plain_epochs), device)
    # the noise floor: the plain loop against itself with another seed (other dropout masks,
    # shuffles and initial weights), so a parity miss can be told from seed-to-seed variation
    other, _ = run(few, model, dataclasses.replace(plain_cfg, seed=base.seed + 1), device)
    rows = []
    for k in few:
        a, b, o = plain[k].best_val_loss, par[k].best_val_loss, other[k].best_val_loss
        rel = (b - a) / a if a else float("inf")
        rows.append({"pair": k, "plain_best_val": round(a, 6), "fast_best_val": round(b, 6),
                     "plain_last_val": round(plain[k].history[-1]["val_loss"], 6),
                     "fast_last_val": round(par[k].history[-1]["val_loss"], 6),
                     "rel_diff": round(rel, 5), "ok": abs(rel) <= PARITY_TOLERANCE,
                     "plain_other_seed_best_val": round(o, 6),
                     "seed_noise_rel_diff": round((o - a) / a if a else float("inf"), 5)})
    res["parity"] = {"epochs": args.plain_epochs, "tolerance": PARITY_TOLERANCE, "pairs": rows,
                     "ok": all(r["ok"] for r in rows),
                     "engine": ",".join(sorted({o.engine for o in par.values()}))}
    save()
    if not res["parity"]["engine"].startswith("fast"):
        say(f"the fast engine fell back to {res['parity']['engine']!r} (see the warning above); "
            f"not running the full job with it")
        return 1

    # 3. the fast engine on the whole job, end to end
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    quick, fast_s = run_full_job(pairs, model, dataclasses.replace(fast_cfg, epochs=args.epochs),
                                 device, steps_per_epoch=sum(nb.values()), res=res, save=save)
    engines = sorted({o.engine for o in quick.values()})
    res["fast"] = {"pairs": len(pairs), "epochs": args.epochs, "wall_s": round(fast_s, 3),
                   "model_steps": full_steps,
                   "ms_per_model_step": round(1000 * fast_s / full_steps, 4),
                   "models_per_s": round(len(pairs) / fast_s, 4),
                   "engine": engines[0] if len(engines) == 1 else ",".join(engines),
                   "lstm_cell": kernels.pick_cell(device),
                   "tf32_matmul": bool(fast.TF32_MATMUL and device.type == "cuda"),
                   "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                   if device.type == "cuda" else None}
    res["speedup"] = round(res["plain"]["projected_full_job_s"] / fast_s, 2)
    res["goal"] = {"fast_wall_s_max": GOAL_FAST_WALL_S, "speedup_min": GOAL_SPEEDUP,
                   "met": fast_s <= GOAL_FAST_WALL_S and res["speedup"] >= GOAL_SPEEDUP
                   and res["parity"]["ok"]}
    save()

    f, p = res["fast"], res["plain"]
    say("")
    say(f"{'':26}{'plain loop':>16}{'fast engine':>16}")
    say(f"{'ms/model-step':26}{p['ms_per_model_step']:>16.3f}{f['ms_per_model_step']:>16.3f}")
    plain_rate = len(pairs) / p['projected_full_job_s']
    say(f"{'models/s (full job)':26}{plain_rate:>16.4f}{f['models_per_s']:>16.4f}")
    say(f"{'full job wall s':26}{p['projected_full_job_s']:>15.1f}*{f['wall_s']:>16.1f}")
    say(f"{'measured on':26}{f'{len(few)} pairs x {args.plain_epochs} ep':>16}"
        f"{f'{len(pairs)} pairs x {args.epochs} ep':>16}")
    say(f"{'engine':26}{'plain':>16}{f['engine']:>16}")
    say(f"{'LSTM':26}{'nn.LSTM':>16}{f['lstm_cell'] + (' +TF32' if f['tf32_matmul'] else ''):>16}")
    if f["peak_gpu_memory_gb"] is not None:
        say(f"{'peak GPU memory GB':26}{'':>16}{f['peak_gpu_memory_gb']:>16.2f}")
    say(f"speedup: {res['speedup']:.1f}x   (* projected from the measured ms/model-step)")
    say(f"parity (best val loss, {args.plain_epochs} epochs, tolerance "
        f"{100 * PARITY_TOLERANCE:.0f} %): " + ", ".join(
            f"{r['pair']} {r['plain_best_val']:.4f} vs {r['fast_best_val']:.4f} "
            f"({100 * r['rel_diff']:+.2f} %)" for r in rows)
        + ("  OK" if res["parity"]["ok"] else "  FAILED"))
    say("  plain vs plain with another seed: " + ", ".join(
        f"{r['pair']} {100 * r['seed_noise_rel_diff']:+.2f} %" for r in rows))
    say(f"goal (<= {GOAL_FAST_WALL_S:.0f} s, >= {GOAL_SPEEDUP:.0f}x, parity): "
        + ("met" if res["goal"]["met"] else "NOT met")
        + ("  [tiny CPU run: not the real job]" if args.tiny else ""))
    say(f"JSON: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
