"""One training run's bookkeeping, the same for both engines: `RunRecord`.

A run's record is what is not a tensor: the epochs done, the best validation value and its
epoch, the epochs since then, whether early stopping ended it, the history (one dict per
epoch) and the training time of the runs it resumes. v3_trainer.train_model keeps one per
model, v3_fast_group.TrainGroup one per slot of its group; both read it from a resume state
(`from_resume`), record every epoch with `end_epoch` (the history entry and the early-stopping
update, on `val_stop`: `stop_loss`), seed every epoch with `epoch_seed`, and write the resume
state (v3_checkpoint.RESUME_FORMAT) with `resume_dict`. The engines differ only in how they
compute a step; everything written here is theirs in common.

`cpu_copy` copies a state (a state_dict, an optimizer's state_dict: nested dicts and lists of
tensors) to the CPU, so a run can keep the state of its last finished epoch while it goes on.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from v3_checkpoint import RESUME_FORMAT
from v3_common import log

STOP_ON = ("loss", "pinball", "mse")
EPOCH_SEED_STRIDE = 100_003   # epoch ep of seed s is seeded s * stride + ep


def stop_loss(stop_on: str, mse: float, pinball: float | None, quantile_weight: float) -> float:
    """The validation value early stopping compares (TrainConfig.stop_on): the trained loss
    MSE + quantile_weight x pinball ('loss'), the pinball alone ('pinball') or the MSE
    ('mse'). Without a quantile head (pinball None) every choice is the MSE."""
    if pinball is None or stop_on == "mse":
        return float(mse)
    if stop_on == "pinball":
        return float(pinball)
    return float(mse) + float(quantile_weight) * float(pinball)


def cpu_copy(obj):
    """`obj` with every tensor in it (nested dicts, lists, tuples) copied to the CPU; other
    values as they are. A copy, also on the CPU: later in-place updates do not reach it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def log_interrupted(desc: str, epoch: int) -> None:
    """The warning both engines give when a KeyboardInterrupt saved a model's state."""
    log.warning("%s: interrupted after epoch %d; its state is saved, re-run to resume (from "
                "the start of epoch %d)", desc, epoch, epoch + 1)


@dataclass
class RunRecord:
    """The bookkeeping of one model's training run (both engines). `cfg` arguments are the
    run's v3_trainer.TrainConfig."""
    start_epoch: int = 0            # epochs done when this run started (its resume state's)
    epoch: int = 0                  # epochs done, over this run and the ones it resumes
    best_val: float = math.inf      # best val_stop so far
    best_epoch: int = 0             # 1-based; 0 before the first epoch
    bad: int = 0                    # epochs since the best one
    stopped_early: bool = False
    history: list = field(default_factory=list)   # one dict per epoch
    seconds_before: float = 0.0     # training time of the runs this one resumes
    t_start: float = 0.0            # time.monotonic() when this run started

    @classmethod
    def from_resume(cls, resume: dict | None, *, t_start: float = 0.0) -> "RunRecord":
        """A fresh record (resume None), or the one a resume state (resume_dict) left. A run
        that stopped early stays stopped: resuming it trains nothing more (the state of a
        model interrupted while it was handed over, before its state was marked complete)."""
        if not resume:
            return cls(t_start=t_start)
        epoch = int(resume["epoch"])
        return cls(start_epoch=epoch, epoch=epoch, best_val=float(resume["best_val_loss"]),
                   best_epoch=int(resume["best_epoch"]), bad=int(resume.get("bad_epochs", 0)),
                   stopped_early=bool(resume.get("stopped_early", False)),
                   history=list(resume.get("history", [])),
                   seconds_before=float(resume.get("train_seconds", 0.0)), t_start=t_start)

    @staticmethod
    def epoch_seed(seed: int, ep: int) -> int:
        """The torch seed of epoch `ep` (0-based): its shuffle and dropout depend on (seed,
        epoch) only, so a resumed run repeats an uninterrupted one."""
        return seed * EPOCH_SEED_STRIDE + ep

    def copy(self) -> "RunRecord":
        """A copy that later epochs do not change (the history list is its own)."""
        return dataclasses.replace(self, history=list(self.history))

    def end_epoch(self, cfg, *, train_loss: float, val_loss: float, lr: float,
                  q_weight: float, with_quantiles: bool, train_pinball: float | None = None,
                  val_pinball: float | None = None, desc: str = "train") -> bool:
        """Record the epoch just trained (epoch + 1): its history entry (with `val_stop`, the
        value early stopping compares) and the early-stopping update. True when it is the
        best epoch so far (the caller keeps its weights)."""
        self.epoch += 1
        entry = {"epoch": self.epoch, "train_loss": float(train_loss), "val_loss": float(val_loss),
                 "lr": float(lr)}
        if with_quantiles:
            entry.update(train_pinball=float(train_pinball), val_pinball=float(val_pinball))
        entry["val_stop"] = stop = stop_loss(cfg.stop_on, val_loss,
                                              val_pinball if with_quantiles else None, q_weight)
        self.history.append(entry)
        return self.update(stop, cfg, desc=desc)

    def update(self, stop_value: float, cfg, *, desc: str = "train") -> bool:
        """The early-stopping update for this epoch's `stop_value` (val_stop): a new best
        (better by more than cfg.min_delta) resets the count of bad epochs, otherwise it
        grows; cfg.patience bad epochs stop the run (cfg.early_stopping). True for a new best."""
        improved = stop_value < self.best_val - cfg.min_delta
        if improved:
            self.best_val, self.best_epoch, self.bad = stop_value, self.epoch, 0
        else:
            self.bad += 1
        if cfg.early_stopping and self.bad >= cfg.patience:
            self.stopped_early = True
            log.info("%s: early stop at epoch %d (best %.5f at epoch %d)",
                     desc, self.epoch, self.best_val, self.best_epoch)
        return improved

    def finished(self, epochs: int) -> bool:
        """Nothing left to train: early stopping ended the run, or it has `epochs` epochs."""
        return self.stopped_early or self.epoch >= epochs

    def seconds(self) -> float:
        """Training time over this run and the ones it resumes, until now."""
        return self.seconds_before + time.monotonic() - self.t_start

    def resume_dict(self, cfg, *, model_state: dict, optimizer_state: dict,
                    scheduler_state: dict, best_state: dict, scaler_state: dict | None = None) -> dict:
        """Everything needed to continue the run (RESUME_FORMAT): the tensors given (torch's
        state dicts of the model, AdamW, the scheduler and the grad scaler) and this record."""
        return {"format": RESUME_FORMAT, "model_state": model_state,
                "optimizer_state": optimizer_state, "scheduler_state": scheduler_state,
                "scaler_state": scaler_state or {}, "epoch": self.epoch,
                "best_val_loss": self.best_val, "best_epoch": self.best_epoch,
                "best_state": best_state, "bad_epochs": self.bad,
                "stopped_early": self.stopped_early, "history": list(self.history),
                "epochs_requested": cfg.epochs, "train_config": cfg.to_dict(),
                "train_seconds": self.seconds()}
