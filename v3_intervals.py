"""Interval baselines for the next candle: rolling, EWMA, GARCH and HAR, as models.

Everything here forecasts quantiles QUANTILES of the next candle's log return
r_i = ln(actual_close_i / last_close_i) for the samples of a `PreparedData`, so also of its
close (last_close * exp(q), `returns_to_closes`). The central intervals are
50 % = (0.25, 0.75), 80 % = (0.10, 0.90) and 90 % = (0.05, 0.95).

What a forecast may see. Sample i's own return is known at the close of candle ends[i] + 1;
every earlier sample j < i has ends[j] < ends[i], so its return is known when sample i is
forecast. A baseline's forecast for sample i uses the returns of samples 0 .. i-1 only (the
candles inside windows dropped at gaps, and the warm-up candles, are not in PreparedData and
are skipped). Validation and test returns enter only as that history ("filtering"), never a
fitted parameter.

Baselines, with the verbs of the point baselines in v3_baselines (`fit(data)` on the
training split, `predict(data, idx)` -> (n, 7) closes, plus `predict_returns(data, idx)` ->
(n, 7) log returns, `params()` and `tuning()`):
- `RollingQuantileBaseline` ('rolling'): empirical quantiles (numpy's linear interpolation) of
  the last N sample returns before the forecast; N is the one of `windows` (those <= the
  training size) with the lowest mean pinball loss on the validation split. Samples with
  fewer than `min_history` earlier returns (the first training samples) get NaN.
- `EwmaBaseline` ('ewma'): RiskMetrics variance s2_i = lam s2_(i-1) + (1 - lam) e_(i-1)^2,
  lam = 0.94, e = r - training mean; quantiles mean + s_i * t_nu(q), with the Student-t
  scaled to unit variance. nu is fitted on the training split (maximum likelihood of the
  unit-variance t on e_i / s_i), unless fixed by `df=`.
- `HarBaseline` ('har'): the HAR forecast of the next candle's range-based volatility s_i
  (v3_har: OLS of ln Parkinson variance on its last-candle, 4-candle, day and week means and
  the forecast candle's hour and weekend, fitted on the training split, frozen after), with
  quantiles s_i * the empirical quantiles (numpy's linear rule) of the standardised training
  returns r_j / s_j. It sees what the others cannot: each candle's high and low, and the clock.
- `GarchBaseline` ('garch'): GARCH(1,1) with a constant mean and Student-t innovations,
  fitted by the `arch` package on the training returns (divided by their std, which arch's
  optimiser likes; the parameters are reported in return units). The one-step variance is
  then filtered through validation and test with those parameters fixed (no refitting), by
  the same recursion arch uses (the tests check it against arch's fitted conditional
  volatility): s2_i = omega + alpha e_(i-1)^2 + beta s2_(i-1).
  Both recursions start (i = 0) from arch's backcast: the 0.94-weighted mean of the first 75
  squared training residuals. That start reaches the first ~75 training forecasts only (its
  weight on sample i is 0.94^i resp. beta^i); no validation or test forecast depends on it.

The metrics they are scored with are v3_interval_scores'. `evaluate_intervals` scores the
model's test quantiles and every baseline on exactly the test split.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats
from scipy.signal import lfilter

from v3_common import log
from v3_har import HarFit, fit_har
from v3_interval_scores import (QUANTILES, check_quantiles, add_confidence_set, interval_metrics,
                                per_sample_pinball)

MIN_HISTORY = 20            # fewest earlier returns a rolling forecast is made from
BACKCAST_OBS = 75           # arch's backcast: first 75 squared residuals, weights 0.94^i
RISKMETRICS_LAMBDA = 0.94
DF_BOUNDS = (2.05, 200.0)   # Student-t degrees of freedom searched when fitting ewma's df


# ---------------------------------------------------------------------------------------
# Plumbing between PreparedData and arrays


def sample_returns(data) -> np.ndarray:
    """(N,) float64 log return of every sample's target candle: ln(actual / last close)."""
    return np.log(np.asarray(data.actual_close, np.float64) /
                  np.asarray(data.last_close, np.float64))


def sample_indices(data, idx) -> np.ndarray:
    """A split slice, a boolean mask or integer indices -> sorted-as-given int64 indices."""
    return np.arange(len(data.ends), dtype=np.int64)[idx]


def returns_to_closes(data, idx, q_returns: np.ndarray) -> np.ndarray:
    """(n, k) log-return quantiles -> (n, k) closes: last_close * exp(q)."""
    last = np.asarray(data.last_close, np.float64)[idx]
    return last[:, None] * np.exp(np.asarray(q_returns, np.float64))


def standardized_to_returns(data, z: np.ndarray) -> np.ndarray:
    """Quantiles of the standardised target (the model's output) -> of the log return."""
    return data.target_mean + data.target_std * np.asarray(z, np.float64)


# ---------------------------------------------------------------------------------------
# Baselines on arrays


def rolling_quantiles(returns: np.ndarray, idx, window: int, *, levels=QUANTILES,
                      min_history: int = MIN_HISTORY) -> np.ndarray:
    """(n, k) empirical quantiles of returns[max(0, i - window):i] for each i in idx; NaN
    rows where fewer than min_history earlier returns exist."""
    r = np.asarray(returns, np.float64)
    idx = np.asarray(idx, np.int64)
    window = int(window)
    if window < 1:
        raise ValueError(f"rolling window must be >= 1, got {window}.")
    out = np.full((len(idx), len(levels)), np.nan)
    full = idx >= window
    if full.any() and len(r) >= window:
        views = np.lib.stride_tricks.sliding_window_view(r, window)  # row j: r[j : j+window]
        out[full] = sorted_row_quantiles(np.sort(views[idx[full] - window], axis=1), levels)
    for k in np.flatnonzero(~full):
        i = int(idx[k])
        if i >= max(1, min_history):
            out[k] = np.quantile(r[:i], levels)
    return out


def sorted_row_quantiles(rows: np.ndarray, levels=QUANTILES) -> np.ndarray:
    """(n, k) quantiles of each row of an (n, m) array sorted along its rows, by numpy's
    default ('linear') rule: position (m - 1) q, interpolated between its neighbours.
    Sorting once and indexing is ~5x faster than np.quantile on many short rows."""
    m = rows.shape[1]
    pos = np.asarray(levels, np.float64) * (m - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, m - 1)
    frac = pos - lo
    a, b = rows[:, lo], rows[:, hi]
    # a + (b - a) f can overshoot b by an ulp: the running maximum keeps the levels in order
    return np.maximum.accumulate(a + (b - a) * frac[None, :], axis=1)


def backcast(resid: np.ndarray) -> float:
    """arch's start of a variance recursion: 0.94^j-weighted mean of the first 75 e_j^2."""
    e = np.asarray(resid, np.float64)[:BACKCAST_OBS]
    if len(e) == 0:
        raise ValueError("backcast needs at least one residual.")
    w = 0.94 ** np.arange(len(e))
    return float(np.sum(e * e * w) / w.sum())


def garch_variance(resid: np.ndarray, omega: float, alpha: float, beta: float,
                   start: float) -> np.ndarray:
    """(n,) one-step variances s2_i = omega + alpha e_(i-1)^2 + beta s2_(i-1), the lagged
    e^2 and s2 both `start` at i = 0 (arch's recursion): s2_i uses e_0 .. e_(i-1) only."""
    e = np.asarray(resid, np.float64)
    if len(e) == 0:
        return np.empty(0)
    u = omega + alpha * np.r_[start, e[:-1] ** 2]
    return lfilter([1.0], [1.0, -beta], u, zi=[beta * start])[0]


def ewma_variance(resid: np.ndarray, lam: float, start: float) -> np.ndarray:
    """RiskMetrics: s2_i = lam s2_(i-1) + (1 - lam) e_(i-1)^2 (an IGARCH with omega 0)."""
    return garch_variance(resid, 0.0, 1.0 - lam, lam, start)


def t_unit_ppf(levels, nu: float) -> np.ndarray:
    """Quantiles of the Student-t with nu > 2 degrees of freedom, scaled to unit variance."""
    return stats.t.ppf(np.asarray(levels, np.float64), nu) * math.sqrt((nu - 2.0) / nu)


def t_unit_loglik(z: np.ndarray, nu: float) -> float:
    """Log-likelihood of z under the unit-variance Student-t with nu degrees of freedom."""
    z = np.asarray(z, np.float64)
    c = (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2)
         - 0.5 * math.log(math.pi * (nu - 2.0)))
    return float(len(z) * c - (nu + 1) / 2 * np.sum(np.log1p(z * z / (nu - 2.0))))


def fit_t_df(z: np.ndarray, bounds: tuple[float, float] = DF_BOUNDS) -> float:
    """Maximum-likelihood degrees of freedom of a unit-variance Student-t for z."""
    z = np.asarray(z, np.float64)
    z = z[np.isfinite(z)]
    if len(z) < 2:
        raise ValueError("fit_t_df needs at least 2 finite values.")
    res = optimize.minimize_scalar(lambda nu: -t_unit_loglik(z, nu), bounds=bounds,
                                   method="bounded", options={"xatol": 1e-4})
    return float(res.x)


def fit_garch_t(train_returns: np.ndarray) -> dict:
    """GARCH(1,1), constant mean, Student-t innovations, fitted by `arch` on training returns.

    Fitted on returns / their std (arch's optimiser wants values of order 1); reported in
    return units: mu, omega (return units^2), alpha, beta, nu, plus `start` (the backcast the
    fit used, return units^2), the log-likelihood and whether the optimiser converged.
    """
    # arch is imported here on purpose: it costs ~1.5 s to import (statsmodels, pandas), and
    # modules that only convert or score quantiles (predict, report) never need it
    from arch import arch_model  # noqa: PLC0415  (lazy, see above)
    r = np.asarray(train_returns, np.float64)
    if len(r) < 10 or not np.isfinite(r).all():
        raise ValueError(f"fit_garch_t needs >= 10 finite training returns, got {len(r)}.")
    scale = float(r.std())
    scale = scale if scale > 1e-12 else 1.0
    x = r / scale
    res = arch_model(x, mean="Constant", vol="GARCH", p=1, q=1, dist="t",
                     rescale=False).fit(disp="off", show_warning=False)
    p = res.params
    converged = int(res.convergence_flag) == 0
    if not converged:
        log.warning("garch baseline: arch's optimiser did not converge (flag %s); using its "
                    "last parameters", res.convergence_flag)
    # the fit's backcast: from the starting values' residuals, x - mean(x)
    start = backcast(x - x.mean()) * scale**2
    return {"mu": float(p["mu"]) * scale, "omega": float(p["omega"]) * scale**2,
            "alpha": float(p["alpha[1]"]), "beta": float(p["beta[1]"]), "nu": float(p["nu"]),
            "start": start, "loglik": float(res.loglikelihood), "converged": converged,
            "fit_scale": scale}


# ---------------------------------------------------------------------------------------
# Baselines as models: fit(data) on the training split, predict(data, idx) -> (n, 7) closes


class _QuantileModel:
    """Shared verbs: predict() = closes from predict_returns()."""
    name = ""

    def predict_returns(self, data, idx) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, data, idx) -> np.ndarray:
        """(n, 7) closes at QUANTILES for the samples idx."""
        return returns_to_closes(data, idx, self.predict_returns(data, idx))


class RollingQuantileBaseline(_QuantileModel):
    """Empirical quantiles of the last N returns before each forecast, N chosen on validation."""
    name = "rolling"

    def __init__(self, *, windows: tuple[int, ...] = (48, 96, 192, 384, 768),
                 min_history: int = MIN_HISTORY):
        self.windows = tuple(int(w) for w in windows)
        self.min_history = int(min_history)

    def fit(self, data) -> "RollingQuantileBaseline":
        r = sample_returns(data)
        va = sample_indices(data, data.split("val"))
        y = r[va]
        candidates = [w for w in self.windows if w <= data.n_train] or [int(data.n_train)]
        self.val_pinball = {}
        for w in candidates:
            q = rolling_quantiles(r, va, w, min_history=self.min_history)
            self.val_pinball[w] = float(per_sample_pinball(y, q).mean())
        self.window = min(candidates, key=lambda w: (self.val_pinball[w], w))
        return self

    def predict_returns(self, data, idx) -> np.ndarray:
        return rolling_quantiles(sample_returns(data), sample_indices(data, idx), self.window,
                                 min_history=self.min_history)

    def params(self) -> dict:
        return {"window": self.window}

    def tuning(self) -> dict:
        return {"window": self.window, "chosen_on": "validation mean pinball loss",
                "val_pinball_by_window": {str(w): v for w, v in self.val_pinball.items()}}


class EwmaBaseline(_QuantileModel):
    """RiskMetrics EWMA variance (lambda 0.94), Student-t quantiles (df fitted on training)."""
    name = "ewma"

    def __init__(self, *, lam: float = RISKMETRICS_LAMBDA, df: float | None = None):
        self.lam = float(lam)
        self.fixed_df = None if df is None else float(df)

    def fit(self, data) -> "EwmaBaseline":
        tr = sample_returns(data)[data.split("train")]
        self.mean = float(tr.mean())
        e = tr - self.mean
        self.start = backcast(e)
        s2 = ewma_variance(e, self.lam, self.start)
        self.df = self.fixed_df if self.fixed_df is not None else fit_t_df(e / np.sqrt(s2))
        return self

    def predict_returns(self, data, idx) -> np.ndarray:
        e = sample_returns(data) - self.mean
        s = np.sqrt(ewma_variance(e, self.lam, self.start))[sample_indices(data, idx)]
        return self.mean + s[:, None] * t_unit_ppf(QUANTILES, self.df)[None, :]

    def params(self) -> dict:
        return {"lambda": self.lam, "mean": self.mean, "df": self.df, "start": self.start}

    def tuning(self) -> dict:
        return {**self.params(), "df_source": "fixed" if self.fixed_df is not None else
                "maximum likelihood on the training split"}


class GarchBaseline(_QuantileModel):
    """GARCH(1,1)-t from `arch`, fitted on training, filtered through val/test, no refit."""
    name = "garch"

    def fit(self, data) -> "GarchBaseline":
        self.fitted = fit_garch_t(sample_returns(data)[data.split("train")])
        return self

    def variance(self, data) -> np.ndarray:
        """(N,) one-step variance of every sample's return, with the fitted parameters."""
        p = self.fitted
        return garch_variance(sample_returns(data) - p["mu"], p["omega"], p["alpha"],
                              p["beta"], p["start"])

    def predict_returns(self, data, idx) -> np.ndarray:
        p = self.fitted
        s = np.sqrt(self.variance(data))[sample_indices(data, idx)]
        return p["mu"] + s[:, None] * t_unit_ppf(QUANTILES, p["nu"])[None, :]

    def params(self) -> dict:
        return dict(self.fitted)

    def tuning(self) -> dict:
        p = self.fitted
        return {**p, "persistence": p["alpha"] + p["beta"],
                "fitted_on": "training split (arch, GARCH(1,1), constant mean, Student-t)"}


class HarBaseline(_QuantileModel):
    """HAR on range-based variance and the clock (v3_har), OLS on the training split; its
    volatility x the empirical quantiles of the standardised training returns."""
    name = "har"

    def fit(self, data) -> "HarBaseline":
        tr = data.split("train")
        self.fitted: HarFit = fit_har(data.range_var[tr], data.next_range_var[tr],
                                      data.target_open_time[tr])
        z = sample_returns(data)[tr] / self.fitted.volatility(data.range_var[tr],
                                                              data.target_open_time[tr])
        self.z_quantiles = np.quantile(z, QUANTILES)
        return self

    def predict_returns(self, data, idx) -> np.ndarray:
        i = sample_indices(data, idx)
        s = self.fitted.volatility(data.range_var[i], data.target_open_time[i])
        return s[:, None] * self.z_quantiles[None, :]

    def params(self) -> dict:
        return {**self.fitted.to_dict(), "z_quantiles": [float(v) for v in self.z_quantiles]}

    def tuning(self) -> dict:
        return {**self.params(), "fitted_on": "training split (OLS of ln Parkinson variance; "
                                              "standardised-return quantiles)"}


def interval_baseline_models() -> list:
    return [RollingQuantileBaseline(), EwmaBaseline(), GarchBaseline(), HarBaseline()]


# ---------------------------------------------------------------------------------------
# One pair


def evaluate_intervals(data, model_quantiles: np.ndarray | None = None, *,
                       baselines: list | None = None) -> dict:
    """Score the model's test quantiles and every interval baseline on the test split.

    `model_quantiles`: (n_test, 7) quantiles of the next log return (not standardised: see
    `standardized_to_returns`), or None. Baselines are fitted here (training split; rolling's
    window chosen on validation). Returns {"model": interval block or None,
    "baseline": {name: {"interval": block}}, "predictions": {name: (n_test, 7) closes, with
    "model" when given}, "tuning": {name: fitted/chosen values}}.
    """
    idx = sample_indices(data, data.split("test"))
    y = sample_returns(data)[idx]
    models = baselines if baselines is not None else interval_baseline_models()
    preds, tuning = {}, {}
    for m in models:
        m.fit(data)
        preds[m.name] = check_quantiles(m.predict_returns(data, idx), len(idx))
        tuning[m.name] = m.tuning()
    losses = {name: per_sample_pinball(y, q) for name, q in preds.items()}
    out = {"model": None, "baseline": {}, "predictions": {}, "tuning": tuning}
    if model_quantiles is not None:
        mq = check_quantiles(model_quantiles, len(idx))
        out["model"] = interval_metrics(y, mq, baseline_losses=losses)
        add_confidence_set(out["model"], {"model": per_sample_pinball(y, mq), **losses})
        out["predictions"]["model"] = returns_to_closes(data, idx, mq)
    for name, q in preds.items():
        out["baseline"][name] = {"interval": interval_metrics(y, q, baseline_losses=losses)}
        out["predictions"][name] = returns_to_closes(data, idx, q)
    return out


