"""Step 4's entry point: train a list of pairs with the engine that fits the device.

The one place that knows the engines: `resolve_engine` picks the plain per-model loop
(v3_trainer.train_model, one model after another) or the fast engine (v3_fast_train: the
models of a group trained together, CUDA graphs on a GPU), and `train_jobs` runs it, with
the fast engine's failed groups handed to the plain loop. It also sets torch's CPU thread
count while it trains (v3_trainer.cpu_threads). The pipeline (v3_colab_training) and
bench/bench_gpu_training.py call `train_jobs`.
"""
from __future__ import annotations

from typing import Callable

import torch

from v3_common import V3Error, log
from v3_fast_train import train_jobs_fast
from v3_trainer import (TrainConfig, TrainJob, TrainOutcome, check_train_config, cpu_threads,
                        resolve_device, resolve_threads, train_model)


def resolve_engine(cfg: TrainConfig, device: torch.device) -> str:
    """'fast' or 'plain'. 'auto' is the fast engine (v3_fast_train: models trained together,
    CUDA graphs) on a GPU, where a step is launch-bound, and the plain per-model loop on the
    CPU, so CPU results stay exactly as they were. Mixed precision (amp fp16/bf16) needs the
    plain loop."""
    if cfg.engine != "auto":
        return cfg.engine
    if device.type != "cuda":
        return "plain"
    if cfg.amp in ("fp16", "bf16"):
        log.info("engine auto: amp=%r asked for, so the plain loop (the fast engine is fp32)",
                 cfg.amp)
        return "plain"
    return "fast"


def train_jobs(jobs: list[TrainJob], cfg: TrainConfig, *, show_progress: bool = True,
               on_done: Callable[[TrainJob, TrainOutcome], object] | None = None,
               on_error: Callable[[TrainJob, Exception], object] | None = None) -> dict:
    """Train every job; `on_done(job, outcome)` as each finishes. One failing job (a V3Error
    from training or from `on_done`) goes to `on_error` and the others go on.
    Returns {job.key: outcome} for the jobs that finished.

    `cfg.engine` picks how (see resolve_engine): 'plain' trains one model after another with
    train_model; 'fast' trains them together (v3_fast_train), and is the default on a GPU;
    groups it cannot train (a failure inside torch, or a first step that disagrees with the
    plain loop's: v3_fast_check) go to the plain loop, and their outcomes say why.
    On the CPU, torch's thread count is resolve_threads(cfg.threads) while the jobs train, and
    is put back afterwards (v3_trainer.cpu_threads)."""
    if not jobs:
        return {}
    try:
        check_train_config(cfg)
        device = resolve_device(cfg.device)
        resolve_threads(cfg.threads)  # a bad V3_THREADS fails every job, before any work
    except V3Error as e:  # the same error for every job, as train_model would raise it
        if on_error is None:
            raise
        for job in jobs:
            on_error(job, e)
        return {}
    with cpu_threads(cfg.threads, device):  # torch's own count is back when training ends
        engine = resolve_engine(cfg, device)
        log.info("training engine: %s (%s)", engine, "engine=auto" if cfg.engine == "auto"
                 else f"engine={cfg.engine!r}")

        def plain(js: list[TrainJob], fallback_reason: str | None = None) -> dict:
            return _train_jobs_plain(js, cfg, show_progress=show_progress, on_done=on_done,
                                     on_error=on_error, fallback_reason=fallback_reason)

        if engine == "fast":
            return train_jobs_fast(jobs, cfg, device=device, show_progress=show_progress,
                                   on_done=on_done, on_error=on_error, fallback=plain)
        return plain(jobs)


def _train_jobs_plain(jobs: list[TrainJob], cfg: TrainConfig, *, show_progress: bool,
                      on_done, on_error, fallback_reason: str | None = None) -> dict:
    """The plain loop, one job after another; `fallback_reason`: why the fast engine handed
    these jobs over (TrainOutcome.engine_fallback_reason, in the results)."""
    out = {}
    for job in jobs:
        try:
            outcome = train_model(job.data, job.model_config, cfg, resume=job.resume,
                                  desc=job.desc, show_progress=show_progress,
                                  checkpoint_fn=job.checkpoint_fn)
            outcome.engine_fallback_reason = fallback_reason
            if on_done:
                on_done(job, outcome)
            out[job.key] = outcome
        except V3Error as e:
            if on_error is None:
                raise
            on_error(job, e)
    return out
