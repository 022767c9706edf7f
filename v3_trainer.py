"""Step 4's engine: train one V3 model with early stopping, and save/load checkpoints.

The same lines run on CPU and GPU: the whole dataset of a pair sits on the device and batches
are gathered there (no DataLoader), losses are summed on the device and read once per epoch,
autocast is a null context on CPU and the grad scaler a no-op unless fp16. AdamW, cosine
annealing with warm restarts (stepped per batch, by fractional epoch), gradient accumulation,
gradient clipping at 1.0 (after unscaling), and early stopping that restores the best weights.
Every epoch is seeded by (seed, epoch), so a run resumed from its last state repeats exactly
what an uninterrupted run would have done.

With a quantile head (ModelConfig.quantiles, on by default) the loss of a batch is
MSE(point) + quantile_weight * mean pinball loss of the quantiles (the pinball loss in the
head's unit, ModelConfig.quantile_scale: PreparedData.quantile_target). Early stopping
watches, and keeps the best epoch of, the validation value of the loss the model is trained
on (TrainConfig.stop_on "loss", the default: v3_train_state.stop_loss), or of the pinball loss alone
("pinball"), or of the point MSE alone ("mse", what V3 did before: the point forecast has no
skill, so that stopped at random). `best_val_loss` is the best such value; each history
entry records the point head's `val_loss` (MSE), `train_pinball`, `val_pinball` and
`val_stop` (the value early stopping compared). `predict_quantiles_standardized` gives the
quantiles back on the standardised target, for every scale.

Saving and loading model and resume files (and `LoadedModel`) is v3_checkpoint's job,
beside this module.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from v3_common import ConfigError, log, progress
from v3_data_processor import PreparedData
from v3_lstm_model import ModelConfig, V3LSTMModel, quantile_pinball
from v3_train_state import STOP_ON, RunRecord, cpu_copy, log_interrupted


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    grad_accum_steps: int = 2       # optimizer step every N batches (effective batch N x B)
    grad_clip: float = 1.0          # max gradient norm
    patience: int = 15              # epochs without a better validation loss before stopping
    min_delta: float = 0.0          # improvement smaller than this does not count
    early_stopping: bool = True
    scheduler_t0: int = 10          # epochs in the first cosine cycle
    scheduler_t_mult: int = 2       # each cycle this many times longer
    eta_min: float = 1e-6
    seed: int = 42
    device: str = "auto"            # 'auto', 'cpu', 'cuda' or 'cuda:N'
    amp: str = "auto"               # 'auto' (fp32, see amp_dtype), 'fp16', 'bf16', 'off'
    engine: str = "auto"            # 'auto' (fast on CUDA, plain on CPU), 'fast', 'plain'
    eval_batch_size: int = 1024
    checkpoint_every_s: float = 30.0  # how often the resume state is written during training
    threads: int | None = None      # torch CPU threads; None: V3_THREADS, else resolve_threads'
    stop_on: str = "loss"           # early stopping's validation loss: 'loss' (MSE +
                                    # quantile_weight x pinball, as trained), 'pinball', 'mse'

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError for settings that cannot work, before any heavy work."""
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {cfg.epochs!r} "
                          f"(the guide uses 100; try 5 for a quick test).")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {cfg.batch_size!r} "
                          f"(the guide uses 32).")
    if not cfg.learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {cfg.learning_rate!r} "
                          f"(the guide uses 0.001).")
    if cfg.grad_accum_steps < 1:
        raise ConfigError(f"grad_accum_steps must be >= 1, got {cfg.grad_accum_steps}.")
    if cfg.amp not in ("auto", "fp16", "bf16", "off"):
        raise ConfigError(f"amp must be 'auto', 'fp16', 'bf16' or 'off', got {cfg.amp!r}.")
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got "
                          f"{cfg.engine!r} ('auto' picks the fast engine on a GPU).")
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                    or cfg.threads < 1):
        raise ConfigError(f"threads must be an integer >= 1 or None (automatic), got "
                          f"{cfg.threads!r} (--threads or V3_THREADS).")
    if cfg.stop_on not in STOP_ON:
        raise ConfigError(f"stop_on must be one of {', '.join(map(repr, STOP_ON))}, got "
                          f"{cfg.stop_on!r} (early stopping's validation loss: 'loss' = the "
                          f"loss the model is trained on, the default).")
    if cfg.engine == "fast" and cfg.amp in ("fp16", "bf16"):
        raise ConfigError(f"engine 'fast' trains in fp32, but amp={cfg.amp!r} was asked for. "
                          f"Use amp='auto' (fp32), or engine='plain' (--engine plain) for "
                          f"mixed precision.")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device torch knows: use 'auto', 'cpu', "
                          f"'cuda' or 'cuda:N' (--device).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here. "
                          f"Use --device cpu, or in Colab switch the runtime to a GPU.")
    return dev


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. CPU always trains in fp32.

    'auto' is fp32 on every device. This model is launch-bound (batch 32, hidden 128: a step
    is thousands of tiny kernels), so autocast only adds cast kernels: on an H200 a bf16
    autocast step took 12.6 ms against 8.0 ms in fp32 (measured on an H200), and fp32 is
    what the fast engine runs. 'fp16' and 'bf16' stay available to the plain engine; bf16
    needs compute capability 8.0 (Ampere) or newer, so on a T4 (7.5) or V100 (7.0) 'bf16'
    falls back to fp16 with a warning."""
    if device.type != "cuda" or cfg.amp in ("auto", "off"):
        return None
    if cfg.amp == "bf16":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return torch.bfloat16
        log.warning("amp='bf16' asked for, but %s (compute capability %d.%d) has no bf16; "
                    "using fp16", torch.cuda.get_device_name(device), major, minor)
    return torch.float16


ENGINES = ("auto", "fast", "plain")
THREADS_ENV = "V3_THREADS"


def default_threads(cores: int | None = None) -> int:
    """Torch CPU threads when neither TrainConfig.threads nor V3_THREADS says: half the
    cores, at least 1 and at most 4. Measured with bench/bench_threads.py (bench/README.md):
    on 2 cores, 2 threads are 1.4x faster than 1 while the machine is idle, but 3x (demo
    model) to 11x (guide's model) slower while other processes keep the cores busy, so a
    2-core machine (Colab's CPU runtime) trains with 1."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


def resolve_threads(threads: int | None) -> int:
    """The torch CPU thread count for training: `threads` when given, else the environment
    variable V3_THREADS, else default_threads(). ConfigError for a bad V3_THREADS."""
    if threads is not None:
        return int(threads)
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{THREADS_ENV}={env!r} is not a thread count: set it to an "
                              f"integer >= 1, or unset it for the automatic choice.")
        return n
    return default_threads()


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device):
    """On the CPU, train with torch.set_num_threads(resolve_threads(threads)) inside the
    `with` block and put the process's own count back after it, so V3 never leaves torch's
    thread count changed for the code that called it (a notebook, a test). Logs the count
    when it changes it. Yields the count (None on a GPU, where the CPU only launches
    kernels). The pipeline holds one block over all of step 4 (training, walk-forward and
    re-scoring), so every number of a run is computed with the same count."""
    if device.type != "cpu":
        yield None
        return
    n = resolve_threads(threads)
    before = torch.get_num_threads()
    if before != n:
        if threads is not None:
            how = "TrainConfig.threads"
        elif os.environ.get(THREADS_ENV, "").strip():
            how = THREADS_ENV
        else:
            how = f"automatic for {os.cpu_count()} cores; --threads or {THREADS_ENV} to change"
        torch.set_num_threads(n)
        log.info("torch CPU threads: %d (%s)", n, how)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class TrainOutcome:
    best_state: dict                # weights with the best validation loss (on CPU)
    best_val_loss: float
    best_epoch: int                 # 1-based
    epochs_done: int                # epochs trained in total (this run and earlier ones)
    stopped_early: bool
    history: list = field(default_factory=list)  # one dict per epoch
    resume_state: dict = field(default_factory=dict)  # everything needed to continue
    seconds: float = 0.0            # training wall time, over this run and the ones it resumes
    engine: str = "plain"           # 'plain', 'fast-graph' (CUDA graphs) or 'fast-eager'
    engine_fallback_reason: str | None = None  # why the plain loop trained it instead of 'fast'


@dataclass
class TrainJob:
    """One pair to train: its data, model config and (optionally) the state to resume."""
    key: str                        # 'BTCUSDT_15m'
    symbol: str
    interval: str
    data: PreparedData
    model_config: ModelConfig
    resume: dict | None = None
    checkpoint_fn: Callable[[dict], None] | None = None
    desc: str = "train"


def _batch_windows(features: torch.Tensor, ends: torch.Tensor, offsets: torch.Tensor):
    return features[ends[:, None] + offsets[None, :]]  # (B, T, K)


def _cpu_state(module_or_dict) -> dict:
    sd = module_or_dict.state_dict() if hasattr(module_or_dict, "state_dict") else module_or_dict
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


@dataclass
class _PlainRun:
    """One train_model call: the model, its optimiser, and its RunRecord (v3_train_state)."""
    cfg: TrainConfig
    model: V3LSTMModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    scaler: torch.amp.GradScaler
    autocast: Callable
    q_weight: float
    record: RunRecord
    best_state: dict | None = None


@dataclass
class _OnDevice:
    """A pair's samples on the training device: features, window offsets, train/val splits."""
    feats: torch.Tensor             # (R, K)
    offsets: torch.Tensor           # (T,)
    train_ends: torch.Tensor
    train_y: torch.Tensor
    val_ends: torch.Tensor
    val_y: torch.Tensor
    train_yq: torch.Tensor          # what the quantile head learns (PreparedData.quantile_target)
    val_yq: torch.Tensor


def _set_up_run(model_cfg: ModelConfig, cfg: TrainConfig, device: torch.device,
                resume: dict | None) -> _PlainRun:
    """A fresh model, AdamW, the scheduler and the grad scaler, or all of them (and the
    run's record) as `resume` left them."""
    dtype = amp_dtype(cfg, device)
    torch.manual_seed(cfg.seed)
    model = V3LSTMModel(model_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=cfg.scheduler_t0, T_mult=cfg.scheduler_t_mult, eta_min=cfg.eta_min)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    run = _PlainRun(cfg=cfg, model=model, opt=opt, sched=sched, scaler=scaler, autocast=autocast,
                    q_weight=float(model_cfg.quantile_weight), record=RunRecord.from_resume(resume))
    if resume:
        model.load_state_dict(resume["model_state"])
        opt.load_state_dict(resume["optimizer_state"])
        sched.load_state_dict(resume["scheduler_state"])
        if resume.get("scaler_state"):
            scaler.load_state_dict(resume["scaler_state"])
        run.best_state = resume["best_state"]
    model.lstm.flatten_parameters()
    return run


def _on_device(data: PreparedData, device: torch.device, quantile_scale: str) -> _OnDevice:
    ends = torch.as_tensor(data.ends, device=device)                       # (N,)
    target = torch.as_tensor(data.target, device=device)                   # (N,)
    yq = torch.as_tensor(data.quantile_target(quantile_scale), device=device)
    tr, va = data.split("train"), data.split("val")
    return _OnDevice(feats=torch.as_tensor(data.features, device=device),
                     offsets=torch.arange(-(data.seq_len - 1), 1, device=device),
                     train_ends=ends[tr], train_y=target[tr], val_ends=ends[va], val_y=target[va],
                     train_yq=yq[tr], val_yq=yq[va])


def _batch_loss(run: _PlainRun, d: _OnDevice, b: torch.Tensor):
    """(loss, MSE, pinball or None) of the training samples `b`: the loss is what backward
    sees, MSE + quantile_weight x pinball with a quantile head."""
    model = run.model
    x = _batch_windows(d.feats, d.train_ends[b], d.offsets)  # (B, T, K)
    with run.autocast():
        if model.has_quantiles:
            pred, q = model.forward_with_quantiles(x)
            mse = nn.functional.mse_loss(pred.float(), d.train_y[b])
            pin = quantile_pinball(q.float(), d.train_yq[b], model.quantile_levels).mean()
            return mse + run.q_weight * pin, mse, pin
        mse = nn.functional.mse_loss(model(x).float(), d.train_y[b])
    return mse, mse, None


def _train_epoch(run: _PlainRun, d: _OnDevice, ep: int, *,
                 max_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch over the shuffled training samples (seeded by (seed, epoch)), or its first
    `max_batches` batches; returns the summed MSE and pinball loss, still on the device."""
    cfg, model, opt, scaler = run.cfg, run.model, run.opt, run.scaler
    device = d.feats.device
    n_train = len(d.train_ends)
    n_batches = (n_train + cfg.batch_size - 1) // cfg.batch_size
    torch.manual_seed(RunRecord.epoch_seed(cfg.seed, ep))  # dropout and shuffle: (seed, epoch)
    model.train()
    perm = torch.randperm(n_train, device="cpu").to(device)
    loss_sum = torch.zeros((), device=device)
    pin_sum = torch.zeros((), device=device)
    opt.zero_grad(set_to_none=True)
    for i in range(n_batches if max_batches is None else min(n_batches, max_batches)):
        b = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        loss, mse, pin = _batch_loss(run, d, b)
        scaler.scale(loss / cfg.grad_accum_steps).backward()
        loss_sum += mse.detach() * len(b)
        if pin is not None:
            pin_sum += pin.detach() * len(b)
        if (i + 1) % cfg.grad_accum_steps == 0 or i + 1 == n_batches:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        run.sched.step(ep + (i + 1) / n_batches)
    return loss_sum, pin_sum


def _end_epoch(run: _PlainRun, d: _OnDevice, loss_sum: torch.Tensor, pin_sum: torch.Tensor,
               bar, desc: str) -> bool:
    """Validate, record the epoch (history, early stopping: RunRecord.end_epoch) and keep
    the best weights; True when early stopping ends the training."""
    cfg, model, rec = run.cfg, run.model, run.record
    val_loss, val_pin = _mse(model, d.feats, d.val_ends, d.val_y, d.offsets,
                             cfg.eval_batch_size, run.autocast, with_pinball=True, yq=d.val_yq)
    n_train = len(d.train_ends)
    train_loss = float(loss_sum) / n_train  # one host sync per epoch
    if rec.end_epoch(cfg, train_loss=train_loss, val_loss=val_loss,
                     lr=run.opt.param_groups[0]["lr"], q_weight=run.q_weight,
                     with_quantiles=model.has_quantiles, train_pinball=float(pin_sum) / n_train,
                     val_pinball=val_pin, desc=desc):
        run.best_state = _cpu_state(model)
    bar.set_postfix(train=f"{train_loss:.4f}", val=f"{rec.history[-1]['val_stop']:.4f}",
                    best=f"{rec.best_val:.4f}@{rec.best_epoch}")
    return rec.stopped_early


def _resume_state(run: _PlainRun) -> dict:
    """Everything needed to continue the run (RESUME_FORMAT), copied to the CPU: later
    steps do not change it, so train_model keeps the one of the last finished epoch."""
    model, scaler = run.model, run.scaler
    return run.record.resume_dict(
        run.cfg, model_state=_cpu_state(model), optimizer_state=cpu_copy(run.opt.state_dict()),
        scheduler_state=cpu_copy(run.sched.state_dict()),
        scaler_state=cpu_copy(scaler.state_dict()) if scaler.is_enabled() else {},
        best_state=run.best_state if run.best_state is not None else _cpu_state(model))


def train_model(data: PreparedData, model_cfg: ModelConfig, cfg: TrainConfig, *,
                resume: dict | None = None, desc: str = "train", show_progress: bool = True,
                checkpoint_fn: Callable[[dict], None] | None = None) -> TrainOutcome:
    """Train one model on `data`'s train split, early-stopping on its validation split.

    `resume` is a previous outcome's `resume_state`: training continues from its last epoch
    (weights, optimizer and scheduler state) up to `cfg.epochs`. `checkpoint_fn(resume_state)`
    is called every `cfg.checkpoint_every_s` seconds, at the end, and on KeyboardInterrupt.
    An interrupt saves the state after the last finished epoch (kept on the CPU after every
    epoch), never the half-trained one, so the resumed run repeats the interrupted epoch from
    its start and ends exactly as an uninterrupted run would.
    """
    check_train_config(cfg)
    device = resolve_device(cfg.device)
    run = _set_up_run(model_cfg, cfg, device, resume)
    d = _on_device(data, device, model_cfg.quantile_scale)
    rec = run.record
    rec.t_start = last_save = time.monotonic()
    end = rec.start_epoch if rec.finished(cfg.epochs) else cfg.epochs   # stopped early: none
    bar = progress(range(rec.start_epoch, end), enabled=show_progress, desc=desc,
                   unit="epoch", total=cfg.epochs, initial=rec.start_epoch)
    saved = None                    # the resume state after the last epoch this run finished
    try:
        for ep in bar:
            loss_sum, pin_sum = _train_epoch(run, d, ep)
            stop = _end_epoch(run, d, loss_sum, pin_sum, bar, desc)
            saved = _resume_state(run)
            if stop:
                break
            if checkpoint_fn and time.monotonic() - last_save >= cfg.checkpoint_every_s:
                checkpoint_fn(dict(saved))
                last_save = time.monotonic()
    except KeyboardInterrupt:
        if checkpoint_fn and saved is not None:
            checkpoint_fn(dict(saved))
            log_interrupted(desc, saved["epoch"])
        raise
    finally:
        bar.close()
    final = _resume_state(run)
    if checkpoint_fn:
        checkpoint_fn(final)
    return TrainOutcome(best_state=final["best_state"], best_val_loss=rec.best_val,
                        best_epoch=rec.best_epoch, epochs_done=rec.epoch,
                        stopped_early=rec.stopped_early, history=rec.history,
                        resume_state=final, seconds=final["train_seconds"])


@dataclass
class PlainTrial:
    """What the plain loop computes in plain_trial: the fast engine's first group is checked
    against it (v3_fast_train.check_against_plain_loop)."""
    train_mse_sum: float            # squared errors summed over the trial's training samples
    train_pinball_sum: float        # mean pinball per sample, summed the same way (0 without)
    val_mse: float                  # after the trial's optimizer step
    val_pinball: float | None
    model_state: dict               # the weights after that step (CPU)
    exp_avg: dict                   # AdamW's first moment by parameter name (CPU)


def plain_trial(data: PreparedData, model_cfg: ModelConfig, cfg: TrainConfig, *,
                resume: dict | None, batches: int, device: torch.device) -> PlainTrial:
    """The plain loop's first `batches` batches of the epoch after `resume` (None: a fresh
    model), then one validation pass, exactly as train_model runs them (same seeds, shuffle,
    accumulation, clipping and AdamW); dropout as model_cfg says."""
    run = _set_up_run(model_cfg, cfg, device, resume)
    d = _on_device(data, device, model_cfg.quantile_scale)
    loss_sum, pin_sum = _train_epoch(run, d, run.record.epoch, max_batches=batches)
    val, val_pin = _mse(run.model, d.feats, d.val_ends, d.val_y, d.offsets, cfg.eval_batch_size,
                        run.autocast, with_pinball=True, yq=d.val_yq)
    exp_avg = {n: run.opt.state[p]["exp_avg"].detach().to("cpu", copy=True)
               for n, p in run.model.named_parameters() if p in run.opt.state}
    return PlainTrial(train_mse_sum=float(loss_sum), train_pinball_sum=float(pin_sum),
                      val_mse=val, val_pinball=val_pin, model_state=_cpu_state(run.model),
                      exp_avg=exp_avg)


@torch.no_grad()
def _mse(model, feats, ends, y, offsets, batch, autocast, *, with_pinball: bool = False,
         yq=None):
    """The validation loss the trainer reports: the point forecast's MSE over the samples
    `ends`. with_pinball=True: (that MSE, the mean pinball loss of the quantiles against `yq`
    (default y) or None without a quantile head), in the same pass and one host sync."""
    yq = y if yq is None else yq
    model.eval()
    with_q = with_pinball and getattr(model, "has_quantiles", False)
    total = torch.zeros((), device=feats.device)
    pin = torch.zeros((), device=feats.device)
    for i in range(0, len(ends), batch):
        x = _batch_windows(feats, ends[i:i + batch], offsets)
        with autocast():
            if with_q:
                p, q = model.forward_with_quantiles(x)
                pin += quantile_pinball(q.float(), yq[i:i + batch], model.quantile_levels).mean(-1).sum()
            else:
                p = model(x)
        total += ((p.float() - y[i:i + batch]) ** 2).sum()
    n = max(1, len(ends))
    if not with_q:
        return (float(total) / n, None) if with_pinball else float(total) / n
    total, pin = torch.stack([total, pin]).tolist()
    return (total / n, pin / n) if with_pinball else total / n


class _ConstantForecast(nn.Module):
    """A "model" that predicts the same standardised return for every window."""

    def __init__(self, value: float):
        super().__init__()
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.value, dtype=torch.float32, device=x.device)


def mean_forecast_val_loss(data: PreparedData, *, eval_batch_size: int = 1024) -> float:
    """The validation loss of always predicting the training split's mean target: the same
    loss, samples and summation as the val_loss / best_val_loss the trainer reports, so a
    model is better than that reference exactly when its loss is lower. (Targets are
    standardised with the training returns, so the mean is ~0 and the reference is the
    validation targets' mean square, which is not 1.0 when validation is calmer or wilder
    than training.)"""
    tr, va = data.split("train"), data.split("val")
    mean = float(np.float32(np.mean(np.asarray(data.target[tr], np.float64))))
    feats = torch.as_tensor(data.features)
    ends = torch.as_tensor(data.ends[va])
    y = torch.as_tensor(data.target[va])
    offsets = torch.arange(-(data.seq_len - 1), 1)
    return _mse(_ConstantForecast(mean), feats, ends, y, offsets, eval_batch_size,
                contextlib.nullcontext)


@torch.no_grad()
def predict_standardized(model: V3LSTMModel, data: PreparedData, idx, *, batch: int = 1024,
                         device: torch.device | str = "cpu") -> np.ndarray:
    """Model outputs (standardised log returns) for the samples `idx`, in fp32."""
    model = model.to(device).eval()
    feats = torch.as_tensor(data.features, device=device)
    ends = torch.as_tensor(data.ends[idx], device=device)
    offsets = torch.arange(-(data.seq_len - 1), 1, device=device)
    out = [model(_batch_windows(feats, ends[i:i + batch], offsets)).float().cpu()
           for i in range(0, len(ends), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


@torch.no_grad()
def predict_quantiles_standardized(model: V3LSTMModel, data: PreparedData, idx, *,
                                   batch: int = 1024,
                                   device: torch.device | str = "cpu") -> np.ndarray | None:
    """The quantile head's outputs (len(idx), Q) for the samples `idx`, in fp32 and in
    standardised target units (v3_intervals.standardized_to_returns maps them to log
    returns), at the levels model.config.quantiles; None when the model has no head. With
    quantile_scale 'ewma' or 'har' the head's outputs are multiplied by the samples' unit
    (PreparedData.unit)."""
    if not model.has_quantiles:
        return None
    model = model.to(device).eval()
    feats = torch.as_tensor(data.features, device=device)
    ends = torch.as_tensor(data.ends[idx], device=device)
    offsets = torch.arange(-(data.seq_len - 1), 1, device=device)
    out = [model.forward_with_quantiles(_batch_windows(feats, ends[i:i + batch], offsets))[1]
           .float().cpu() for i in range(0, len(ends), batch)]
    n_q = len(model.config.quantiles)
    z = torch.cat(out).numpy() if out else np.zeros((0, n_q), np.float32)
    if model.config.quantile_scale != "none":
        z = z * data.unit(model.config.quantile_scale)[idx][:, None]
    return z
