"""v3_intervals: pinball loss and coverage on hand-computed cases, the binomial and
Christoffersen tests against scipy and hand-computed values, quantiles that never cross,
baselines that see no future and fit nothing on validation or test candles, the garch
baseline against arch and on a synthetic GARCH(1,1)-t series, the JSON blocks, the bench."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import v3_interval_scores as vs
import v3_intervals as vi
from conftest import TINY_FEATURES
from v3_data_processor import prepare_dataset
from v3_metrics import hac_variance
from v3_interval_scores import (CENTRAL_INTERVALS, INTERVAL_BASELINES, INTERVAL_FIELDS, QUANTILES,
                                christoffersen_independence, coverage_p_value, interval_metrics,
                                pinball_loss, summarize_intervals)
from v3_intervals import (EwmaBaseline, GarchBaseline, RollingQuantileBaseline,
                          evaluate_intervals, ewma_variance, garch_variance, rolling_quantiles,
                          sample_returns)
from v3_market_data import synthetic_klines

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def klines():
    return synthetic_klines("BTCUSDT", "15m", 2500)


@pytest.fixture(scope="module")
def data(klines):
    return prepare_dataset(klines, TINY_FEATURES, interval="15m")


def fitted(models, data):
    return [m.fit(data) for m in models]


# ---------------------------------------------------------------------------------------
# Metrics on hand-computed cases


def test_pinball_loss_hand_computed():
    levels = (0.1, 0.5, 0.9)
    q = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    y = np.array([1.0, -1.0])
    loss = pinball_loss(y, q, levels)
    # y = 1: 0.1 * (1 - 0), 0, (0.9 - 1) * (1 - 2); y = -1: 0.9 * 1, 0.5 * 2, 0.1 * 3
    np.testing.assert_allclose(loss, [[0.1, 0.0, 0.1], [0.9, 1.0, 0.3]])


# Constant quantiles -3 % .. +3 % (in log return) and 10 outcomes:
#   50 % interval [-1 %, 1 %], 80 % [-2 %, 2 %], 90 % [-3 %, 3 %]
Q_ROW = np.array([-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03])
Y10 = np.array([0.0, 0.005, -0.01, 0.01, 0.015, -0.02, 0.025, -0.03, 0.04, -0.05])
#   inside 50 %: 0, .005, -.01, .01 (ends count)      -> 4 / 10
#   inside 80 %: those + .015, -.02                   -> 6 / 10
#   inside 90 %: those + .025, -.03                   -> 8 / 10


def test_interval_metrics_hand_computed():
    q = np.tile(Q_ROW, (10, 1))
    m = interval_metrics(Y10, q)
    assert tuple(m) == INTERVAL_FIELDS
    assert m["quantiles"] == list(QUANTILES) and m["n"] == 10
    assert m["coverage"] == {"50": pytest.approx(0.4), "80": pytest.approx(0.6),
                             "90": pytest.approx(0.8)}
    # pinball on 100 x log return, by hand for the median: 0.5 * mean |y| in %
    assert m["pinball_per_quantile"]["0.50"] == pytest.approx(0.5 * 100 * np.mean(np.abs(Y10)))
    # the 0.05 quantile (-3 %): below it only -5 % (loss 0.95 * 2); every other y above it
    above = 100 * (Y10 + 0.03)
    want = np.where(above >= 0, 0.05 * above, -0.95 * above).mean()
    assert m["pinball_per_quantile"]["0.05"] == pytest.approx(want)
    assert m["pinball"] == pytest.approx(np.mean(list(m["pinball_per_quantile"].values())))
    assert m["width_80_pct"] == pytest.approx(100 * (math.exp(0.02) - math.exp(-0.02)))
    h = (6.0 / (2 * 1.6448536269514722)) ** 2  # % squared
    assert m["qlike"] == pytest.approx(np.mean(np.log(h) + (100 * Y10) ** 2 / h))
    assert m["coverage_p"]["80"] == pytest.approx(stats.binomtest(6, 10, 0.8).pvalue)
    # no baselines given: the keys are there, the values None
    assert m["skill"] == dict.fromkeys(INTERVAL_BASELINES)
    assert m["dm_p"] == dict.fromkeys(INTERVAL_BASELINES)


def test_skill_and_dm_against_a_baseline():
    q = np.tile(Q_ROW, (10, 1))
    wide = np.tile(2 * Q_ROW, (10, 1))
    base = vs.per_sample_pinball(Y10, wide)
    m = interval_metrics(Y10, q, baseline_losses={"garch": base, "other": base})
    own = vs.per_sample_pinball(Y10, q)
    assert m["skill"]["garch"] == pytest.approx(1 - own.mean() / base.mean())
    d = own - base
    z = d.mean() / math.sqrt(hac_variance(d))     # Newey-West, 2 lags for 10 samples
    assert m["dm_p"]["garch"] == pytest.approx(stats.norm.cdf(z))
    assert m["skill"]["rolling"] is None and "other" not in m["skill"]


def test_quantiles_that_cross_or_are_missing_are_refused():
    q = np.tile(Q_ROW, (10, 1))
    bad = q.copy()
    bad[3, [2, 3]] = bad[3, [3, 2]]
    with pytest.raises(ValueError, match="cross in 1 sample"):
        interval_metrics(Y10, bad)
    nan = q.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        interval_metrics(Y10, nan)
    with pytest.raises(ValueError, match="shape"):
        interval_metrics(Y10, q[:, :5])


# ---------------------------------------------------------------------------------------
# The binomial and Christoffersen tests


@pytest.mark.parametrize("hits,n,p", [(7, 10, 0.8), (80, 100, 0.8), (150, 200, 0.9),
                                      (0, 30, 0.5), (397, 400, 0.9)])
def test_coverage_p_value_is_the_exact_two_sided_binomial(hits, n, p):
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    want = min(1.0, sum(v for v in pmf if v <= pmf[hits] * (1 + 1e-7)))
    assert coverage_p_value(hits, n, p) == pytest.approx(want, rel=1e-9)
    assert coverage_p_value(hits, n, p) == pytest.approx(stats.binomtest(hits, n, p).pvalue)


def test_christoffersen_hand_computed():
    miss = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0])
    r = christoffersen_independence(miss)
    # transitions: 00 x5, 01 x3, 10 x3, 11 x3 (14 in all)
    assert (r["n00"], r["n01"], r["n10"], r["n11"]) == (5, 3, 3, 3)
    pi01, pi11, pi = 3 / 8, 3 / 6, 6 / 14
    ll0 = 8 * math.log(1 - pi) + 6 * math.log(pi)
    ll1 = (5 * math.log(1 - pi01) + 3 * math.log(pi01) + 3 * math.log(1 - pi11)
           + 3 * math.log(pi11))
    lr = -2 * (ll0 - ll1)
    assert r["lr"] == pytest.approx(lr)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(lr, 1))


def test_christoffersen_detects_clusters_and_passes_independent_misses():
    rng = np.random.default_rng(0)
    iid = rng.random(2000) < 0.2
    clustered = np.repeat(rng.random(200) < 0.2, 10)  # misses come in runs of 10
    assert christoffersen_independence(iid)["p_value"] > 0.01
    assert christoffersen_independence(clustered)["p_value"] < 1e-10
    # no miss at all, or misses only: nothing to estimate
    assert christoffersen_independence(np.zeros(50, bool))["p_value"] is None
    assert christoffersen_independence(np.ones(50, bool))["p_value"] is None
    assert christoffersen_independence(np.array([1]))["p_value"] is None


# ---------------------------------------------------------------------------------------
# Baselines on arrays


def test_rolling_quantiles_match_numpy_and_use_only_earlier_returns():
    rng = np.random.default_rng(1)
    r = rng.standard_normal(300)
    idx = np.array([0, 5, 19, 20, 49, 50, 51, 299])
    q = rolling_quantiles(r, idx, 50, min_history=20)
    assert np.isnan(q[:3]).all()  # fewer than 20 earlier returns
    for row, i in zip(q[3:], idx[3:]):
        np.testing.assert_allclose(row, np.quantile(r[max(0, i - 50):i], QUANTILES), rtol=0,
                                   atol=1e-12)


def test_sorted_row_quantiles_never_cross_on_adversarial_rows():
    rng = np.random.default_rng(2)
    rows = np.concatenate([
        np.round(rng.standard_normal((500, 9)), 1),          # many ties
        rng.standard_normal((500, 9)) * 10.0 ** rng.integers(-300, 300, (500, 1)),
        np.tile([-1e308, 0.0, 1e308], (10, 3)),
        np.full((10, 9), 0.1)], axis=0)
    q = vi.sorted_row_quantiles(np.sort(rows, axis=1))
    assert np.all(np.diff(q, axis=1) >= 0)
    np.testing.assert_allclose(q[:500], np.quantile(rows[:500], QUANTILES, axis=1).T, atol=1e-12)


def test_ewma_and_garch_recursions_hand_computed():
    # s2_0 = start (omega 0, alpha + beta = 1); s2_1 = 0.1 * 1^2 + 0.9 * 4
    np.testing.assert_allclose(ewma_variance(np.array([1.0, 2.0, 0.0]), 0.9, 4.0),
                               [4.0, 3.7, 0.1 * 4 + 0.9 * 3.7])
    # s2_0 = 0.5 + (0.1 + 0.8) * 2; s2_1 = 0.5 + 0.1 * 9 + 0.8 * s2_0
    np.testing.assert_allclose(garch_variance(np.array([3.0, 1.0]), 0.5, 0.1, 0.8, 2.0),
                               [2.3, 0.5 + 0.9 + 0.8 * 2.3])


def test_fit_t_df_recovers_the_degrees_of_freedom():
    rng = np.random.default_rng(3)
    nu = 5.0
    z = rng.standard_t(nu, 20_000) * math.sqrt((nu - 2) / nu)
    assert vi.fit_t_df(z) == pytest.approx(nu, abs=0.6)
    u = vi.t_unit_ppf(QUANTILES, nu)
    np.testing.assert_allclose(u, stats.t(nu, scale=math.sqrt((nu - 2) / nu)).ppf(QUANTILES))


def test_garch_filter_is_arch_conditional_volatility(data):
    """Our recursion with the fitted parameters gives arch's own fitted volatility."""
    from arch import arch_model
    tr = sample_returns(data)[data.split("train")]
    g = GarchBaseline().fit(data)
    p = g.fitted
    x = tr / p["fit_scale"]
    res = arch_model(x, mean="Constant", vol="GARCH", p=1, q=1, dist="t",
                     rescale=False).fit(disp="off", show_warning=False)
    ours = np.sqrt(g.variance(data)[data.split("train")]) / p["fit_scale"]
    np.testing.assert_allclose(ours, res.conditional_volatility, rtol=1e-9)
    assert p["alpha"] == pytest.approx(res.params["alpha[1]"])
    assert p["nu"] == pytest.approx(res.params["nu"])


# ---------------------------------------------------------------------------------------
# Baselines as models: non-crossing, no look-ahead, nothing fitted on validation or test


def test_baselines_predict_non_crossing_quantiles_and_closes(data):
    idx = np.arange(len(data.ends))
    for m in fitted(vi.interval_baseline_models(), data):
        q = m.predict_returns(data, idx)
        ok = np.isfinite(q).all(axis=1)
        assert ok[data.n_train:].all(), m.name  # every validation and test sample
        assert np.all(np.diff(q[ok], axis=1) >= 0), m.name
        closes = m.predict(data, data.split("test"))
        np.testing.assert_allclose(closes, data.last_close[data.split("test"), None]
                                   * np.exp(q[data.split("test")]))
        assert m.name in INTERVAL_BASELINES


def test_forecasts_use_only_earlier_returns(data):
    """Changing every candle from sample k's target candle on (its return and later ones; the
    range inputs of the samples after k, whose windows reach that candle) leaves the forecasts
    of samples <= k as they were (the fitted parameters held fixed)."""
    k = data.n_train + data.n_val + 10
    rng = np.random.default_rng(4)
    moved = data.actual_close.copy()
    moved[k:] *= np.exp(rng.normal(0, 0.05, len(moved) - k))
    ranges = data.range_var.copy()
    ranges[k + 1:] *= np.exp(rng.normal(0, 0.5, ranges[k + 1:].shape))
    other = dataclasses.replace(data, actual_close=moved, range_var=ranges)
    early = np.arange(k + 1)
    for m in fitted(vi.interval_baseline_models(), data):
        a, b = m.predict_returns(data, early), m.predict_returns(other, early)
        np.testing.assert_array_equal(a, b, err_msg=m.name)
        later = np.arange(k + 1, len(data.ends))
        assert not np.allclose(m.predict_returns(data, later), m.predict_returns(other, later))


def _moved_from(klines, row: int, seed: int):
    """The candles with every price from `row` on scaled by its own random factor (each candle
    stays consistent: open/high/low/close scaled alike)."""
    out = klines.copy()
    rng = np.random.default_rng(seed)
    f = np.exp(np.cumsum(rng.normal(0, 0.01, len(out) - row)))
    for c in ("open", "high", "low", "close"):
        out.loc[row:, c] = out.loc[row:, c].to_numpy() * f
    return out


def test_changing_validation_or_test_candles_changes_nothing_fitted(klines, data):
    row_val = int(data.ends[data.n_train]) + 1          # the first validation target candle
    row_test = int(data.ends[data.n_train + data.n_val]) + 1
    base = {m.name: m.params() for m in fitted(vi.interval_baseline_models(), data)}
    for row, what in ((row_val, "validation"), (row_test, "test")):
        moved = prepare_dataset(_moved_from(klines, row, seed=row), TINY_FEATURES, interval="15m")
        assert (moved.n_train, moved.n_val, moved.n_test) == (data.n_train, data.n_val, data.n_test)
        tr = data.split("train")
        np.testing.assert_array_equal(sample_returns(moved)[tr], sample_returns(data)[tr])
        assert not np.array_equal(sample_returns(moved), sample_returns(data))
        for m in fitted(vi.interval_baseline_models(), moved):
            if m.name == "rolling" and what == "validation":
                continue  # its window is chosen on validation, by design (tuning, not fitting)
            assert m.params() == base[m.name], (m.name, what)


def test_ewma_df_fixed_or_fitted(data):
    fixed = EwmaBaseline(df=6.0).fit(data)
    assert fixed.params()["df"] == 6.0 and fixed.tuning()["df_source"] == "fixed"
    free = EwmaBaseline().fit(data)
    assert 2.05 < free.params()["df"] < 200 and free.params()["df"] != 6.0


def test_rolling_window_is_the_best_on_validation(data):
    m = RollingQuantileBaseline(windows=(24, 96, 10**9)).fit(data)
    assert set(m.val_pinball) == {24, 96}  # a window longer than training is never tried
    assert m.window == min(m.val_pinball, key=m.val_pinball.get)
    va = data.split("val")
    q = rolling_quantiles(sample_returns(data), np.arange(len(data.ends))[va], 24)
    assert m.val_pinball[24] == pytest.approx(vs.per_sample_pinball(sample_returns(data)[va], q).mean())


def test_garch_recovers_parameters_and_is_calibrated_on_a_garch_t_series():
    """synthetic_klines' closes follow GARCH(1,1)-t: omega = 0.05 v^2, alpha 0.08,
    beta 0.87, nu 4 (v = 0.25 % per 15m candle, so the unconditional variance is v^2)."""
    d = prepare_dataset(synthetic_klines("ETHUSDT", "15m", 9000), TINY_FEATURES, interval="15m")
    g = GarchBaseline().fit(d)
    p = g.params()
    assert p["converged"]
    assert p["alpha"] == pytest.approx(0.08, abs=0.03)
    assert p["beta"] == pytest.approx(0.87, abs=0.06)
    assert p["nu"] == pytest.approx(4.0, abs=1.5)
    v2 = 0.0025**2
    assert p["omega"] / (1 - p["alpha"] - p["beta"]) == pytest.approx(v2, rel=0.3)
    out = evaluate_intervals(d, baselines=[g])
    block = out["baseline"]["garch"]["interval"]
    assert block["n"] > 1000
    assert block["coverage"]["80"] == pytest.approx(0.80, abs=0.04)
    assert block["coverage"]["90"] == pytest.approx(0.90, abs=0.03)
    assert block["coverage"]["50"] == pytest.approx(0.50, abs=0.05)


# ---------------------------------------------------------------------------------------
# One pair's JSON and the summary across pairs


def test_evaluate_intervals_blocks_and_json(data):
    out = evaluate_intervals(data)
    assert out["model"] is None
    assert set(out["baseline"]) == set(INTERVAL_BASELINES)
    n_test = data.n_test
    for name in INTERVAL_BASELINES:
        block = out["baseline"][name]["interval"]
        assert tuple(block) == INTERVAL_FIELDS and block["n"] == n_test
        assert set(block["coverage"]) == set(block["coverage_p"]) == set(CENTRAL_INTERVALS)
        assert set(block["skill"]) == set(block["dm_p"]) == set(INTERVAL_BASELINES)
        assert block["skill"][name] == 0.0 and block["dm_p"][name] == 0.5
        assert out["predictions"][name].shape == (n_test, len(QUANTILES))
    json.dumps({k: out[k] for k in ("model", "baseline", "tuning")})  # plain JSON values
    assert out["tuning"]["rolling"]["window"] in RollingQuantileBaseline().windows


def test_evaluate_intervals_scores_the_model_on_the_same_samples(data):
    idx = data.split("test")
    garch_q = GarchBaseline().fit(data).predict_returns(data, idx)
    out = evaluate_intervals(data, garch_q)
    mcs = {k: out["model"].pop(k) for k in ("mcs_90", "mcs_p")}   # the model's block only
    garch = dict(out["baseline"]["garch"]["interval"])
    assert garch.pop("mcs_90") is None and garch.pop("mcs_p") is None
    assert out["model"] == garch
    # a model identical to garch is in the confidence set exactly when garch is
    assert ("model" in mcs["mcs_90"]) == ("garch" in mcs["mcs_90"])
    assert mcs["mcs_p"]["model"] == mcs["mcs_p"]["garch"]
    np.testing.assert_allclose(out["predictions"]["model"], out["predictions"]["garch"])
    # standardised model output -> log-return quantiles
    z = (garch_q - data.target_mean) / data.target_std
    np.testing.assert_allclose(vi.standardized_to_returns(data, z), garch_q)
    with pytest.raises(ValueError, match="shape"):
        evaluate_intervals(data, garch_q[:-1])
    with pytest.raises(ValueError, match="cross"):
        evaluate_intervals(data, garch_q[:, ::-1])


def _block(skill_garch, p_garch, cov80, p80):
    m = interval_metrics(Y10, np.tile(Q_ROW, (10, 1)))
    m["skill"] = {"rolling": 0.1, "ewma": 0.0, "garch": skill_garch}
    m["dm_p"] = {"rolling": 0.2, "ewma": 0.5, "garch": p_garch}
    m["coverage"] = {**m["coverage"], "80": cov80}
    m["coverage_p"] = {**m["coverage_p"], "80": p80}
    return m


def test_summarize_intervals_counts_with_holm():
    base = {"interval": _block(0.0, 0.5, 0.8, 0.9)}
    entries = {
        # Holm over 3 pairs: 0.001 * 3, 0.02 * 2 = 0.04, 0.04 * 1 -> max(0.04, 0.04)
        "A": {"interval": _block(0.05, 0.001, 0.80, 0.90), "baseline": {"garch": base}},
        "B": {"interval": _block(0.02, 0.02, 0.70, 0.001), "baseline": {"garch": base}},
        "C": {"interval": _block(-0.01, 0.04, 0.81, 0.70), "baseline": {}},
        "D": {"interval": None, "baseline": {"garch": base}},
    }
    s = summarize_intervals(entries)
    assert s["n_pairs"] == 3 and s["pairs"] == ["A", "B", "C"]
    assert s["median_skill"]["garch"] == pytest.approx(0.02)
    assert s["beat_garch"] == {"count": 3, "pairs": ["A", "B", "C"]}
    s2 = summarize_intervals(entries, alpha=0.03)
    assert s2["beat_garch"]["pairs"] == ["A"]  # B's 0.04 and C's 0.04 are out
    assert s["beat_ewma"]["count"] == 0
    assert s["coverage_rejected_80"]["model"] == {"count": 1, "pairs": ["B"], "of": 3}
    assert s["coverage_rejected_80"]["garch"] == {"count": 0, "pairs": [], "of": 3}
    assert s["median_coverage"]["model"]["80"] == pytest.approx(0.80)


# ---------------------------------------------------------------------------------------
# The benchmark runs (a tiny version)


def test_bench_intervals_tiny(capsys):
    spec = importlib.util.spec_from_file_location("bench_intervals",
                                                  ROOT / "bench" / "bench_intervals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--pairs", "2", "--candles", "800", "--in-process"])
    text = capsys.readouterr().out
    assert "machine:" in text and "command:" in text and "garch" in text


def test_the_model_confidence_set_keeps_the_true_forecaster():
    """Outcomes from N(0, s_i^2) with a known, varying s_i: the true quantiles are in the 90 %
    set; forecasts 40 % too wide or too narrow, or a constant spread, are not (2,000
    samples); identical forecasters share their place."""
    rng = np.random.default_rng(5)
    n = 2000
    s = np.exp(rng.normal(-4.5, 0.5, n))
    y = s * rng.standard_normal(n)
    z = stats.norm.ppf(QUANTILES)
    q = {"true": s[:, None] * z, "wide": 1.4 * s[:, None] * z, "narrow": 0.6 * s[:, None] * z,
         "flat": np.full((n, 7), float(np.sqrt(np.mean(s ** 2)))) * z}
    losses = {k: vs.per_sample_pinball(y, v) for k, v in q.items()}
    mcs = vs.model_confidence_set(dict(losses, same=losses["true"]))
    assert mcs["included"] == ["true", "same"]
    assert mcs["p"]["true"] == mcs["p"]["same"] == 1.0 and mcs["p"]["flat"] < 0.1
    assert mcs["block_size"] == 13                          # ceil(2000^(1/3))


def test_pair_verdict_names_the_best_and_says_whether_it_is_significant():
    blk = lambda pin, **kw: {"n": 10, "pinball": pin, **kw}  # noqa: E731
    alone = vs.pair_verdict({"model": blk(0.30, mcs_90=["har"]), "har": blk(0.20),
                             "garch": blk(0.25)})
    assert alone == {"best": "har", "pinball": 0.20, "runner_up": "garch", "significant": True,
                     "by": "mcs_90", "set": ["har"]}
    tied = vs.pair_verdict({"model": blk(0.19, mcs_90=["model", "har"]), "har": blk(0.20)})
    assert tied["best"] == "model" and not tied["significant"] and tied["set"] == ["model", "har"]
    # no model, so no confidence set: the best baseline's DM p-value against the runner-up
    no_model = vs.pair_verdict({"har": blk(0.20, dm_p={"garch": 0.01}),
                                "garch": blk(0.25, dm_p={"har": 0.99})})
    assert no_model["by"] == "dm" and no_model["significant"] and no_model["p"] == 0.01
    assert vs.pair_verdict({}) is None
