"""Forecast metrics with their uncertainty, the fee-aware backtest, and the across-pair summary.

Pure functions of arrays of next-close prices (no torch, no files): v3_evaluation applies them
to a pair's test samples, for the LSTM and every baseline (v3_baselines) alike.

Metrics (`forecast_metrics`), units in names or below:
- `mape` (%), `mae`, `rmse` (price units), `mse` (price units squared).
- `mase`: MAE / the in-sample one-step naive MAE (mean |close_(t+1) - close_t| over the
  training samples). Below 1 beats a naive forecast in-sample; persistence sits near 1.
- `skill` = 1 - MAE / MAE_persistence (0 for persistence, > 0 better, < 0 worse), with an
  approximate 95 % interval from the Diebold-Mariano standard error (MAE_persistence held
  fixed): `skill_ci95_low`, `skill_ci95_high`.
- `directional_accuracy` (%): share of samples with sign(predicted - last) == sign(actual -
  last), over the `n_direction` samples whose actual move is not zero (a forecast of "no
  move" counts as a miss); None for a forecast that never predicts a move (persistence).
  `direction_hits` of `n_direction`, a 95 % Wilson interval (`direction_ci95_low/high`, %) and
  an exact two-sided binomial p-value against 50 % (`direction_p_value`).
- `up_share` (%): share of samples forecast "up" (predicted > last); `sign_changes`: how often
  the forecast direction flips from one sample to the next (samples forecast "no move"
  skipped); `constant_direction`: True when every forecast move has the same sign (then the
  directional accuracy only measures how often the market went that way), None when the
  forecast never predicts a move.
- Diebold-Mariano test against persistence, loss = absolute error (so it tests exactly what
  `skill` measures). The loss differences of one-step forecasts are autocorrelated (the size
  of errors clusters with volatility), so var(mean d) is the Newey-West (HAC, Bartlett
  kernel) estimate with L = floor(4 (n / 100)^(2/9)) lags (Newey and West 1994's rule;
  `newey_west_lags`, `hac_variance`), not var(d) / n, which overstates significance; the
  statistic is compared with the normal distribution (asymptotic; the test split has
  hundreds of samples). `dm_stat` < 0 means the forecast's loss is lower; `dm_p_value` is
  two-sided; `dm_p_better` is one-sided (H1: the forecast has the lower loss) and is what
  "beats persistence significantly" uses.

The normal distribution, the exact binomial test and the Wilson interval are scipy.stats';
Holm's step-down adjustment is statsmodels' `multipletests`; the HAC variance is a few lines
here, checked against statsmodels' OLS HAC covariance in the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from v3_common import INTERVAL_MS, ConfigError

Z95 = float(stats.norm.ppf(0.975))  # 1.95996..., the 97.5 % quantile of the standard normal
METRIC_FIELDS = ("mape", "mae", "rmse", "mse", "mase", "skill", "skill_ci95_low",
                 "skill_ci95_high", "directional_accuracy", "direction_hits", "n_direction",
                 "direction_ci95_low", "direction_ci95_high", "direction_p_value", "dm_stat",
                 "dm_p_value", "dm_p_better", "n", "up_share", "sign_changes",
                 "constant_direction")
BASELINES = ("persistence", "drift", "linear")



# ---------------------------------------------------------------------------------------
# Statistics (the distributions and tests from scipy.stats)


def normal_cdf(x: float) -> float:
    """P(Z <= x) for a standard normal Z (scipy.stats.norm)."""
    return float(stats.norm.cdf(x))


def _check_trials(name: str, hits: int, n: int) -> None:
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"{name} needs n >= 1 trials and 0 <= hits <= n, got "
                         f"hits={hits}, n={n}.")


def wilson_interval(hits: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion hits/n (95 % for the default z), as fractions in
    [0, 1] (scipy.stats.binomtest(...).proportion_ci(method='wilson'))."""
    _check_trials("wilson_interval", hits, n)
    ci = stats.binomtest(int(hits), int(n)).proportion_ci(
        confidence_level=1.0 - 2.0 * float(stats.norm.sf(z)), method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def binomial_p_value(hits: int, n: int) -> float:
    """Exact two-sided binomial test of hits/n against 1/2 (scipy.stats.binomtest)."""
    _check_trials("binomial_p_value", hits, n)
    return float(stats.binomtest(int(hits), int(n), 0.5).pvalue)


def newey_west_lags(n: int) -> int:
    """Lags of the Newey-West variance for n observations: floor(4 (n / 100)^(2/9)) (Newey
    and West 1994; 5 for 400 samples, 7 for 3,000)."""
    return int(math.floor(4.0 * (max(int(n), 1) / 100.0) ** (2.0 / 9.0)))


def hac_variance(d: np.ndarray, lags: int | None = None) -> float:
    """Newey-West (HAC, Bartlett kernel) variance of the mean of d: (gamma_0 + 2 sum_{l=1..L}
    (1 - l / (L + 1)) gamma_l) / n, gamma_l the autocovariance at lag l (divided by n), L =
    newey_west_lags(n) unless given. Equals statsmodels' OLS(d, 1) HAC covariance (no small-
    sample correction). The Bartlett weights keep it >= 0 (max(., 0) only absorbs
    rounding)."""
    d = np.asarray(d, np.float64)
    n = len(d)
    if n == 0:
        return float("nan")
    lags = newey_west_lags(n) if lags is None else int(lags)
    e = d - d.mean()
    s = float(e @ e) / n
    for lag in range(1, min(lags, n - 1) + 1):
        s += 2.0 * (1.0 - lag / (lags + 1.0)) * float(e[lag:] @ e[:-lag]) / n
    return max(s, 0.0) / n


def diebold_mariano(errors_a: np.ndarray, errors_b: np.ndarray, *, loss: str = "absolute",
                    lags: int | None = None) -> dict:
    """Diebold-Mariano test of forecast a against forecast b.

    d_t = L(e_a,t) - L(e_b,t), L = |e| ('absolute') or e^2 ('squared'); var(mean d) is the
    Newey-West HAC estimate (`hac_variance`, `lags` default newey_west_lags(n)). Returns the
    statistic (< 0: a has the lower loss), the two-sided p-value, the one-sided p-value of
    "a is better", the mean loss difference, its standard error and the lags used.
    Identical forecasts give stat 0 and p 1.
    """
    a, b = np.asarray(errors_a, np.float64), np.asarray(errors_b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"diebold_mariano needs two 1-D error series of the same length, got "
                         f"shapes {a.shape} and {b.shape}.")
    if loss not in ("absolute", "squared"):
        raise ValueError(f"loss must be 'absolute' or 'squared', got {loss!r}.")
    la, lb = (np.abs(a), np.abs(b)) if loss == "absolute" else (a * a, b * b)
    d = la - lb
    n = len(d)
    if n < 2:
        return {"stat": None, "p_value": None, "p_better": None, "mean_diff": None, "se": None,
                "lags": None}
    lags = newey_west_lags(n) if lags is None else int(lags)
    mean = float(d.mean())
    se = float(math.sqrt(hac_variance(d, lags)))
    if se == 0.0 or not math.isfinite(se):
        # d is constant: no difference at all, or a difference without any noise
        if mean == 0.0:
            return {"stat": 0.0, "p_value": 1.0, "p_better": 0.5, "mean_diff": 0.0, "se": 0.0,
                    "lags": lags}
        return {"stat": None, "p_value": 0.0, "p_better": 0.0 if mean < 0 else 1.0,
                "mean_diff": mean, "se": 0.0, "lags": lags}
    stat = mean / se
    return {"stat": stat, "p_value": min(1.0, float(2.0 * stats.norm.sf(abs(stat)))),
            "p_better": normal_cdf(stat), "mean_diff": mean, "se": se, "lags": lags}


def holm_adjust(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (statsmodels' multipletests, method 'holm'); None
    stays None and does not count as a test."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        adjusted = multipletests([float(p_values[i]) for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


# ---------------------------------------------------------------------------------------
# Metrics


def naive_mae(last: np.ndarray, actual: np.ndarray) -> float:
    """The in-sample one-step naive MAE: mean |close_(t+1) - close_t| (MASE's scale)."""
    last, actual = np.asarray(last, np.float64), np.asarray(actual, np.float64)
    if len(last) == 0:
        raise ValueError("naive_mae needs at least one training sample.")
    return float(np.mean(np.abs(actual - last)))


def regression_metrics(actual: np.ndarray, predicted: np.ndarray, last: np.ndarray) -> dict:
    """The plain metrics (mape %, mae, rmse, mse, directional_accuracy %, n, n_direction)."""
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


def forecast_metrics(actual: np.ndarray, predicted: np.ndarray, last: np.ndarray, *,
                     mase_scale: float | np.ndarray) -> dict:
    """Every metric of METRIC_FIELDS for one forecast, against persistence on the same samples.

    `mase_scale` is the training split's naive MAE (`naive_mae`), or one value per sample
    when samples come from several walk-forward folds.
    """
    actual = np.asarray(actual, np.float64)
    predicted = np.asarray(predicted, np.float64)
    last = np.asarray(last, np.float64)
    if not (actual.shape == predicted.shape == last.shape):
        raise ValueError(f"actual, predicted and last must have the same length, got "
                         f"{actual.shape}, {predicted.shape}, {last.shape}.")
    out = dict.fromkeys(METRIC_FIELDS)
    out.update(regression_metrics(actual, predicted, last))
    out["direction_hits"] = 0
    n = out["n"]
    if n == 0:
        return out
    err, err_p = predicted - actual, last - actual
    scale = np.broadcast_to(np.asarray(mase_scale, np.float64), err.shape)
    out["mase"] = float(np.mean(np.abs(err) / scale)) if np.all(scale > 0) else None
    mae_p = float(np.mean(np.abs(err_p)))
    dm = diebold_mariano(err, err_p, loss="absolute")
    if mae_p > 0:
        out["skill"] = 1.0 - out["mae"] / mae_p
        if dm["se"] is not None:
            out["skill_ci95_low"] = -(dm["mean_diff"] + Z95 * dm["se"]) / mae_p
            out["skill_ci95_high"] = -(dm["mean_diff"] - Z95 * dm["se"]) / mae_p
    out["dm_stat"], out["dm_p_value"], out["dm_p_better"] = dm["stat"], dm["p_value"], dm["p_better"]
    if out["directional_accuracy"] is not None:
        moved = actual != last
        hits = int(np.sum(np.sign(predicted - last)[moved] == np.sign(actual - last)[moved]))
        lo, hi = wilson_interval(hits, out["n_direction"])
        out.update(direction_hits=hits, direction_ci95_low=100.0 * lo,
                   direction_ci95_high=100.0 * hi,
                   direction_p_value=binomial_p_value(hits, out["n_direction"]))
    out.update(direction_profile(predicted, last))
    return out


def direction_profile(predicted: np.ndarray, last: np.ndarray) -> dict:
    """How varied a forecast's direction is: `up_share` (% of samples forecast up),
    `sign_changes` (flips between consecutive forecast moves, "no move" skipped) and
    `constant_direction` (every forecast move has one sign; None when no move is forecast)."""
    sign = np.sign(np.asarray(predicted, np.float64) - np.asarray(last, np.float64))
    if len(sign) == 0:
        return {"up_share": None, "sign_changes": 0, "constant_direction": None}
    moves = sign[sign != 0]
    changes = int(np.count_nonzero(np.diff(moves))) if len(moves) else 0
    return {"up_share": float(100.0 * np.mean(sign > 0)), "sign_changes": changes,
            "constant_direction": bool(changes == 0) if len(moves) else None}


# ---------------------------------------------------------------------------------------
# A fee-aware backtest of the predicted direction


def periods_per_year(interval: str) -> float:
    if interval not in INTERVAL_MS:
        raise ConfigError(f"timeframe {interval!r} has no fixed length; use one of "
                          f"{', '.join(INTERVAL_MS)}.")
    return 365.25 * 24 * 3600 * 1000 / INTERVAL_MS[interval]  # crypto trades around the clock


def backtest_positions(positions: np.ndarray, last: np.ndarray, actual: np.ndarray, *,
                       fee_per_side: float, interval: str) -> dict:
    """Trade `positions` (1 long, 0 flat, -1 short), one per sample.

    The position for sample t is taken at the close of candle t (`last`), the price the
    forecast was made at, and held through candle t+1 (to `actual`). Changing the position
    costs `fee_per_side` per unit traded (flat -> long 1 side, long -> short 2 sides), charged
    on the equity at the moment of the trade; the last position is closed (and charged) after
    the last sample. Returns total return, annualised Sharpe ratio, maximum drawdown (all
    fractions), trades (position changes, the final close included), fees paid and the
    equity curve (start 1.0, one value per sample).
    """
    pos = np.asarray(positions, np.float64)
    last, actual = np.asarray(last, np.float64), np.asarray(actual, np.float64)
    if not (pos.shape == last.shape == actual.shape) or pos.ndim != 1:
        raise ValueError(f"positions, last and actual must be 1-D of one length, got "
                         f"{pos.shape}, {last.shape}, {actual.shape}.")
    if not 0 <= fee_per_side < 1:
        raise ConfigError(f"fee_per_side must be a fraction in [0, 1) (0.001 = 0.1 %), "
                          f"got {fee_per_side!r}.")
    n = len(pos)
    if n == 0:
        return {"total_return": None, "sharpe": None, "max_drawdown": None, "trades": 0,
                "fees_paid": 0.0, "exposure": None, "equity": [1.0]}
    move = actual / last - 1.0
    turnover = np.abs(np.diff(np.r_[0.0, pos]))  # traded at the close of candle t
    growth = (1.0 - fee_per_side * turnover) * (1.0 + pos * move)
    growth[-1] *= 1.0 - fee_per_side * abs(pos[-1])  # close the position after the last candle
    equity = np.cumprod(growth)
    step_ret = growth - 1.0
    sd = float(step_ret.std(ddof=1)) if n > 1 else 0.0
    sharpe = float(step_ret.mean() / sd * math.sqrt(periods_per_year(interval))) if sd > 0 else None
    curve = np.r_[1.0, equity]
    drawdown = 1.0 - curve / np.maximum.accumulate(curve)
    return {"total_return": float(equity[-1] - 1.0), "sharpe": sharpe,
            "max_drawdown": float(drawdown.max()),
            "trades": int(np.count_nonzero(turnover)) + int(pos[-1] != 0),
            "fees_paid": float(fee_per_side * (turnover.sum() + abs(pos[-1]))),
            "exposure": float(np.mean(pos != 0)), "equity": curve.tolist()}


def direction_positions(predicted: np.ndarray, last: np.ndarray, *, mode: str) -> np.ndarray:
    """'long_flat': 1 when the forecast is above the last close, else 0;
    'long_short': 1 above, -1 below, 0 when the forecast is exactly the last close."""
    up = np.sign(np.asarray(predicted, np.float64) - np.asarray(last, np.float64))
    if mode == "long_flat":
        return (up > 0).astype(np.float64)
    if mode == "long_short":
        return up
    raise ConfigError(f"backtest mode must be 'long_flat' or 'long_short', got {mode!r}.")


def backtest_direction(predicted: np.ndarray, last: np.ndarray, actual: np.ndarray, *,
                       interval: str, fee_per_side: float = 0.001, keep_equity: bool = False) -> dict:
    """The forecast's direction traded long/flat and long/short, next to buy-and-hold.
    Equity curves are dropped unless `keep_equity` (the plots recompute them). `test_market`
    says what the market itself did over the samples (`market_move`)."""
    out = {"fee_per_side": fee_per_side,
           "execution": "position set at the close of candle t (the forecast's last close), "
                        "held through candle t+1; fees per side on every position change; "
                        "closed after the last test candle"}
    for mode in ("long_flat", "long_short"):
        out[mode] = backtest_positions(direction_positions(predicted, last, mode=mode), last,
                                       actual, fee_per_side=fee_per_side, interval=interval)
    out["buy_and_hold"] = backtest_positions(np.ones(len(np.asarray(last))), last, actual,
                                             fee_per_side=fee_per_side, interval=interval)
    out["test_market"] = market_move(last, actual)
    if not keep_equity:
        for mode in ("long_flat", "long_short", "buy_and_hold"):
            del out[mode]["equity"]
    return out


def market_move(last: np.ndarray, actual: np.ndarray) -> dict:
    """What the market did over the samples: `change` (fraction, from the first sample's last
    close to the last sample's actual close, no fees), `up_share` (% of samples whose close
    rose) and `down_share` (% that fell)."""
    last, actual = np.asarray(last, np.float64), np.asarray(actual, np.float64)
    if len(last) == 0:
        return {"change": None, "up_share": None, "down_share": None, "n": 0}
    return {"change": float(actual[-1] / last[0] - 1.0),
            "up_share": float(100.0 * np.mean(actual > last)),
            "down_share": float(100.0 * np.mean(actual < last)), "n": int(len(last))}


# ---------------------------------------------------------------------------------------
# Across pairs


@dataclass(frozen=True)
class SummaryConfig:
    alpha: float = 0.05         # significance level, after the Holm correction across pairs
    correction: str = "holm"    # Holm-Bonferroni (controls the family-wise error rate)


def summarize_pairs(entries: dict[str, dict], *, cfg: SummaryConfig = SummaryConfig()) -> dict:
    """Across-pair summary of evaluated entries {pair key: results entry with 'test'}.

    Median skill of the model and of each baseline; how many pairs beat (or lose to)
    persistence significantly by the one-sided DM test with Holm-adjusted p < alpha; the
    distribution of directional accuracy (min / median / max, a histogram) and how many pairs
    are significantly above 50 % (two-sided binomial, Holm), constant-direction forecasts
    counted apart and kept out of that test; backtest medians and the test markets' moves.
    """
    keys = [k for k, e in entries.items() if (e.get("test") or {}).get("n")]
    tests = [entries[k]["test"] for k in keys]
    p_better = holm_adjust([t.get("dm_p_better") for t in tests])
    p_worse = holm_adjust([None if t.get("dm_p_better") is None else 1.0 - t["dm_p_better"]
                           for t in tests])
    beat = [k for k, p in zip(keys, p_better) if p is not None and p < cfg.alpha]
    worse = [k for k, p in zip(keys, p_worse) if p is not None and p < cfg.alpha]
    direction, p_dir = _direction_summary(keys, tests, cfg)
    out = {
        "n_pairs": len(keys), "pairs": keys,
        "synthetic": any(bool(entries[k].get("synthetic")) for k in keys),
        "median_skill": {"model": _median(t.get("skill") for t in tests),
                         **{b: _median((entries[k].get("baseline") or {}).get(b, {}).get("skill")
                                       for k in keys) for b in BASELINES}},
        "significance": {"alpha": cfg.alpha, "correction": cfg.correction,
                         "test": "Diebold-Mariano, absolute error, one-sided, vs persistence"},
        "beat_persistence": {"count": len(beat), "pairs": beat},
        "worse_than_persistence": {"count": len(worse), "pairs": worse},
        "directional_accuracy": direction,
        "guide_targets": {  # the guide's promise: MAPE < 0.02 %, direction > 90 %
            "mape_below_0.02_pct": sum(t.get("mape") is not None and t["mape"] < 0.02 for t in tests),
            "direction_above_90_pct": sum((t.get("directional_accuracy") or 0) > 90 for t in tests)},
        "per_pair": {k: {"skill": t.get("skill"), "dm_p_better": t.get("dm_p_better"),
                         "dm_p_better_holm": pb, "dm_p_worse_holm": pw,
                         "directional_accuracy": t.get("directional_accuracy"),
                         "direction_p_value": t.get("direction_p_value"), "direction_p_holm": pd_,
                         "constant_direction": t.get("constant_direction")}
                     for k, t, pb, pw, pd_ in zip(keys, tests, p_better, p_worse, p_dir)},
    }
    bt = [entries[k].get("backtest") for k in keys if entries[k].get("backtest")]
    if bt:
        out["backtest"] = _backtest_summary(bt)
    return out


def _median(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(np.median(vals)) if vals else None


def _direction_summary(keys: list[str], tests: list[dict], cfg: SummaryConfig
                       ) -> tuple[dict, list[float | None]]:
    """The directional-accuracy part of the summary and the Holm-adjusted p-values per pair.

    A constant-direction forecast's accuracy is the base rate of its one direction, not a test
    of forecasting: it is counted apart and left out of the binomial tests (and their Holm
    family), so it is never "significantly above 50 %"."""
    const = [k for k, t in zip(keys, tests) if t.get("constant_direction")]
    p_dir = holm_adjust([None if t.get("constant_direction") else t.get("direction_p_value")
                         for t in tests])
    dir_acc = [t.get("directional_accuracy") for t in tests]
    dir_sig = [k for k, p, a in zip(keys, p_dir, dir_acc)
               if p is not None and p < cfg.alpha and a is not None and a > 50]
    valid = [a for a in dir_acc if a is not None]
    counts, edges = np.histogram(valid, bins=np.arange(30, 72.5, 2.5)) if valid else ([], [])
    return {"min": min(valid) if valid else None, "median": _median(valid),
            "max": max(valid) if valid else None,
            "above_50_significant": {"count": len(dir_sig), "pairs": dir_sig},
            "constant_direction": {"count": len(const), "pairs": const},
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
            }, p_dir


def _backtest_summary(bt: list[dict]) -> dict:
    """Medians of the backtests over pairs, and how the test markets moved."""
    markets = [b["test_market"] for b in bt if b.get("test_market")]
    out = {
        "median_total_return": {m: _median(b[m]["total_return"] for b in bt)
                                for m in ("long_flat", "long_short", "buy_and_hold")},
        "long_flat_beats_buy_and_hold": sum(
            b["long_flat"]["total_return"] > b["buy_and_hold"]["total_return"] for b in bt),
        "long_short_beats_buy_and_hold": sum(
            b["long_short"]["total_return"] > b["buy_and_hold"]["total_return"] for b in bt),
        "median_trades": {m: _median(b[m]["trades"] for b in bt) for m in ("long_flat", "long_short")},
        "median_long_flat_exposure": _median(b["long_flat"]["exposure"] for b in bt),
        "n_pairs": len(bt)}
    if markets:
        out["test_market"] = {"median_change": _median(m["change"] for m in markets),
                              "median_up_share": _median(m["up_share"] for m in markets),
                              "rose": sum((m["change"] or 0) > 0 for m in markets),
                              "fell": sum((m["change"] or 0) < 0 for m in markets),
                              "n_pairs": len(markets)}
    return out
