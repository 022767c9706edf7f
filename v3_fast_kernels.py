"""The fast engine's kernels: V3LSTMModel for M models at once, with stacked weights.

`torch.vmap` cannot batch `nn.LSTM`, and one cuDNN call cannot serve models with different
weights. So this module writes the same model once more with every weight stacked along a
leading model axis (M, ...), and the LSTM recurrence as batched matrix products over all M
models and both directions at once (with a hand-written backward): each kernel then serves
every model of a group. Also the per-model pieces of the optimisation that must stay per
model: the cosine-with-warm-restarts learning rate as a pure function of the fractional
epoch, and AdamW with per-model gradient clipping, learning rate and step count.
v3_fast_train (the job loop, CUDA graphs) is the one caller; tests/test_fast_train.py checks
each piece against nn.LSTM / V3LSTMModel, torch.optim.AdamW and the torch scheduler.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from v3_common import log
from v3_lstm_model import ModelConfig, V3LSTMModel, monotone_quantiles, quantile_anchor

ADAM_BETAS = (0.9, 0.999)     # torch.optim.AdamW's defaults, which the plain loop uses
ADAM_EPS = 1e-8


# ---------------------------------------------------------------------------------------
# The LSTM cell: one time step for N rows at once (N = models x directions x batch).
# Gates are in PyTorch's order i, f, g, o. The workspace (the activated gates) is what the
# backward needs. On CUDA, ATen's fused cell (one kernel each way, the one nn.LSTMCell uses)
# replaces the reference after a self-check; on CPU the reference runs.


def _cell_reference(gi: torch.Tensor, gh: torch.Tensor, c: torch.Tensor):
    i, f, g, o = (gi + gh).chunk(4, 1)                      # each (N, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new, torch.cat([i, f, g, o], 1)


def _cell_reference_backward(dh: torch.Tensor, dc: torch.Tensor | None, c_prev: torch.Tensor,
                             c: torch.Tensor, ws: torch.Tensor):
    """Gradients w.r.t. the gate pre-activations (N, 4H) and the previous cell state (N, H)."""
    i, f, g, o = ws.chunk(4, 1)
    tc = torch.tanh(c)
    dcc = dh * o * (1 - tc * tc)
    if dc is not None:
        dcc = dcc + dc
    dgates = torch.cat([dcc * g * i * (1 - i), dcc * c_prev * f * (1 - f),
                        dcc * i * (1 - g * g), dh * tc * o * (1 - o)], 1)
    return dgates, dcc * f


def _cell_fused(gi, gh, c):
    return torch.ops.aten._thnn_fused_lstm_cell(gi, gh, c)


def _cell_fused_backward(dh, dc, c_prev, c, ws):
    dgates, dc_prev, _ = torch.ops.aten._thnn_fused_lstm_cell_backward_impl(dh, dc, c_prev, c, ws,
                                                                            False)
    return dgates, dc_prev


CELLS = {"reference": (_cell_reference, _cell_reference_backward),
         "fused": (_cell_fused, _cell_fused_backward)}
_cell_choice: dict[str, str] = {}


def pick_cell(device: torch.device) -> str:
    """'fused' on CUDA when ATen's fused cell matches the reference on a small random case
    (forward and backward), else 'reference'. Checked once per device."""
    key = str(device)
    if key in _cell_choice:
        return _cell_choice[key]
    choice = "reference"
    if device.type == "cuda":
        try:
            gen = torch.Generator(device="cpu").manual_seed(0)
            gi, gh, dg = (torch.randn(6, 16, generator=gen).to(device) for _ in range(3))
            c, dh, dc = (torch.randn(6, 4, generator=gen).to(device) for _ in range(3))
            ref = _cell_reference(gi, gh, c)
            fus = _cell_fused(gi, gh, c)
            ok = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, fus))
            for d in (dc, None):
                rb = _cell_reference_backward(dh, d, c, ref[1], ref[2])
                fb = _cell_fused_backward(dh, d, c, fus[1], fus[2])
                ok = ok and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(rb, fb))
            choice = "fused" if ok else "reference"
            if not ok:
                log.warning("fast engine: ATen's fused LSTM cell disagrees with the reference "
                            "on %s; using the reference cell (slower, same results)", device)
        except Exception as e:  # an op missing from this build: the reference always works
            log.warning("fast engine: fused LSTM cell unavailable on %s (%s); using the "
                        "reference cell", device, type(e).__name__)
    _cell_choice[key] = choice
    return choice


# ---------------------------------------------------------------------------------------
# One LSTM layer for D independent LSTMs (D = models x directions), each running forward in
# time over its own input. The reverse direction is given its input already reversed in time.


def _lstm_layer(x, w_ih, w_hh, b_ih, b_hh, cell: str, keep: bool):
    """x (D, T, B, I) -> h (D, T, B, H); with keep, also what the backward needs."""
    D, T, B, I = x.shape
    H = w_hh.shape[-1]
    step = CELLS[cell][0]
    gx = torch.baddbmm((b_ih + b_hh).unsqueeze(1), x.reshape(D, T * B, I),
                       w_ih.transpose(1, 2))                               # (D, T*B, 4H)
    gx = gx.view(D, T, B, 4 * H).transpose(0, 1).contiguous()              # (T, D, B, 4H)
    w_hh_t = w_hh.transpose(1, 2)                                          # (D, H, 4H)
    h = x.new_zeros(D, B, H)
    c = x.new_zeros(D * B, H)
    hs, cs, wss = [], [c], []
    for t in range(T):
        hy, c, ws = step(gx[t].view(D * B, 4 * H), torch.bmm(h, w_hh_t).view(D * B, 4 * H), c)
        h = hy.view(D, B, H)
        hs.append(h)
        if keep:
            cs.append(c)
            wss.append(ws)
    return torch.stack(hs, 1), cs, wss                                     # (D, T, B, H)


class _GroupedLSTMLayer(torch.autograd.Function):
    """The layer above with a hand-written backward: two kernels per time step each way
    (a batched matmul and the cell), and the weight gradients as one matmul per layer."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, cell):
        out, cs, wss = _lstm_layer(x, w_ih, w_hh, b_ih, b_hh, cell, keep=True)
        ctx.cell, ctx.cs, ctx.wss = cell, cs, wss
        ctx.save_for_backward(x, w_ih, w_hh, out)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w_ih, w_hh, out = ctx.saved_tensors
        cs, wss, cell_backward = ctx.cs, ctx.wss, CELLS[ctx.cell][1]
        D, T, B, H = out.shape
        I = x.shape[-1]
        dgs = [None] * T
        dh_rec, dc = None, None
        for t in range(T - 1, -1, -1):
            dh = dout[:, t] if dh_rec is None else dout[:, t] + dh_rec     # (D, B, H)
            dg, dc = cell_backward(dh.reshape(D * B, H), dc, cs[t], cs[t + 1], wss[t])
            dgs[t] = dg.view(D, B, 4 * H)
            if t > 0:
                dh_rec = torch.bmm(dgs[t], w_hh)                           # (D, B, H)
        dG = torch.stack(dgs, 1)                                           # (D, T, B, 4H)
        dG2 = dG.view(D, T * B, 4 * H)
        dx = torch.bmm(dG2, w_ih).view(D, T, B, I)
        dw_ih = torch.bmm(dG2.transpose(1, 2), x.reshape(D, T * B, I))
        if T > 1:
            dw_hh = torch.bmm(dG[:, 1:].reshape(D, (T - 1) * B, 4 * H).transpose(1, 2),
                              out[:, :-1].reshape(D, (T - 1) * B, H))
        else:
            dw_hh = torch.zeros_like(w_hh)
        db = dG2.sum(1)
        ctx.cs = ctx.wss = None
        return dx, dw_ih, dw_hh, db, db, None


# ---------------------------------------------------------------------------------------
# The grouped model: V3LSTMModel's forward for M models at once. Weights live in "blocks",
# one per V3LSTMModel parameter, stacked along a leading model axis; an LSTM block holds both
# directions, (M, directions, ...), so that (M * directions) LSTMs are one batch.


def block_layout(cfg: ModelConfig) -> dict[str, list[str]]:
    """Block name -> the V3LSTMModel parameter names it stacks (in named_parameters order)."""
    out: dict[str, list[str]] = {}
    for name, _ in V3LSTMModel(cfg).named_parameters():
        base = name[:-len("_reverse")] if name.endswith("_reverse") else name
        out.setdefault(base, []).append(name)
    return out


def pack_states(states: list[dict], layout: dict[str, list[str]], *, device, dtype) -> dict:
    """M state_dicts -> {block: (M, ...) tensor}."""
    blocks = {}
    for block, names in layout.items():
        if block.startswith("lstm."):
            rows = [torch.stack([sd[n] for n in names], 0) for sd in states]
        else:
            rows = [sd[names[0]] for sd in states]
        blocks[block] = torch.stack(rows, 0).to(device=device, dtype=dtype).contiguous()
    return blocks


def unpack_state(blocks: dict, layout: dict[str, list[str]], m: int) -> dict:
    """Model m of the blocks -> a V3LSTMModel state_dict (tensors on the blocks' device)."""
    sd = {}
    for block, names in layout.items():
        t = blocks[block][m]
        if block.startswith("lstm."):
            for d, n in enumerate(names):
                sd[n] = t[d].clone()
        else:
            sd[names[0]] = t.clone()
    return sd


def grouped_forward(p: dict, x: torch.Tensor, cfg: ModelConfig, *, train: bool,
                    cell: str = "reference") -> torch.Tensor:
    """x (M, T, B, K) -> predictions (M, B): model m of the group reads x[m].
    Same computation as V3LSTMModel.forward, per model; dropout only when `train`."""
    return grouped_forward_with_quantiles(p, x, cfg, train=train, cell=cell, quantiles=False)[0]


def grouped_forward_with_quantiles(p: dict, x: torch.Tensor, cfg: ModelConfig, *, train: bool,
                                   cell: str = "reference", quantiles: bool = True):
    """x (M, T, B, K) -> (predictions (M, B), quantiles (M, B, Q) or None): as
    V3LSTMModel.forward_with_quantiles, per model (None without a head or with
    quantiles=False). The quantile head is one batched matmul on the dense head's hidden
    features and the same monotone_quantiles as the model's."""
    M, T, B, K = x.shape
    nd, H = (2 if cfg.bidirectional else 1), cfg.hidden_size
    y = F.layer_norm(x, (K,)) * p["input_norm.weight"].view(M, 1, 1, K) \
        + p["input_norm.bias"].view(M, 1, 1, K)                            # (M, T, B, K)
    for k in range(cfg.num_layers):
        xs = torch.stack([y, y.flip(1)], 1) if nd == 2 else y.unsqueeze(1)  # (M, nd, T, B, I)
        I = xs.shape[-1]
        args = (xs.view(M * nd, T, B, I), p[f"lstm.weight_ih_l{k}"].view(M * nd, 4 * H, I),
                p[f"lstm.weight_hh_l{k}"].view(M * nd, 4 * H, H),
                p[f"lstm.bias_ih_l{k}"].view(M * nd, 4 * H),
                p[f"lstm.bias_hh_l{k}"].view(M * nd, 4 * H), cell)
        if torch.is_grad_enabled():
            out = _GroupedLSTMLayer.apply(*args)
        else:
            out = _lstm_layer(*args, keep=False)[0]
        out = out.view(M, nd, T, B, H)
        y = out[:, 0] if nd == 1 else torch.cat([out[:, 0], out[:, 1].flip(1)], -1)  # (M,T,B,nd*H)
        if train and cfg.dropout > 0 and k < cfg.num_layers - 1:
            y = F.dropout(y, cfg.dropout, True)
    D = nd * H
    if cfg.use_attention:
        u = torch.tanh(torch.baddbmm(p["attention.proj.bias"].unsqueeze(1), y.reshape(M, T * B, D),
                                     p["attention.proj.weight"].transpose(1, 2)))  # (M, T*B, D)
        scores = torch.bmm(u, p["attention.score.weight"].transpose(1, 2)).view(M, T, B)
        weights = torch.softmax(scores, dim=1)                              # over time
        context = (weights.unsqueeze(-1) * y).sum(1)                        # (M, B, D)
    else:
        context = y[:, -1]
    z = torch.baddbmm(p["head.0.bias"].unsqueeze(1), context, p["head.0.weight"].transpose(1, 2))
    Hh = z.shape[-1]
    z = F.layer_norm(z, (Hh,)) * p["head.1.weight"].view(M, 1, Hh) + p["head.1.bias"].view(M, 1, Hh)
    z = F.gelu(z)
    if train and cfg.dropout > 0:
        z = F.dropout(z, cfg.dropout, True)
    out = torch.baddbmm(p["head.4.bias"].unsqueeze(1), z, p["head.4.weight"].transpose(1, 2))
    if not (quantiles and cfg.quantiles):
        return out.squeeze(-1), None                                        # (M, B)
    raw = torch.baddbmm(p["quantile_head.bias"].unsqueeze(1), z,
                        p["quantile_head.weight"].transpose(1, 2))          # (M, B, Q)
    return out.squeeze(-1), monotone_quantiles(raw, quantile_anchor(cfg.quantiles))


# ---------------------------------------------------------------------------------------
# Per-model learning rate and optimizer.


def cosine_warm_restarts_lr(epoch: float, *, base_lr: float, t0: int, t_mult: int,
                            eta_min: float) -> float:
    """The learning rate CosineAnnealingWarmRestarts sets after `step(epoch)` (same formula,
    same floating-point steps), as a pure function of the fractional epoch."""
    if epoch >= t0:
        if t_mult == 1:
            t_cur, t_i = epoch % t0, t0
        else:
            n = int(math.log((epoch / t0 * (t_mult - 1) + 1), t_mult))
            t_cur = epoch - t0 * (t_mult ** n - 1) / (t_mult - 1)
            t_i = t0 * t_mult ** n
    else:
        t_cur, t_i = epoch, t0
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


@torch.no_grad()
def grouped_adamw_(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                   steps: torch.Tensor, lr: torch.Tensor, do_step: torch.Tensor, *,
                   weight_decay: float, max_norm: float) -> None:
    """One AdamW step for M models at once, after clipping each model's gradient to
    `max_norm` (as nn.utils.clip_grad_norm_). Each model has its own learning rate `lr` (M,)
    and step count `steps` (M,); a model with do_step == 0 is left exactly as it is."""
    M = lr.shape[0]
    b1, b2 = ADAM_BETAS
    g2d = [g.reshape(M, -1) for g in grads]
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g, dim=1) for g in g2d], 1), dim=1)  # (M,)
    dt = params[0].dtype
    clip = (max_norm / (norm + 1e-6)).clamp(max=1.0).to(dt).unsqueeze(1)
    steps.add_(do_step)
    t = steps.clamp(min=1)
    col = lambda v: v.to(dt).unsqueeze(1)  # noqa: E731  (M,) float64 -> (M, 1) in the weights' dtype
    decay = col(1 - lr * weight_decay * do_step)
    w1, w2 = col((1 - b1) * do_step), col((1 - b2) * do_step)
    bc2_sqrt = col((1 - b2 ** t).sqrt())
    neg_step = col(-(lr / (1 - b1 ** t)) * do_step)
    for p, g, m, v in zip(params, g2d, exp_avgs, exp_avg_sqs):
        p, m, v = p.view(M, -1), m.view(M, -1), v.view(M, -1)
        g = g * clip
        p.mul_(decay)
        m.lerp_(g, w1)
        v.lerp_(g * g, w2)
        p.addcmul_(m / (v.sqrt() / bc2_sqrt + ADAM_EPS), neg_step)
