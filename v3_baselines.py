"""Point baselines as models: the forecasts every V3 number is compared with.

Baselines are ordinary models with the verbs of a model (`fit(data)`, `predict(data, idx)`),
so "model vs. baselines" is one loop (darts' way):
- `PersistenceBaseline`: next close = last close.
- `DriftBaseline`: next close = last close * exp(mean training log return).
- `LinearBaseline`: ridge regression of the next standardised log return on the same input
  the LSTM sees (the window of PCA scores, summarised by its means over the last 1, 4, 16
  and 60 candles), fitted on the training split; its penalty is chosen on the validation
  split only.
"""
from __future__ import annotations

import math

import numpy as np

from v3_metrics import regression_metrics


def persistence_forecast(last: np.ndarray) -> np.ndarray:
    """The naive baseline: next close = last close."""
    return np.asarray(last, np.float64).copy()


def evaluate_with_baseline(actual, predicted, last) -> tuple[dict, dict]:
    """(model metrics, {"persistence": baseline metrics}) on exactly the same samples."""
    return (regression_metrics(actual, predicted, last),
            {"persistence": regression_metrics(actual, persistence_forecast(last), last)})


# ---------------------------------------------------------------------------------------
# Baselines as models: fit(data) on the training split, predict(data, idx) -> closes


class PersistenceBaseline:
    """next close = last close."""
    name = "persistence"

    def fit(self, data) -> "PersistenceBaseline":
        return self

    def predict(self, data, idx) -> np.ndarray:
        return persistence_forecast(data.last_close[idx])


class DriftBaseline:
    """next close = last close * exp(mean log return of the training split)."""
    name = "drift"

    def fit(self, data) -> "DriftBaseline":
        self.mean_log_return = float(data.target_mean)  # the training split's mean
        return self

    def predict(self, data, idx) -> np.ndarray:
        return np.asarray(data.last_close[idx], np.float64) * math.exp(self.mean_log_return)


class LinearBaseline:
    """Ridge regression on a summary of the LSTM's input window.

    The window (seq_len x K PCA scores) is summarised by the mean of its last L rows for each
    L in `lags` (1 = the last row; seq_len = the whole window), i.e. len(lags) x K inputs:
    the same information at a few horizons, cheap enough to fit for 40 pairs on a CPU.
    Fitted on the training split (centred with the training means); the penalty `alpha` is the
    one of `alphas` with the lowest MSE on the validation split. Solved once by SVD, so every
    alpha costs one matrix product.
    """
    name = "linear"

    def __init__(self, *, lags: tuple[int, ...] = (1, 4, 16, 60),
                 alphas: tuple[float, ...] = tuple(10.0 ** np.arange(-2, 8.5, 0.5))):
        self.lags = tuple(int(l) for l in lags)
        self.alphas = tuple(float(a) for a in alphas)

    def fit(self, data) -> "LinearBaseline":
        tr, va = data.split("train"), data.split("val")
        x = self.inputs(data, tr)
        y = np.asarray(data.target[tr], np.float64)
        self.x_mean, self.y_mean = x.mean(axis=0), float(y.mean())
        u, s, vt = np.linalg.svd(x - self.x_mean, full_matrices=False)
        uty = u.T @ (y - self.y_mean)
        xv = self.inputs(data, va) - self.x_mean
        yv = np.asarray(data.target[va], np.float64) - self.y_mean
        self.val_mse = {}
        best = None
        for a in self.alphas:
            coef = vt.T @ (s / (s * s + a) * uty)
            mse = float(np.mean((xv @ coef - yv) ** 2))
            self.val_mse[a] = mse
            if best is None or mse < best[0]:
                best = (mse, a, coef)
        _, self.alpha, self.coef = best
        return self

    def predict_standardized(self, data, idx) -> np.ndarray:
        return (self.inputs(data, idx) - self.x_mean) @ self.coef + self.y_mean

    def predict(self, data, idx) -> np.ndarray:
        return data.to_close(self.predict_standardized(data, idx), idx)

    def inputs(self, data, idx) -> np.ndarray:
        """(n, len(lags) x K): the mean of the last L window rows for each lag L."""
        w = np.asarray(data.windows(idx), np.float64)  # (n, T, K)
        lags = sorted({min(l, data.seq_len) for l in self.lags})
        return np.concatenate([w[:, -l:, :].mean(axis=1) for l in lags], axis=1)

    def describe(self, data) -> str:
        lags = sorted({min(l, data.seq_len) for l in self.lags})
        return (f"means of the last {', '.join(map(str, lags))} rows of the window of "
                f"{data.transform.n_components} PCA scores")


def baseline_models() -> list:
    return [PersistenceBaseline(), DriftBaseline(), LinearBaseline()]
