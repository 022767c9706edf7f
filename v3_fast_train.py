"""Step 4's fast engine: many V3 models trained as one batched computation.

Why. The guide's model is tiny (batch 32 x window 60, hidden 128), so on a GPU one training
step is a few thousand small kernels and the time goes to launching them, not to arithmetic
(measured earlier on an H200: 8.0 ms per step eager, 2.7 ms replayed from a CUDA graph).
So v3_fast_kernels writes the model once more with every weight stacked along a leading
model axis (M, ...), the LSTM recurrence as batched matrix products over all M models and
both directions at once, and this module runs the jobs on it, one v3_fast_group.TrainGroup
per group of models: each kernel serves every model of a group, and on CUDA the whole
training step (forward, backward, clipping, AdamW) is captured once in a CUDA graph and
replayed for every batch. Nothing in the hot loop reads a value back to the
host; the losses of an epoch are read once, after its validation pass.

What stays per model, as in `v3_trainer.train_model`: the initial weights (same seed), the
batches of every epoch (the same permutation, seeded by (seed, epoch)), the loss (with a
quantile head: MSE + quantile_weight * mean pinball, and both recorded per epoch), gradient
accumulation, gradient clipping (one norm per model), AdamW (one step count per model), the
learning rate (each model's own cosine-with-warm-restarts value, a pure function of its own
fractional epoch), the validation loss, early stopping and the best weights. Pairs with
different sample counts share a group: padding samples have zero loss weight, and a model
whose epoch has fewer batches skips the optimizer on the extra ones. Models that finish leave
the group at an epoch boundary; once a quarter of its slots are idle the group is re-packed
(and its graph re-captured), so they free their share of the GPU.

Results are ordinary `TrainOutcome`s: the best weights as a `V3LSTMModel` state_dict on the
CPU and a resume state in the plain loop's format (torch AdamW and scheduler state dicts), so
checkpoints do not change and either engine can continue what the other saved (jobs that
resume are trained here too, each from its own epoch).

Guarded: on a GPU (CHECK_DEVICES) the first group to train is first checked against the
plain loop (v3_fast_check: one step and one validation pass on copies of the same models and
batches); when they disagree the run trains with the plain loop and the outcomes say why.
A KeyboardInterrupt saves each model's state after its last finished epoch (TrainGroup.saved).

On purpose different from the plain loop: dropout masks are drawn for the whole group (the
same seed and the same group of pairs give the same run, but not the plain loop's masks), and
the engine trains in fp32 only (with TF32 matrix products on CUDA, see TF32_MATMUL). With
dropout off, both engines agree to float rounding (tests/test_fast_train.py checks it, epoch
by epoch, on CPU; on a GPU with TF32 off).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np
import torch

from v3_common import ConfigError, StorageError, V3Error, log, progress
from v3_fast_check import check_against_plain_loop
from v3_fast_group import TrainGroup
from v3_lstm_model import V3LSTMModel
from v3_train_state import log_interrupted
from v3_trainer import TrainConfig, TrainJob

REPACK_IDLE_FRACTION = 0.25   # re-pack a group once this share of its slots has finished
MAX_GROUP_MODELS = 64         # models per group at most (more are split into several groups)
# fp32 weights and activations, but matrix products on TF32 tensor cores (Ampere and newer):
# at 40 models a step is ~0.5 TFLOP of batched matmuls, compute- rather than launch-bound.
# TF32 is also what PyTorch lets cuDNN use by default (torch.backends.cudnn.allow_tf32), and
# the benchmark checks quality against the plain loop. The setting is restored afterwards.
TF32_MATMUL = True
# Device types on which a run's first group is checked against the plain loop before it
# trains (v3_fast_check): every GPU, until the fast engine has a record on them; the CPU runs
# the same kernels as the CPU tests check, so it is not checked again (tests switch it on).
CHECK_DEVICES = ("cuda",)


class _Disagreement(Exception):
    """The first group's check found the engines apart; the message says how."""


def _group_jobs(jobs: list, cfg, device: torch.device) -> list[list]:
    """Jobs with the same model config and window share a group, up to a size that fits in
    half the free GPU memory."""
    by_key: dict = {}
    for job in jobs:
        by_key.setdefault((job.model_config, int(job.data.seq_len)), []).append(job)
    size = MAX_GROUP_MODELS
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        mc, T = jobs[0].model_config, int(jobs[0].data.seq_len)
        nd = 2 if mc.bidirectional else 1
        n_params = sum(p.numel() for p in V3LSTMModel(mc).parameters())
        # a step keeps ~20 floats per (layer, direction, time step, sample, hidden unit)
        # for the backward; weights, gradients, AdamW moments and best weights ~8 copies,
        # and the copy of the last finished epoch's (TrainGroup.keep_state) 4 more
        per_model = 4 * (20 * mc.hidden_size * nd * mc.num_layers * T * cfg.batch_size
                         + 12 * n_params)
        size = max(1, min(size, int(0.5 * free) // per_model))
    return [g[i:i + size] for g in by_key.values() for i in range(0, len(g), size)]


def train_jobs_fast(jobs: list[TrainJob], cfg: TrainConfig, *, device: torch.device,
                    show_progress: bool = True, on_done: Callable | None = None,
                    on_error: Callable | None = None,
                    fallback: Callable[[list, str], dict] | None = None,
                    on_epoch: Callable[[int, int], object] | None = None) -> dict:
    """Train `jobs` in groups; same contract as v3_engine.train_jobs (which calls this):
    `on_done(job, outcome)` as each model finishes, a V3Error from one job goes to
    `on_error` and the others go on. Returns {job.key: outcome} for the jobs that finished.

    If a group fails inside torch (a RuntimeError such as CUDA out of memory), its
    unfinished jobs go to `fallback(jobs, reason)` (the plain loop), with a warning saying
    why. On a device in CHECK_DEVICES (every GPU) the first group to train is first checked
    against the plain loop (v3_fast_check); if they disagree, every job not yet finished
    goes to `fallback`, with the reason. A RuntimeError from on_done, on_error or a
    checkpoint_fn is not such a failure: it reaches the caller, as it does from the plain
    loop. `on_epoch(epoch, training)` after each epoch
    of a group: the epoch its slowest model has finished, and how many are still training
    (bench/bench_gpu_training.py prints its progress with it)."""
    out: dict = {}
    ok = []
    for job in jobs:  # a pair whose data does not fit its model fails alone, before any work
        K, k = job.model_config.input_size, job.data.features.shape[1]
        if k != K or job.model_config.output_size != 1:
            e = ConfigError(f"{job.key}: the data has {k} features per candle, the model "
                            f"expects {K} (and one output, has {job.model_config.output_size}); "
                            f"preprocess the pair again (step 3) with the model's input_size.")
            if on_error is None:
                raise e
            on_error(job, e)
        else:
            ok.append(job)
    jobs = ok
    if not jobs:
        return out
    groups = _group_jobs(jobs, cfg, device)
    use_graph = device.type == "cuda"
    log.info("fast engine: %d models in %d group(s) on %s (fp32%s)", len(jobs), len(groups),
             device, ", TF32 matmuls, CUDA graphs" if use_graph and TF32_MATMUL else
             ", CUDA graphs" if use_graph else "")
    precision = torch.get_float32_matmul_precision()
    if device.type == "cuda" and TF32_MATMUL:
        torch.set_float32_matmul_precision("high")
    # 'cuda:N' need not be the current device: graph capture, replay, synchronize and
    # empty_cache act on the current one, so make it the training device for the duration
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with on_device:
            left = _train_groups(groups, cfg, device, use_graph=use_graph,
                                 show_progress=show_progress, on_done=on_done,
                                 on_error=on_error, out=out, can_fall_back=fallback is not None,
                                 on_epoch=on_epoch, check=device.type in CHECK_DEVICES)
    finally:
        torch.set_float32_matmul_precision(precision)
    for left_jobs, reason in left:
        out.update(fallback(left_jobs, reason))
    return out


def _train_groups(groups, cfg, device, *, use_graph, show_progress, on_done, on_error, out,
                  can_fall_back: bool, on_epoch=None, check: bool = False) -> list:
    """Train each group; returns (jobs, reason) for what is left to the plain loop: the
    unfinished jobs of a group that failed inside torch, or, when the first group to train
    disagreed with the plain loop (`check`), every job not yet finished."""
    left_all, guard = [], {"pending": check and can_fall_back}
    for gi, group_jobs in enumerate(groups, 1):
        label = f"fast engine, group {gi}/{len(groups)}" if len(groups) > 1 else "fast engine"
        group = None
        try:
            group = TrainGroup(group_jobs, cfg, device, use_graph=use_graph, label=label)
            _run_group(group, cfg, show_progress=show_progress, on_done=on_done,
                       on_error=on_error, out=out, on_epoch=on_epoch, guard=guard)
        except V3Error as e:
            if group is not None or on_error is None:  # from on_done/on_error: not ours to catch
                raise
            for job in group_jobs:
                on_error(job, e)
        except (RuntimeError, _Disagreement) as e:
            if isinstance(e, RuntimeError) and (not can_fall_back or
                                                getattr(e, "v3_from_callback", False)):
                raise
            left = [j for j in group_jobs if j.key not in out and
                    (group is None or any(s.job is j and not s.finished for s in group.slots))]
            del group
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if isinstance(e, _Disagreement):
                left += [j for later in groups[gi:] for j in later]
                log.warning("%s: %s; training all %d unfinished models with the plain loop "
                            "(the results say so: engine, engine_fallback_reason). Please "
                            "report it with the GPU's name.", label, e, len(left))
                return left_all + [(left, str(e))]
            reason = f"fast engine failed ({type(e).__name__}: {str(e)[:300]})"
            log.warning("%s failed (%s: %s); training its %d unfinished models with the plain "
                        "loop", label, type(e).__name__, str(e)[:300], len(left))
            left_all.append((left, reason))
    return left_all


def _callback(fn: Callable, *args):
    """Call one of the caller's functions (on_done, on_error, checkpoint_fn). Its RuntimeError
    is the caller's to see, as the plain loop lets it through; the mark keeps _train_groups
    from taking it for a failure inside torch and retraining the group with the plain loop."""
    try:
        return fn(*args)
    except RuntimeError as e:
        e.v3_from_callback = True
        raise


def _finish(group: TrainGroup, ms: list[int], *, on_done, on_error, out: dict) -> None:
    """Hand the finished slots `ms` over: their final checkpoint, on_done, and `out`."""
    if not ms:
        return
    cpu = group.cpu_blocks(ms)
    for m in ms:
        job = group.slots[m].job
        outcome = group.outcome(m, cpu)
        try:
            if job.checkpoint_fn:
                _callback(job.checkpoint_fn, outcome.resume_state)
            if on_done:
                _callback(on_done, job, outcome)
            out[job.key] = outcome
        except V3Error as e:
            if on_error is None:
                raise
            _callback(on_error, job, e)


def _save_running(group: TrainGroup) -> None:
    """The resume state of every unfinished slot that has a checkpoint_fn (group.saved: the
    state after the epoch just finished). One that cannot be saved (a StorageError: a full
    disk, no permission) is logged and its model trains on: its final save, in _finish,
    fails that pair alone, as the plain loop does."""
    state = group.saved
    ms = [m for m, s in enumerate(state.slots) if not s.finished and s.job.checkpoint_fn]
    if ms:
        cpu = group.cpu_blocks(ms, state)
        for m in ms:
            try:
                _callback(state.slots[m].job.checkpoint_fn, group.resume_state(m, cpu, state))
            except StorageError as e:
                log.warning("%s: its training state was not saved: %s", state.slots[m].job.desc,
                            " ".join(str(e).split()))


def _save_interrupted(group: TrainGroup, out: dict) -> None:
    """On KeyboardInterrupt: save the state after the last finished epoch (group.saved,
    never the half-trained one) of the models that trained an epoch in this run and are
    not yet handed over (in `out`), so a resumed run repeats the interrupted epoch from its
    start; a model that had just finished resumes finished."""
    state = group.saved
    if state is None:
        return
    ms = [m for m, s in enumerate(state.slots) if s.job.key not in out and s.job.checkpoint_fn
          and s.record.epoch > s.record.start_epoch]
    cpu = group.cpu_blocks(ms, state) if ms else {}
    for m in ms:
        s = state.slots[m]
        _callback(s.job.checkpoint_fn, group.resume_state(m, cpu, state))
        log_interrupted(s.job.desc, s.record.epoch)


def _run_group(group: TrainGroup, cfg, *, show_progress: bool, on_done, on_error, out: dict,
               on_epoch=None, guard: dict | None = None) -> None:
    """Train the group to the end. guard["pending"]: check it against the plain loop first
    (v3_fast_check), and raise _Disagreement when they disagree."""
    last_save = time.monotonic()
    save_every_s = cfg.checkpoint_every_s
    first = min(s.record.epoch for s in group.slots)
    bar = progress(total=max(0, cfg.epochs - first), enabled=show_progress, unit="epoch",
                   desc=f"train {len(group.slots)} models (fast)")
    try:
        for s in group.slots:  # resumed jobs that have nothing left to train
            if s.record.finished(cfg.epochs):
                s.finished = True
        _finish(group, [m for m, s in enumerate(group.slots) if s.finished],
                on_done=on_done, on_error=on_error, out=out)
        if guard and guard["pending"] and any(not s.finished for s in group.slots):
            guard["pending"] = False
            reason = check_against_plain_loop(group, cfg)
            if reason:
                raise _Disagreement(reason)
        while any(not s.finished for s in group.slots):
            if group.idle_fraction() >= REPACK_IDLE_FRACTION:
                group.repack()
            before = min(s.record.epoch for s in group.slots if not s.finished)
            done = group.run_epoch()
            _finish(group, done, on_done=on_done, on_error=on_error, out=out)
            live = [s for s in group.slots if not s.finished]
            bar.update(min((s.record.epoch for s in live), default=cfg.epochs) - before)
            vals = [s.record.history[-1]["val_loss"] for s in group.slots if s.record.history]
            bar.set_postfix(training=len(live), val=f"{np.mean(vals):.4f}" if vals else "-")
            if on_epoch:
                _callback(on_epoch, min((s.record.epoch for s in live), default=cfg.epochs), len(live))
            if live and time.monotonic() - last_save >= save_every_s:
                t_save = time.monotonic()
                _save_running(group)
                last_save = time.monotonic()
                # saving M models' states at once can be slow (disk): keep that under ~10 %
                # of the time (0 means after every epoch, as in train_model)
                if cfg.checkpoint_every_s > 0:
                    save_every_s = max(cfg.checkpoint_every_s, 10 * (last_save - t_save))
    except KeyboardInterrupt:
        _save_interrupted(group, out)
        raise
    finally:
        bar.close()
