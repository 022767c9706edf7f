"""The V3 forecaster: input LayerNorm -> bidirectional LSTM -> additive attention -> dense head.

It reads a window of PCA features (B, T, F) and predicts one number per window: the next
candle's log return, standardised with the training set's mean and std (see
v3_data_processor). The hyperparameters are a dataclass beside the model, and every
checkpoint carries them, so a model can be rebuilt without the training run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn

from v3_common import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = 30        # features after PCA
    hidden_size: int = 128      # LSTM hidden units per direction
    num_layers: int = 3
    dropout: float = 0.3        # between LSTM layers and in the head
    bidirectional: bool = True
    use_attention: bool = True  # False: use the last time step's output instead
    output_size: int = 1        # the next candle's standardised log return

    def to_dict(self) -> dict:
        return asdict(self)

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

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Predictions (B,); with return_attention=True also the (B, T) attention weights."""
        # x: (B, T, F)
        h, _ = self.lstm(self.input_norm(x))  # (B, T, D)
        if self.attention is not None:
            context, weights = self.attention(h)  # (B, D), (B, T)
        else:
            context, weights = h[:, -1], None
        out = self.head(context).squeeze(-1)  # (B,) when output_size == 1
        return (out, weights) if return_attention else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
