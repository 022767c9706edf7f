"""The fast engine's guard: its first group's first training step and validation pass, done
again by the plain loop on copies of the same models and batches, before the group trains.

Why. The fast engine (v3_fast_train) is the default on every GPU, Colab's T4 included, and
its kernels were written and checked on CPUs. So each run checks it where it runs: if the
two engines disagree beyond float rounding, the run warns and trains every model with the
plain loop instead, and the results say so (`engine`, `engine_fallback_reason`).

What is compared, per model of the group, with dropout off on both sides (the engines draw
different masks) after the first `grad_accum_steps` batches of its next epoch (one AdamW
step; every model starts from the weights and moments it would train on):
- the losses: training MSE and pinball summed over those batches, and the validation MSE
  and pinball after the step: |fast - plain| <= loss x |plain|;
- the gradient, as AdamW's first moment after the step (0.1 x the clipped gradient for a
  fresh model), tensor by tensor: ||fast - plain|| <= grad x ||plain||;
- the update, over all weights: ||w_fast - w_plain|| <= update x ||w_plain - w_before||.

Tolerances (relative; `TOLERANCES`). Both engines compute in fp32, in different orders. On
Ampere and newer, matrix products may run on TF32 tensor cores (v3_fast_train.TF32_MATMUL,
and cuDNN's LSTM in the plain loop): 10-bit mantissas, a rounding unit of 2^-11 ~ 5e-4 per
product, so losses agree to ~1e-4 and gradients to ~1e-3; without TF32 (a T4, a CPU) fp32
rounding (6e-8 per operation) leaves them ~1e-6 apart. The update has its own scale: AdamW's
first step is lr x sign(gradient) per weight, so a weight whose gradient is within rounding of
zero can step either way, off by 2 lr; a share f of such weights makes the update 2 sqrt(f)
off. 0.1 allows f up to 0.25 % with TF32, 0.01 up to 0.0025 % without. A bug (a wrong
index, gate, sign, binding or schedule) is off by order 1 in at least one of these numbers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from v3_common import log
from v3_fast_group import TrainGroup
from v3_fast_kernels import unpack_state
from v3_trainer import PlainTrial, plain_trial


@dataclass(frozen=True)
class Tolerance:
    loss: float                     # relative, each loss
    grad: float                     # relative to the norm, each tensor's AdamW first moment
    update: float                   # relative to the update's norm, all weights together


TOLERANCES = {True: Tolerance(loss=1e-3, grad=1e-2, update=0.1),     # TF32 matrix products
              False: Tolerance(loss=1e-4, grad=1e-3, update=1e-2)}   # fp32 throughout


def uses_tf32(device: torch.device) -> bool:
    """Whether float32 matrix products may run on TF32 tensor cores here: a GPU of compute
    capability 8.0 (Ampere) or newer, with TF32 allowed for matmuls or for cuDNN."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    return torch.get_float32_matmul_precision() != "highest" or torch.backends.cudnn.allow_tf32


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def disagreement(fast_losses: dict, fast_weights: dict, fast_exp_avg: dict, plain: PlainTrial,
                 weights_before: dict, tol: Tolerance) -> str | None:
    """What differs beyond `tol` between one model's fast and plain trial, or None."""
    ref = {"train_mse_sum": plain.train_mse_sum, "train_pinball_sum": plain.train_pinball_sum,
           "val_mse": plain.val_mse, "val_pinball": plain.val_pinball or 0.0}
    for k, p in ref.items():
        f = float(fast_losses[k])
        if not abs(f - p) <= tol.loss * abs(p):          # `not <=`: a NaN disagrees too
            return (f"{k} {f:.6g} (fast) vs {p:.6g} (plain): relative "
                    f"{abs(f - p) / max(abs(p), 1e-30):.1e} > {tol.loss:g}")
    for name, b in plain.exp_avg.items():
        err, size = _norm([fast_exp_avg[name] - b]), _norm([b])
        if not err <= tol.grad * size:
            return (f"the gradient of {name} (AdamW's first moment): off by "
                    f"{err / max(size, 1e-30):.1e} of its norm > {tol.grad:g}")
    names = list(plain.model_state)
    err = _norm([fast_weights[n] - plain.model_state[n] for n in names])
    size = _norm([plain.model_state[n] - weights_before[n] for n in names])
    if not err <= tol.update * size:
        return (f"the weights after the step: off by {err / max(size, 1e-30):.1e} of the "
                f"update's norm > {tol.update:g}")
    return None


def check_against_plain_loop(group: TrainGroup, cfg) -> str | None:
    """Compare the group's first step and validation pass with the plain loop's (see the
    module's docstring); None when they agree, else why not (for the log and the results).
    Leaves the group as it was."""
    device = group.device
    active = [m for m, s in enumerate(group.slots) if not s.finished]
    if not active:
        return None
    tf32 = uses_tf32(device)
    tol = TOLERANCES[tf32]
    before = group.cpu_blocks(active)
    starts = {m: group.resume_state(m, before) for m in active}
    batches = {m: min(cfg.grad_accum_steps, group.slots[m].n_batches) for m in active}
    trained, losses, after = group.trial(max(batches.values()))
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else str(device))
    for i, m in enumerate(trained):
        s = group.slots[m]
        plain = plain_trial(s.job.data, dataclasses.replace(s.job.model_config, dropout=0.0), cfg,
                            resume=starts[m], batches=batches[m], device=device)
        row = after["row"][m]
        problem = disagreement({k: v[i] for k, v in losses.items()},
                               unpack_state(after["params"], group.layout, row),
                               unpack_state(after["exp_avg"], group.layout, row), plain,
                               starts[m]["model_state"], tol)
        if problem:
            return (f"the fast engine's first training step on {where} disagreed with the plain "
                    f"loop's for {s.job.key}: {problem} ({'TF32' if tf32 else 'fp32'} "
                    f"tolerances, v3_fast_check)")
    log.info("%s: its first training step and validation pass on %s match the plain "
             "loop's (%d models, %s tolerances)", group.label, where, len(trained),
             "TF32" if tf32 else "fp32")
    return None
