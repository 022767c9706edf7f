"""HAR volatility of the next candle from its predecessors' ranges and the clock.

The field's workhorse for realised volatility (Corsi 2009, "HAR": heterogeneous
autoregression) on range-based variance (Parkinson 1980), with the clock of the candle being
forecast (hour of day, weekend: crypto volatility follows the US session and funding times).
A plain OLS, fitted on the training split only and frozen for validation and test:

    ln PV_(t+1) = b0 + b1 ln PV_t + b2 ln PV_4(t) + b3 ln PV_day(t) + b4 ln PV_week(t)
                  + sum_h c_h [hour(t+1) = h] + d [weekend(t+1)] + e

- PV_t = (ln(high_t / low_t))^2 / (4 ln 2), the Parkinson variance of candle t
  (v3_indicators.parkinson_variance); PV_4, PV_day, PV_week its means over the last 4
  candles, one day and one week up to candle t (time windows: each averages the candles that
  exist in it, fewer at gaps and at the start of a series, so the indicator warm-up stays
  what it is). Every ln is of max(PV, PARKINSON_FLOOR): a flat candle has zero range.
- hour(t+1), weekend(t+1): of the open time of the candle being forecast, which is known in
  advance (no leak); 23 hour dummies (hour 0 is the reference) and one weekend flag (UTC
  Saturday or Sunday).
- The forecast volatility of sample i is s_i = exp(x_i b / 2). The `har` interval baseline
  (v3_intervals.HarBaseline) turns it into quantiles with the empirical quantiles of the
  standardised training returns r / s (that also absorbs the bias of exp(E ln PV)); the
  quantile head's unit for ModelConfig.quantile_scale = "har" is s_i / the training returns'
  std (v3_data_processor).

Every range input of sample i uses candles up to the window's last candle only
(`range_features`); the OLS target, candle t+1's own range, is an outcome like the return.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from v3_indicators import DAY_MS, PARKINSON_FLOOR, parkinson_variance, trailing_time_mean

HOUR_MS = 3_600_000
# the HAR's range inputs: (name, window in candles or None, window in ms or None)
RANGE_WINDOWS = (("candle", 1, None), ("4_candles", 4, None), ("day", None, DAY_MS),
                 ("week", None, 7 * DAY_MS))
HAR_INPUTS = tuple(f"ln_pv_{name}" for name, _, _ in RANGE_WINDOWS) + tuple(
    f"hour_{h}" for h in range(1, 24)) + ("weekend",)


def window_ms(interval_ms: int) -> tuple[int, ...]:
    """The RANGE_WINDOWS in ms for candles of `interval_ms`."""
    return tuple(n * int(interval_ms) if n else int(ms) for _, n, ms in RANGE_WINDOWS)


def history_candles(interval_ms: int) -> int:
    """Candles the longest range window spans (a week of them): what live prediction needs
    before the last candle to compute the same inputs as training."""
    return int(np.ceil(max(window_ms(interval_ms)) / int(interval_ms)))


def range_features(high: np.ndarray, low: np.ndarray, open_time_ms: np.ndarray,
                   interval_ms: int) -> np.ndarray:
    """(R, 4) float64 per candle t: the Parkinson variance of t and its means over the last 4
    candles, one day and one week ending at t (unfloored; rows <= t only)."""
    pv = parkinson_variance(high, low)
    t = np.asarray(open_time_ms, np.int64)
    return np.column_stack([trailing_time_mean(pv, t, w) for w in window_ms(interval_ms)])


def clock_dummies(open_time_ms: np.ndarray) -> np.ndarray:
    """(n, 24) float64: 23 hour-of-day dummies (hours 1..23; hour 0 the reference) and a
    weekend flag, of each open time (UTC; 1970-01-01 was a Thursday)."""
    t = np.asarray(open_time_ms, np.int64)
    hour = (t // HOUR_MS) % 24
    weekday = (t // DAY_MS + 3) % 7                    # Monday 0 .. Sunday 6
    dummies = (hour[:, None] == np.arange(1, 24)[None, :]).astype(np.float64)
    return np.column_stack([dummies, (weekday >= 5).astype(np.float64)])


def design(range_var: np.ndarray, target_open_time: np.ndarray) -> np.ndarray:
    """(n, 1 + 4 + 24) the HAR's regressors: a constant, the four floored log range
    variances (`range_features` rows at the samples' last candles) and the forecast candle's
    clock (HAR_INPUTS order after the constant)."""
    rv = np.log(np.maximum(np.asarray(range_var, np.float64), PARKINSON_FLOOR))
    return np.column_stack([np.ones(len(rv)), rv, clock_dummies(target_open_time)])


@dataclass(frozen=True)
class HarFit:
    """The HAR's coefficients (constant, HAR_INPUTS), fitted on the training split."""
    beta: tuple[float, ...]
    n_fit: int                  # training samples the OLS saw
    r2: float                   # in-sample R^2 of ln PV_(t+1)

    def to_dict(self) -> dict:
        return {"beta": [float(b) for b in self.beta], "inputs": ["const", *HAR_INPUTS],
                "n_fit": int(self.n_fit), "r2": float(self.r2),
                "floor": PARKINSON_FLOOR, "windows": [n for n, _, _ in RANGE_WINDOWS]}

    @classmethod
    def from_dict(cls, d: dict) -> "HarFit":
        return cls(beta=tuple(float(b) for b in d["beta"]), n_fit=int(d["n_fit"]),
                   r2=float(d["r2"]))

    def log_variance(self, range_var: np.ndarray, target_open_time: np.ndarray) -> np.ndarray:
        """(n,) forecast ln PV of the next candle."""
        return design(range_var, target_open_time) @ np.asarray(self.beta, np.float64)

    def volatility(self, range_var: np.ndarray, target_open_time: np.ndarray) -> np.ndarray:
        """(n,) s_i = exp(forecast ln PV / 2): the next candle's volatility, up to the scale
        that the empirical standardised quantiles (or the head) take care of."""
        return np.exp(0.5 * self.log_variance(range_var, target_open_time))


def fit_har(range_var: np.ndarray, next_range_var: np.ndarray,
            target_open_time: np.ndarray) -> HarFit:
    """OLS of ln max(PV_(t+1), floor) on `design` over the given (training) samples. A clock
    column that never varies there (a daily series has one hour) gets coefficient 0 (the
    minimum-norm least-squares solution)."""
    x = design(range_var, target_open_time)
    y = np.log(np.maximum(np.asarray(next_range_var, np.float64), PARKINSON_FLOOR))
    if len(y) < x.shape[1] or not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError(f"fit_har needs >= {x.shape[1]} finite samples, got {len(y)}.")
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    tss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / tss if tss > 0 else 0.0
    return HarFit(beta=tuple(float(b) for b in beta), n_fit=len(y), r2=r2)
