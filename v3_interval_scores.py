"""Scoring quantile forecasts of the next candle: the interval metrics, the model confidence
set, and the summary across pairs. Pure functions of arrays (no PreparedData, no files).

Every forecast is a set of quantiles QUANTILES of the next candle's log return
r = ln(actual_close / last_close). The central intervals are 50 % = (0.25, 0.75),
80 % = (0.10, 0.90) and 90 % = (0.05, 0.95). v3_intervals makes the baselines' forecasts;
v3_evaluation scores the model and them on the same test samples with `interval_metrics`.

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
- `skill` {"rolling","ewma","garch","har"}: 1 - pinball / pinball(baseline) on the same
  samples; `dm_p` {same}: one-sided Diebold-Mariano p-value (v3_metrics.diebold_mariano, on
  a Newey-West HAC variance: the loss differences of volatility forecasts are
  autocorrelated) of "this forecast has the lower per-sample pinball loss" (the per-sample
  loss is the mean over the 7 quantiles). A baseline's block compares it with the others
  (and with itself: skill 0, p 0.5). None where that baseline was not run.
- `mcs_90` (the model's block; None in the baselines'): the forecasters in the 90 % model
  confidence set (Hansen, Lunde and Nason 2011; arch.bootstrap.MCS, range statistic,
  stationary block bootstrap of the per-sample pinball losses, mean block length
  ceil(n^(1/3)), 1,000 resamples, seed 0) over the model and every baseline: the set that
  holds the best forecaster with 90 % probability. `mcs_p`: each one's MCS p-value.
- `n`: samples scored.

`summarize_intervals` sums pairs up (median skill, pairs that beat each baseline
significantly after Holm, pairs whose coverage is rejected, how often each forecaster is in
its pair's confidence set).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

from v3_metrics import diebold_mariano, holm_adjust

QUANTILES = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)
QUANTILE_COLUMNS = ("p05", "p10", "p25", "p50", "p75", "p90", "p95")  # predictions CSV
CENTRAL_INTERVALS = {"50": (0.25, 0.75), "80": (0.10, 0.90), "90": (0.05, 0.95)}
INTERVAL_BASELINES = ("rolling", "ewma", "garch", "har")   # v3_intervals' baselines
INTERVAL_FIELDS = ("quantiles", "pinball", "pinball_per_quantile", "coverage", "coverage_p",
                   "independence_p_80", "width_80_pct", "qlike", "skill", "dm_p", "mcs_90",
                   "mcs_p", "n")
MCS_SIZE = 0.10             # 1 - the confidence of the model confidence set (90 %)
MCS_REPS = 1000             # bootstrap resamples of the MCS
PCT = 100.0                 # losses are on 100 x log return: ~ % of price
Z95_ONE_SIDED = 1.6448536269514722  # the 95 % quantile of the standard normal

_LEVEL_INDEX = {q: i for i, q in enumerate(QUANTILES)}


# ---------------------------------------------------------------------------------------
# Checks


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


def model_confidence_set(losses: dict[str, np.ndarray], *, size: float = MCS_SIZE,
                         reps: int = MCS_REPS, seed: int = 0) -> dict:
    """The (1 - size) model confidence set of forecasters with per-sample losses `losses`
    {name: (n,)}: {"included": names in the set, in the given order, "p": {name: MCS
    p-value}, "block_size", "reps"}. arch.bootstrap.MCS with the range statistic and a
    stationary bootstrap of mean block length ceil(n^(1/3)) (the losses are autocorrelated)."""
    from arch.bootstrap import MCS  # noqa: PLC0415  (lazy, with arch: see fit_garch_t)
    names = list(losses)
    cols = [np.asarray(losses[k], np.float64) for k in names]
    # forecasters with identical losses are one forecaster to the test (their differences
    # have no variance): the first of each group stands for all of it
    rep = [next(j for j in range(i + 1) if np.array_equal(cols[j], cols[i]))
           for i in range(len(cols))]
    uniq = sorted(set(rep))
    n = len(cols[0])
    block = max(2, int(math.ceil(n ** (1.0 / 3.0))))
    if len(uniq) == 1:
        p_u, inc_u = {uniq[0]: 1.0}, {uniq[0]}
    else:
        mcs = MCS(np.column_stack([cols[j] for j in uniq]), size=size, reps=reps,
                  block_size=block, method="R", bootstrap="stationary", seed=seed)
        mcs.compute()
        p_u = {uniq[int(i)]: float(v) for i, v in mcs.pvalues.iloc[:, 0].items()}
        inc_u = {uniq[int(i)] for i in mcs.included}
    return {"included": [k for k, r in zip(names, rep) if r in inc_u],
            "p": {k: p_u[r] for k, r in zip(names, rep)}, "block_size": block, "reps": reps}


def add_confidence_set(block: dict, losses: dict[str, np.ndarray]) -> dict:
    """Put the 90 % model confidence set of `losses` into a block (mcs_90, mcs_p)."""
    if block.get("n") and len(losses) > 1:
        mcs = model_confidence_set(losses)
        block["mcs_90"], block["mcs_p"] = mcs["included"], mcs["p"]
    return block



def summarize_intervals(entries: dict[str, dict], *, alpha: float = 0.05) -> dict:
    """Across pairs, from results entries {pair key: {"interval": block or None,
    "baseline": {"rolling": {"interval": block}, ...}}}.

    For the model (pairs with an `interval` block): median skill against each baseline, and
    the pairs that beat each baseline significantly (one-sided DM `dm_p` on a HAC variance,
    Holm-adjusted across those pairs, < alpha); how often each forecaster is in the pair's
    90 % model confidence set (`mcs_90`), and alone in it. For the model and each baseline:
    the pairs whose 50 / 80 / 90 % coverage is rejected (`coverage_rejected`, binomial
    `coverage_p` < alpha, per pair, no correction; `coverage_rejected_80` the 80 % one) and
    the median coverage and pinball loss. Per pair (`per_pair`, `pair_verdict`): the
    forecaster with the lowest pinball loss and whether that is significant; `best` and
    `best_significant` count them.
    """
    def blocks(who):
        return _blocks(entries, who)

    model = blocks("model")
    keys = list(model)
    out = {"n_pairs": len(keys), "pairs": keys,
           "significance": {"alpha": alpha, "correction": "holm",
                            "test": "Diebold-Mariano on the per-sample mean pinball loss, "
                                    "one-sided (H1: the model's loss is lower)"},
           "median_skill": {b: _median(model[k]["skill"].get(b) for k in keys)
                            for b in INTERVAL_BASELINES}}
    for b in INTERVAL_BASELINES:
        adj = holm_adjust([model[k]["dm_p"].get(b) for k in keys])
        beat = [k for k, p in zip(keys, adj) if p is not None and p < alpha]
        out[f"beat_{b}"] = {"count": len(beat), "pairs": beat}
    # how often each forecaster is in its pair's 90 % model confidence set, and alone in it
    sets = {k: model[k].get("mcs_90") for k in keys if model[k].get("mcs_90")}
    out["mcs_90"] = {"n_pairs": len(sets),
                     "in_set": {w: sum(w in v for v in sets.values())
                                for w in ("model", *INTERVAL_BASELINES)},
                     "alone": {w: sum(v == [w] for v in sets.values())
                               for w in ("model", *INTERVAL_BASELINES)}}
    out.update(_coverage_summary(entries, alpha))
    verdicts = {k: pair_verdict({w: b for w in ("model", *INTERVAL_BASELINES)
                                 if (b := blocks(w).get(k))}, alpha=alpha)
                for k in entries}
    out["per_pair"] = {k: v for k, v in verdicts.items() if v}
    out["best"] = {w: sum(v["best"] == w for v in out["per_pair"].values())
                   for w in ("model", *INTERVAL_BASELINES)}
    out["best_significant"] = {w: sum(v["best"] == w and v["significant"]
                                      for v in out["per_pair"].values())
                               for w in ("model", *INTERVAL_BASELINES)}
    return out


def _median(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(np.median(vals)) if vals else None


def _blocks(entries: dict[str, dict], who: str) -> dict[str, dict]:
    """{pair: the scored interval block of `who` ('model' or a baseline)}."""
    got = {}
    for k, e in entries.items():
        b = e.get("interval") if who == "model" else \
            ((e.get("baseline") or {}).get(who) or {}).get("interval")
        if b and b.get("n"):
            got[k] = b
    return got


def _coverage_summary(entries: dict[str, dict], alpha: float) -> dict:
    """Per forecaster: the pairs whose coverage each level's binomial test rejects, and the
    median coverage and pinball loss."""
    out = {"coverage_rejected": {c: {} for c in CENTRAL_INTERVALS}, "median_coverage": {},
           "median_pinball": {}}
    for who in ("model", *INTERVAL_BASELINES):
        got = _blocks(entries, who)
        for c in CENTRAL_INTERVALS:
            rejected = [k for k, b in got.items()
                        if b["coverage_p"].get(c) is not None and b["coverage_p"][c] < alpha]
            out["coverage_rejected"][c][who] = {"count": len(rejected), "pairs": rejected,
                                                "of": len(got)}
        out["median_coverage"][who] = {c: _median(b["coverage"].get(c) for b in got.values())
                                       for c in CENTRAL_INTERVALS}
        out["median_pinball"][who] = _median(b.get("pinball") for b in got.values())
    out["coverage_rejected_80"] = out["coverage_rejected"]["80"]   # the headline test
    return out


def pair_verdict(blocks: dict[str, dict], *, alpha: float = 0.05) -> dict | None:
    """Which forecaster of one pair has the lowest pinball loss, and whether that is
    significant: by the 90 % model confidence set (the model's `mcs_90`: significant when it
    holds the best alone), else (no model) by the one-sided Diebold-Mariano p-value of the
    best against the runner-up (< alpha). None without any block."""
    ranked = sorted((b["pinball"], w) for w, b in blocks.items() if b.get("pinball") is not None)
    if not ranked:
        return None
    best = ranked[0][1]
    runner = ranked[1][1] if len(ranked) > 1 else None
    out = {"best": best, "pinball": ranked[0][0], "runner_up": runner, "significant": False}
    mcs = (blocks.get("model") or {}).get("mcs_90")
    if mcs:
        out.update(by="mcs_90", set=list(mcs), significant=list(mcs) == [best])
    elif runner is not None:
        p = (blocks[best].get("dm_p") or {}).get(runner)
        out.update(by="dm", p=p, significant=p is not None and p < alpha)
    return out
