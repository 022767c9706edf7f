"""The V3 forecaster: input LayerNorm -> bidirectional LSTM -> additive attention -> dense head.

It reads a window of PCA features (B, T, F) and predicts one number per window: the next
candle's log return, standardised with the training set's mean and std (see
v3_data_processor). The hyperparameters are a dataclass beside the model, and every
checkpoint carries them, so a model can be rebuilt without the training run.

The quantile head (ModelConfig.quantiles, on by default) sits beside the point forecast:
one more linear layer on the dense head's hidden features (after its LayerNorm, GELU and
dropout) gives, per window, quantiles of the same standardised next log return at the
levels in `quantiles`. They never cross, by construction (see monotone_quantiles): the
output nearest the median is the anchor, every other output is a softplus gap to its
neighbour towards the anchor, added one at a time. `model(x)` still returns the point
forecast (B,); `model.forward_with_quantiles(x)` returns (point (B,), quantiles (B, Q)).
Training minimises MSE(point) + quantile_weight * mean pinball loss over the levels, both
on the standardised target (quantile_pinball). With quantile_scale "har" (the default) the
head's quantiles are in units of the HAR forecast of the next candle's volatility
(PreparedData.har_scale: v3_har, from the ranges of the candles up to t and the clock of
t+1); with "ewma" in units of the recent volatility at the window's last candle
(PreparedData.vol_scale: an EWMA of the last 100 squared returns, known at t). Either way the head learns the
shape and the correction, the unit carries the volatility regime, and the quantiles of the
standardised target are head output x unit (v3_trainer and v3_predict multiply). "none"
gives the head's outputs as they are.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from statistics import NormalDist

import torch
import torch.nn as nn
import torch.nn.functional as F

from v3_common import ConfigError
from v3_interval_scores import QUANTILES


QUANTILE_SCALES = ("ewma", "har", "none")


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = 30        # features after PCA
    hidden_size: int = 128      # LSTM hidden units per direction
    num_layers: int = 3
    dropout: float = 0.3        # between LSTM layers and in the head
    bidirectional: bool = True
    use_attention: bool = True  # False: use the last time step's output instead
    output_size: int = 1        # the next candle's standardised log return
    # quantile head: levels of the standardised next log return it predicts, sorted, unique,
    # strictly inside (0, 1); () = no head (the model before the head, exactly)
    quantiles: tuple[float, ...] = QUANTILES
    # training loss = MSE(point) + quantile_weight * mean pinball loss over the levels (both
    # on the standardised target; validation loss and early stopping: the MSE alone)
    quantile_weight: float = 1.0
    # the quantile head's unit: "har" = the HAR forecast of candle t+1's range-based
    # volatility (the default: better than "ewma" on validation, README "Intervals"), "ewma"
    # = the recent EWMA volatility at t, "none" = the standardised target itself
    quantile_scale: str = "har"

    def __post_init__(self):
        # a list (from JSON) becomes a tuple: the config stays hashable and compares equal
        if isinstance(self.quantiles, list):
            object.__setattr__(self, "quantiles", tuple(self.quantiles))

    def to_dict(self) -> dict:
        """Plain JSON types: quantiles as a list, so a dict read back from a JSON file (the
        results, a walk-forward fold's settings) compares equal to a fresh to_dict()."""
        return dict(asdict(self), quantiles=list(self.quantiles))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def check_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for a model that cannot be built, before any heavy work."""
    if not (isinstance(cfg.hidden_size, int) and cfg.hidden_size >= 1
            and isinstance(cfg.num_layers, int) and cfg.num_layers >= 1
            and isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise ConfigError(f"model hidden_size={cfg.hidden_size!r}, num_layers={cfg.num_layers!r}, "
                          f"dropout={cfg.dropout!r}: need integers >= 1 and a dropout in [0, 1) "
                          f"(the guide uses 128, 3 and 0.3).")
    q, w = cfg.quantiles, cfg.quantile_weight
    ok = isinstance(q, tuple) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and 0 < v < 1 for v in q)
    if not ok or any(b <= a for a, b in zip(q, q[1:])):
        raise ConfigError(f"model quantiles={q!r}: need a tuple of levels strictly inside (0, 1), "
                          f"sorted and unique, or () for no quantile head (the guide uses "
                          f"{QUANTILES}).")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 <= w < math.inf):
        raise ConfigError(f"model quantile_weight={w!r}: need a finite number >= 0 (the weight of "
                          f"the mean pinball loss beside the point forecast's MSE; default 1.0).")
    if cfg.quantile_scale not in QUANTILE_SCALES:
        raise ConfigError(f"model quantile_scale={cfg.quantile_scale!r}: need one of "
                          f"{', '.join(map(repr, QUANTILE_SCALES))} (the quantile head's unit: "
                          f"the recent EWMA volatility, the HAR range-based forecast, or the "
                          f"standardised target itself).")


def quantile_anchor(levels) -> int:
    """Index of the level nearest the median: the head's one unconstrained output."""
    return min(range(len(levels)), key=lambda k: (abs(levels[k] - 0.5), k))


def monotone_quantiles(raw: torch.Tensor, anchor: int) -> torch.Tensor:
    """Raw head outputs (..., Q) -> non-crossing quantiles (..., Q).

    raw[..., anchor] is the anchor quantile; every other raw[..., k] is the gap
    softplus(raw[..., k]) >= 0 to its neighbour towards the anchor. Each quantile is its
    neighbour plus (or minus) one gap, one addition at a time: a float sum of a
    non-negative number never rounds below its other term, so q[..., k] <= q[..., k+1] holds
    for any finite raw values, however large (no reliance on an ordered cumsum kernel)."""
    gaps = F.softplus(raw)
    q = [None] * raw.shape[-1]
    q[anchor] = raw[..., anchor]
    for k in range(anchor + 1, raw.shape[-1]):
        q[k] = q[k - 1] + gaps[..., k]
    for k in range(anchor - 1, -1, -1):
        q[k] = q[k + 1] - gaps[..., k]
    return torch.stack(q, -1)


def quantile_pinball(q: torch.Tensor, y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Pinball loss (..., Q) of quantiles q (..., Q) at `levels` (Q,) for targets y (...):
    u * (tau - 1[u < 0]) with u = y - q (v3_intervals.pinball_loss, in torch)."""
    u = y.unsqueeze(-1) - q
    return u * (levels - (u < 0).to(u.dtype))


def initial_quantile_bias(levels) -> list[float]:
    """The head's initial bias: with zero weights it would output the standard normal's
    quantiles (the standardised target's scale), so training starts from a sane spread."""
    z = [NormalDist().inv_cdf(float(t)) for t in levels]
    a = quantile_anchor(levels)
    out = []
    for k in range(len(levels)):
        if k == a:
            out.append(z[k])
        else:
            gap = abs(z[k] - z[k - 1 if k > a else k + 1])
            out.append(math.log(math.expm1(max(gap, 1e-4))))  # softplus^-1(gap)
    return out


class AdditiveAttention(nn.Module):
    """Bahdanau-style attention over time: score_t = v . tanh(W h_t), weights = softmax(score)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h: (B, T, D)
        scores = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T)
        weights = torch.softmax(scores, dim=1)                       # (B, T), rows sum to 1
        context = torch.bmm(weights.unsqueeze(1), h).squeeze(1)      # (B, D)
        return context, weights


class V3LSTMModel(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        c = config
        self.input_norm = nn.LayerNorm(c.input_size)
        self.lstm = nn.LSTM(c.input_size, c.hidden_size, num_layers=c.num_layers,
                            batch_first=True, bidirectional=c.bidirectional,
                            dropout=c.dropout if c.num_layers > 1 else 0.0)
        d = c.hidden_size * (2 if c.bidirectional else 1)
        self.attention = AdditiveAttention(d) if c.use_attention else None
        self.head = nn.Sequential(
            nn.Linear(d, c.hidden_size),
            nn.LayerNorm(c.hidden_size),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden_size, c.output_size),
        )
        # made after everything else: without it (quantiles=()) and before it, the same
        # seed gives the same weights
        self.quantile_head = None
        if c.quantiles:
            self.quantile_head = nn.Linear(c.hidden_size, len(c.quantiles))
            with torch.no_grad():
                self.quantile_head.bias.copy_(torch.tensor(initial_quantile_bias(c.quantiles)))
        self.quantile_anchor = quantile_anchor(c.quantiles) if c.quantiles else 0
        self.register_buffer("quantile_levels", torch.tensor(c.quantiles, dtype=torch.float32),
                             persistent=False)

    @property
    def has_quantiles(self) -> bool:
        return self.quantile_head is not None

    def _features(self, x: torch.Tensor):
        """The dense head's hidden features (B, hidden) and the attention weights."""
        # x: (B, T, F)
        h, _ = self.lstm(self.input_norm(x))  # (B, T, D)
        if self.attention is not None:
            context, weights = self.attention(h)  # (B, D), (B, T)
        else:
            context, weights = h[:, -1], None
        z = context
        for i in range(len(self.head) - 1):   # all but the last layer (no Sequential slice:
            z = self.head[i](z)               # that builds a new module on every call)
        return z, weights

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Predictions (B,); with return_attention=True also the (B, T) attention weights."""
        z, weights = self._features(x)
        out = self.head[-1](z).squeeze(-1)  # (B,) when output_size == 1
        return (out, weights) if return_attention else out

    def forward_with_quantiles(self, x: torch.Tensor):
        """(point (B,), quantiles (B, Q)) in one pass: the point forecast as forward(x) and
        the non-crossing quantiles at config.quantiles (None without a quantile head)."""
        z, _ = self._features(x)
        point = self.head[-1](z).squeeze(-1)
        if self.quantile_head is None:
            return point, None
        return point, monotone_quantiles(self.quantile_head(z), self.quantile_anchor)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
