"""Calibrated intervals for the next candle: quantile baselines and interval metrics.

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
- `GarchBaseline` ('garch'): GARCH(1,1) with a constant mean and Student-t innovations,
  fitted by the `arch` package on the training returns (divided by their std, which arch's
  optimiser likes; the parameters are reported in return units). The one-step variance is
  then filtered through validation and test with those parameters fixed (no refitting), by
  the same recursion arch uses (the tests check it against arch's fitted conditional
  volatility): s2_i = omega + alpha e_(i-1)^2 + beta s2_(i-1).
  Both recursions start (i = 0) from arch's backcast: the 0.94-weighted mean of the first 75
  squared training residuals. That start reaches the first ~75 training forecasts only (its
  weight on sample i is 0.94^i resp. beta^i); no validation or test forecast depends on it.

Metrics (`interval_metrics`, one JSON block; `INTERVAL_FIELDS` in order):
- `quantiles`: the levels, [0.05, ..., 0.95].
- `pinball`: mean pinball loss over samples and the 7 quantiles, on the log return in percent
  (100 x ln(next/last), so ~ % of price); `pinball_per_quantile` {"0.05": ..} the same per
  level.
- `coverage` {"50","80","90"}: share (a fraction in [0, 1]) of samples with
  low <= r <= high; `coverage_p`: exact two-sided binomial test of the hits against the
  nominal share (scipy.stats.binomtest).
- `independence_p_80`: Christoffersen's (1998) LR test that the 80 % interval's misses are
  independent (first-order Markov alternative, chi-square with 1 df); None when every
  sample is a hit or every one a miss (no transition can be estimated).
- `width_80_pct`: mean width of the 80 % interval of the close, in % of the last close:
  100 x mean(exp(q90) - exp(q10)).
- `qlike`: mean(ln h + y^2 / h), y = 100 r, h = the variance implied by the quantiles: the
  5-95 % spread of a normal, h = ((q95 - q05) / (2 x 1.6449))^2 (in %^2). It is one fixed
  map from quantiles to a variance, applied to every forecast alike; lower is better.
  (Patton's QLIKE up to a term without h; this form allows y = 0.)
- `skill` {"rolling","ewma","garch"}: 1 - pinball / pinball(baseline) on the same samples;
  `dm_p` {same}: one-sided Diebold-Mariano p-value (v3_metrics.diebold_mariano, h = 1) of
  "this forecast has the lower per-sample pinball loss" (the per-sample loss is the mean over
  the 7 quantiles). A baseline's block compares it with the others (and with itself: skill 0,
  p 0.5). None where that baseline was not run.
- `n`: samples scored.

`evaluate_intervals` scores the model's test quantiles and every baseline on exactly the test
split; `summarize_intervals` sums pairs up (median skill, pairs that beat each baseline
significantly after Holm, pairs whose 80 % coverage is rejected).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats
from scipy.signal import lfilter

from v3_common import log
from v3_metrics import diebold_mariano, holm_adjust

QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)
QUANTILE_COLUMNS = ("p05", "p10", "p25", "p50", "p75", "p90", "p95")  # predictions CSV
CENTRAL_INTERVALS = {"50": (0.25, 0.75), "80": (0.10, 0.90), "90": (0.05, 0.95)}
INTERVAL_BASELINES = ("rolling", "ewma", "garch")
INTERVAL_FIELDS = ("quantiles", "pinball", "pinball_per_quantile", "coverage", "coverage_p",
                   "independence_p_80", "width_80_pct", "qlike", "skill", "dm_p", "n")
PCT = 100.0                 # losses are on 100 x log return: ~ % of price
Z95_ONE_SIDED = 1.6448536269514722  # the 95 % quantile of the standard normal
MIN_HISTORY = 20            # fewest earlier returns a rolling forecast is made from
BACKCAST_OBS = 75           # arch's backcast: first 75 squared residuals, weights 0.94^i
RISKMETRICS_LAMBDA = 0.94
DF_BOUNDS = (2.05, 200.0)   # Student-t degrees of freedom searched when fitting ewma's df

_LEVEL_INDEX = {q: i for i, q in enumerate(QUANTILES)}


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


def check_quantiles(q: np.ndarray, n: int | None = None) -> np.ndarray:
    """(n, 7) float64 finite, non-crossing quantiles (in QUANTILES order), or ValueError."""
    q = np.asarray(q, np.float64)
    if q.ndim != 2 or q.shape[1] != len(QUANTILES) or (n is not None and q.shape[0] != n):
        raise ValueError(f"quantile forecasts must have shape (n, {len(QUANTILES)}) for the "
                         f"levels {QUANTILES}{'' if n is None else f' with n = {n}'}, got "
                         f"{q.shape}.")
    if not np.isfinite(q).all():
        raise ValueError(f"quantile forecasts hold {int((~np.isfinite(q)).sum())} NaN/inf "
                         f"value(s); score only samples with a full forecast.")
    crossing = np.diff(q, axis=1) < 0
    if crossing.any():
        raise ValueError(f"quantile forecasts cross in {int(crossing.any(axis=1).sum())} "
                         f"sample(s) (first: {int(np.flatnonzero(crossing.any(axis=1))[0])}); "
                         f"each row must be non-decreasing in the level.")
    return q


# ---------------------------------------------------------------------------------------
# Metrics on arrays


def pinball_loss(y: np.ndarray, q: np.ndarray, levels=QUANTILES) -> np.ndarray:
    """(n, k) pinball loss of quantile forecasts q (n, k) at `levels` for outcomes y (n,):
    tau (y - q) if y >= q else (tau - 1)(y - q). Same units as y."""
    y, q = np.asarray(y, np.float64), np.asarray(q, np.float64)
    tau = np.asarray(levels, np.float64)[None, :]
    u = y[:, None] - q
    return np.maximum(tau * u, (tau - 1.0) * u)


def interval_hits(y: np.ndarray, q: np.ndarray, interval: str) -> np.ndarray:
    """(n,) bool: y inside the central interval ('50', '80' or '90'), ends included."""
    lo, hi = (_LEVEL_INDEX[p] for p in CENTRAL_INTERVALS[interval])
    y, q = np.asarray(y, np.float64), np.asarray(q, np.float64)
    return (q[:, lo] <= y) & (y <= q[:, hi])


def coverage_p_value(hits: int, n: int, nominal: float) -> float:
    """Exact two-sided binomial test of hits / n against the nominal share."""
    return float(stats.binomtest(int(hits), int(n), float(nominal)).pvalue)


def christoffersen_independence(miss: np.ndarray) -> dict:
    """Christoffersen's LR test of independence of a 0/1 miss sequence (first-order Markov).

    n_ab counts transitions a -> b; pi01 = n01 / (n00 + n01), pi11 = n11 / (n10 + n11),
    pi = (n01 + n11) / (n - 1). LR = -2 [ln L(pi) - ln L(pi01, pi11)] ~ chi2(1) under
    independence. Returns the counts, LR and p-value (None when no transition out of 0 or
    out of 1 was seen, i.e. the sequence is constant or has a single miss/hit at its end
    only: pi01 or pi11 cannot be estimated).
    """
    m = np.asarray(miss).astype(bool)
    out = {"n00": 0, "n01": 0, "n10": 0, "n11": 0, "lr": None, "p_value": None}
    if len(m) < 2:
        return out
    a, b = m[:-1], m[1:]
    n00, n01 = int(np.sum(~a & ~b)), int(np.sum(~a & b))
    n10, n11 = int(np.sum(a & ~b)), int(np.sum(a & b))
    out.update(n00=n00, n01=n01, n10=n10, n11=n11)
    if n00 + n01 == 0 or n10 + n11 == 0:
        return out
    pi01, pi11 = n01 / (n00 + n01), n11 / (n10 + n11)
    pi = (n01 + n11) / (n00 + n01 + n10 + n11)
    xlogy = special.xlogy
    ll_ind = xlogy(n00 + n10, 1 - pi) + xlogy(n01 + n11, pi)
    ll_dep = (xlogy(n00, 1 - pi01) + xlogy(n01, pi01) + xlogy(n10, 1 - pi11)
              + xlogy(n11, pi11))
    lr = max(0.0, float(-2.0 * (ll_ind - ll_dep)))
    out.update(lr=lr, p_value=float(stats.chi2.sf(lr, 1)))
    return out


def implied_variance(q: np.ndarray) -> np.ndarray:
    """(n,) variance implied by quantile forecasts: the 5-95 % spread of a normal,
    ((q95 - q05) / (2 z_0.95))^2, in the squared units of q."""
    q = np.asarray(q, np.float64)
    spread = q[:, _LEVEL_INDEX[0.95]] - q[:, _LEVEL_INDEX[0.05]]
    return (spread / (2.0 * Z95_ONE_SIDED)) ** 2


def qlike(y: np.ndarray, variance: np.ndarray) -> float | None:
    """mean(ln h + y^2 / h); None if a variance is not positive."""
    y, h = np.asarray(y, np.float64), np.asarray(variance, np.float64)
    if len(h) == 0 or not np.all(h > 0):
        return None
    return float(np.mean(np.log(h) + y * y / h))


def per_sample_pinball(y: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(n,) mean pinball loss over QUANTILES per sample, on 100 x log return."""
    return pinball_loss(PCT * np.asarray(y, np.float64), PCT * np.asarray(q, np.float64)).mean(axis=1)


def quantile_bin_counts(y: np.ndarray, q: np.ndarray) -> dict:
    """A PIT histogram from the 7 quantiles: how many outcomes fall below q05, between each
    pair of neighbouring quantiles, and above q95 (8 bins), with the shares a calibrated
    forecast expects ([0.05, 0.05, 0.15, 0.25, 0.25, 0.15, 0.05, 0.05])."""
    y, q = np.asarray(y, np.float64), np.asarray(q, np.float64)
    bins = (y[:, None] > q).sum(axis=1)  # 0 .. 7: how many quantiles lie below y
    counts = np.bincount(bins, minlength=len(QUANTILES) + 1)
    edges = (0.0, *QUANTILES, 1.0)
    return {"edges": list(edges), "counts": [int(c) for c in counts],
            "expected_share": [float(b - a) for a, b in zip(edges[:-1], edges[1:])]}


def interval_metrics(y: np.ndarray, q: np.ndarray, *,
                     baseline_losses: dict[str, np.ndarray] | None = None) -> dict:
    """The `interval` JSON block (INTERVAL_FIELDS) of quantile forecasts q (n, 7) of the log
    return for the realised log returns y (n,). `baseline_losses` {name: per-sample pinball
    (`per_sample_pinball`) on the same samples} gives `skill` and `dm_p`."""
    y = np.asarray(y, np.float64)
    n = len(y)
    out = dict.fromkeys(INTERVAL_FIELDS)
    out.update(quantiles=list(QUANTILES), n=n,
               coverage=dict.fromkeys(CENTRAL_INTERVALS), coverage_p=dict.fromkeys(CENTRAL_INTERVALS),
               skill=dict.fromkeys(INTERVAL_BASELINES), dm_p=dict.fromkeys(INTERVAL_BASELINES))
    if n == 0:
        return out
    q = check_quantiles(q, n)
    if y.shape != (n,) or not np.isfinite(y).all():
        raise ValueError(f"realised returns must be a finite 1-D array of {n}, got {y.shape}.")
    loss = pinball_loss(PCT * y, PCT * q)          # (n, 7)
    per_sample = loss.mean(axis=1)
    out["pinball"] = float(per_sample.mean())
    out["pinball_per_quantile"] = {f"{lv:.2f}": float(v) for lv, v in zip(QUANTILES, loss.mean(axis=0))}
    for key, (lo, hi) in CENTRAL_INTERVALS.items():
        hits = interval_hits(y, q, key)
        out["coverage"][key] = float(hits.mean())
        out["coverage_p"][key] = coverage_p_value(int(hits.sum()), n, hi - lo)
    out["independence_p_80"] = christoffersen_independence(~interval_hits(y, q, "80"))["p_value"]
    i10, i90 = _LEVEL_INDEX[0.10], _LEVEL_INDEX[0.90]
    out["width_80_pct"] = float(PCT * np.mean(np.exp(q[:, i90]) - np.exp(q[:, i10])))
    out["qlike"] = qlike(PCT * y, implied_variance(PCT * q))
    for name, base in (baseline_losses or {}).items():
        if name not in out["skill"]:
            continue
        base = np.asarray(base, np.float64)
        if base.shape != per_sample.shape:
            raise ValueError(f"baseline {name!r}: {base.shape} per-sample losses for {n} samples.")
        mean_base = float(base.mean())
        out["skill"][name] = 1.0 - out["pinball"] / mean_base if mean_base > 0 else None
        # the losses are >= 0, so the 'absolute' loss of diebold_mariano is the loss itself
        out["dm_p"][name] = diebold_mariano(per_sample, base, loss="absolute")["p_better"]
    return out


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


def interval_baseline_models() -> list:
    return [RollingQuantileBaseline(), EwmaBaseline(), GarchBaseline()]


# ---------------------------------------------------------------------------------------
# One pair, and across pairs


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
        out["predictions"]["model"] = returns_to_closes(data, idx, mq)
    for name, q in preds.items():
        out["baseline"][name] = {"interval": interval_metrics(y, q, baseline_losses=losses)}
        out["predictions"][name] = returns_to_closes(data, idx, q)
    return out


def summarize_intervals(entries: dict[str, dict], *, alpha: float = 0.05) -> dict:
    """Across pairs, from results entries {pair key: {"interval": block or None,
    "baseline": {"rolling": {"interval": block}, ...}}}.

    For the model (pairs with an `interval` block): median skill against each baseline, and
    the pairs that beat each baseline significantly (one-sided DM `dm_p`, Holm-adjusted across
    those pairs, < alpha). For the model and each baseline: the pairs whose 80 % coverage is
    rejected (binomial `coverage_p["80"]` < alpha, per pair, no correction) and the median
    coverage and pinball loss.
    """
    def med(vals):
        vals = [v for v in vals if v is not None]
        return float(np.median(vals)) if vals else None

    def blocks(who):
        got = {}
        for k, e in entries.items():
            b = e.get("interval") if who == "model" else \
                ((e.get("baseline") or {}).get(who) or {}).get("interval")
            if b and b.get("n"):
                got[k] = b
        return got

    model = blocks("model")
    keys = list(model)
    out = {"n_pairs": len(keys), "pairs": keys,
           "significance": {"alpha": alpha, "correction": "holm",
                            "test": "Diebold-Mariano on the per-sample mean pinball loss, "
                                    "one-sided (H1: the model's loss is lower)"},
           "median_skill": {b: med(model[k]["skill"].get(b) for k in keys)
                            for b in INTERVAL_BASELINES}}
    for b in INTERVAL_BASELINES:
        adj = holm_adjust([model[k]["dm_p"].get(b) for k in keys])
        beat = [k for k, p in zip(keys, adj) if p is not None and p < alpha]
        out[f"beat_{b}"] = {"count": len(beat), "pairs": beat}
    out["coverage_rejected_80"] = {}
    out["median_coverage"] = {}
    out["median_pinball"] = {}
    for who in ("model", *INTERVAL_BASELINES):
        got = blocks(who)
        rejected = [k for k, b in got.items()
                    if b["coverage_p"].get("80") is not None and b["coverage_p"]["80"] < alpha]
        out["coverage_rejected_80"][who] = {"count": len(rejected), "pairs": rejected,
                                            "of": len(got)}
        out["median_coverage"][who] = {c: med(b["coverage"].get(c) for b in got.values())
                                       for c in CENTRAL_INTERVALS}
        out["median_pinball"][who] = med(b.get("pinball") for b in got.values())
    return out
