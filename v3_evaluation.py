"""Metrics of next-close forecasts, always next to the naive baseline on the same samples.

Units: `mape` and `directional_accuracy` are percentages; `mae`, `rmse` are in price units
and `mse` in price units squared. Directional accuracy counts the samples where
sign(predicted - last) == sign(actual - last), over the samples whose actual move is not zero
(`n_direction` of them); it is None for a forecast that never predicts a move (persistence).
"""
from __future__ import annotations

import numpy as np


def regression_metrics(actual: np.ndarray, predicted: np.ndarray, last: np.ndarray) -> dict:
    actual = np.asarray(actual, np.float64)
    predicted = np.asarray(predicted, np.float64)
    last = np.asarray(last, np.float64)
    err = predicted - actual
    n = int(len(actual))
    if n == 0:
        return {"mape": None, "mae": None, "rmse": None, "mse": None,
                "directional_accuracy": None, "n": 0, "n_direction": 0}
    mse = float(np.mean(err**2))
    true_dir = np.sign(actual - last)
    pred_dir = np.sign(predicted - last)
    moved = true_dir != 0
    n_dir = int(moved.sum())
    if n_dir == 0 or not np.any(pred_dir != 0):
        dir_acc = None
    else:
        dir_acc = float(100.0 * np.mean(pred_dir[moved] == true_dir[moved]))
    return {
        "mape": float(100.0 * np.mean(np.abs(err) / np.abs(actual))),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(mse)),
        "mse": mse,
        "directional_accuracy": dir_acc,
        "n": n,
        "n_direction": n_dir,
    }


def persistence_forecast(last: np.ndarray) -> np.ndarray:
    """The naive baseline: next close = last close."""
    return np.asarray(last, np.float64).copy()


def evaluate_with_baseline(actual, predicted, last) -> tuple[dict, dict]:
    """(model metrics, {"persistence": baseline metrics}) on exactly the same samples."""
    return (regression_metrics(actual, predicted, last),
            {"persistence": regression_metrics(actual, persistence_forecast(last), last)})
