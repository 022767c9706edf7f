"""v3_metrics, v3_baselines, v3_evaluation: metrics on hand-computed cases, statistics against
scipy, baselines as models, the fee-aware backtest on a constructed price path, and the
walk-forward no-leak property."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from tests.conftest import TINY_FEATURES
from v3_common import ConfigError
from v3_data_processor import prepare_dataset
from v3_baselines import DriftBaseline, LinearBaseline, PersistenceBaseline
from v3_evaluation import evaluate_pair, fold_fractions, walk_forward_folds
from v3_metrics import (BASELINES, METRIC_FIELDS, backtest_direction, backtest_positions,
                        binomial_p_value, diebold_mariano, direction_profile, forecast_metrics,
                        hac_variance, holm_adjust, market_move, naive_mae, newey_west_lags,
                        periods_per_year, regression_metrics, summarize_pairs, wilson_interval)
from v3_trainer import mean_forecast_val_loss
from v3_market_data import synthetic_klines


# ---------------------------------------------------------------------------------------
# Metrics on a hand-computed case
#   last   = [100, 100, 100, 100]
#   actual = [101,  99, 100, 102]      moves: up, down, none, up
#   pred   = [102, 101,  99, 101]      predicted moves: up, up, down, up
#   errors = [  1,   2,  -1,  -1]


LAST = np.array([100.0, 100.0, 100.0, 100.0])
ACTUAL = np.array([101.0, 99.0, 100.0, 102.0])
PRED = np.array([102.0, 101.0, 99.0, 101.0])


def test_regression_metrics_hand_computed():
    m = regression_metrics(ACTUAL, PRED, LAST)
    assert m["mae"] == pytest.approx(5 / 4)
    assert m["mse"] == pytest.approx(7 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(7 / 4))
    assert m["mape"] == pytest.approx(100 / 4 * (1 / 101 + 2 / 99 + 1 / 100 + 1 / 102))
    # moved: samples 0, 1, 3; right on 0 and 3
    assert m["n_direction"] == 3
    assert m["directional_accuracy"] == pytest.approx(200 / 3)


def test_forecast_metrics_hand_computed():
    # training closes 10 -> 11 -> 10 -> 12: naive MAE = (1 + 1 + 2) / 3 = 4/3
    scale = naive_mae(np.array([10.0, 11.0, 10.0]), np.array([11.0, 10.0, 12.0]))
    assert scale == pytest.approx(4 / 3)
    m = forecast_metrics(ACTUAL, PRED, LAST, mase_scale=scale)
    assert set(m) == set(METRIC_FIELDS)
    assert m["mase"] == pytest.approx((5 / 4) / (4 / 3))
    # persistence errors |0-1|, |100-99|, 0, 2 -> MAE 1.0; skill = 1 - 1.25 / 1.0
    assert m["skill"] == pytest.approx(-0.25)
    assert m["direction_hits"] == 2 and m["n_direction"] == 3
    lo, hi = wilson_interval(2, 3)
    assert (m["direction_ci95_low"], m["direction_ci95_high"]) == pytest.approx((100 * lo, 100 * hi))
    assert m["direction_p_value"] == pytest.approx(1.0)
    # DM on |e|: d = [1-1, 2-1, 1-0, 1-2] = [0, 1, 1, -1]; mean 0.25; Newey-West with
    # L = floor(4 (4/100)^(2/9)) = 1 lag: gamma_0 = 0.6875, gamma_1 = -0.5625 / 4, Bartlett
    # weight 1/2: (0.6875 + 2 * 0.5 * -0.140625) / 4
    se = math.sqrt((0.6875 - 0.140625) / 4)
    assert m["dm_stat"] == pytest.approx(0.25 / se)
    assert m["skill_ci95_low"] == pytest.approx(-(0.25 + 1.959963984540054 * se))
    assert m["skill_ci95_high"] == pytest.approx(-(0.25 - 1.959963984540054 * se))


def test_persistence_scores_itself_as_no_skill_and_no_direction():
    m = forecast_metrics(ACTUAL, LAST.copy(), LAST, mase_scale=1.0)
    assert m["skill"] == 0.0 and m["dm_p_value"] == 1.0 and m["dm_stat"] == 0.0
    assert m["mae"] == pytest.approx(1.0) and m["mase"] == pytest.approx(1.0)
    assert m["directional_accuracy"] is None and m["direction_p_value"] is None


def test_direction_profile_of_a_varied_forecast():
    # PRED moves: up, up, down, up -> 75 % up, 2 flips
    m = forecast_metrics(ACTUAL, PRED, LAST, mase_scale=1.0)
    assert (m["up_share"], m["sign_changes"], m["constant_direction"]) == (75.0, 2, False)
    # "no move" forecasts are skipped when counting flips: up, none, up, down -> 1 flip
    p = direction_profile(np.array([101.0, 100.0, 102.0, 99.0]), LAST)
    assert p == {"up_share": 50.0, "sign_changes": 1, "constant_direction": False}


def test_a_forecast_that_never_changes_sign_is_flagged():
    """Always 'down' on a mostly falling market: a high accuracy that only measures the base
    rate; the metrics say so."""
    last = np.full(40, 100.0)
    actual = np.r_[np.full(30, 99.0), np.full(10, 101.0)]  # 75 % down
    m = forecast_metrics(actual, last - 0.5, last, mase_scale=1.0)
    assert m["directional_accuracy"] == pytest.approx(75.0)
    assert m["constant_direction"] is True and m["sign_changes"] == 0 and m["up_share"] == 0.0
    # persistence predicts no move at all: no direction, so no flag either way
    assert forecast_metrics(actual, last, last, mase_scale=1.0)["constant_direction"] is None


def test_forecast_metrics_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        forecast_metrics(ACTUAL, PRED[:3], LAST, mase_scale=1.0)


def test_empty_split_gives_none_not_a_crash():
    m = forecast_metrics(np.array([]), np.array([]), np.array([]), mase_scale=1.0)
    assert m["n"] == 0 and m["mape"] is None and m["skill"] is None


# ---------------------------------------------------------------------------------------
# Statistics against scipy


@pytest.mark.parametrize("hits,n", [(0, 1), (1, 1), (5, 10), (7, 10), (0, 20), (55, 100),
                                    (212, 396), (230, 396), (2000, 3900)])
def test_wilson_interval_matches_scipy(hits, n):
    ref = stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(hits, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


@pytest.mark.parametrize("hits,n", [(0, 1), (1, 1), (5, 10), (7, 10), (0, 20), (55, 100),
                                    (212, 396), (230, 396), (198, 396), (2000, 3900)])
def test_binomial_p_value_matches_scipy(hits, n):
    assert binomial_p_value(hits, n) == pytest.approx(stats.binomtest(hits, n, 0.5).pvalue,
                                                      rel=1e-9, abs=1e-15)


def test_statistics_pinned_by_hand():
    # P(X <= 3 | n=10, p=1/2) = (1 + 10 + 45 + 120) / 1024; two-sided = twice that
    assert binomial_p_value(7, 10) == pytest.approx(2 * 176 / 1024, rel=1e-12)
    assert binomial_p_value(5, 10) == 1.0
    # Wilson: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = 0.5, n = 10
    z = 1.959963984540054
    centre, half = 0.5, z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert wilson_interval(5, 10) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(0, 20)[0] == 0.0


def test_statistics_refuse_zero_trials():
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        binomial_p_value(0, 0)
    with pytest.raises(ValueError, match="hits=11, n=10"):
        binomial_p_value(11, 10)


def test_dm_identical_forecasts_show_no_difference():
    e = np.random.default_rng(0).normal(size=300)
    r = diebold_mariano(e, e.copy())
    assert r["stat"] == 0.0 and r["p_value"] == 1.0 and r["mean_diff"] == 0.0


def test_dm_clearly_better_forecast_is_significant_and_signed():
    rng = np.random.default_rng(1)
    base = rng.normal(size=400)
    better, worse = 0.5 * base + 0.05 * rng.normal(size=400), base
    r = diebold_mariano(better, worse)
    assert r["stat"] < 0 and r["p_value"] < 0.01 and r["p_better"] < 0.01
    flipped = diebold_mariano(worse, better)
    assert flipped["stat"] == pytest.approx(-r["stat"]) and flipped["p_better"] > 0.99


def newey_west_by_hand(d, lags):
    """(gamma_0 + 2 sum_l (1 - l / (L + 1)) gamma_l) / n, written out term by term."""
    d = np.asarray(d, float)
    n, e = len(d), d - d.mean()
    gamma = [sum(e[t] * e[t - lag] for t in range(lag, n)) / n for lag in range(lags + 1)]
    return (gamma[0] + 2 * sum((1 - lag / (lags + 1)) * gamma[lag]
                               for lag in range(1, lags + 1))) / n


def test_newey_west_lags_follow_the_stated_rule():
    assert [newey_west_lags(n) for n in (4, 6, 100, 397, 2865)] == [1, 2, 4, 5, 8]


def test_hac_variance_matches_statsmodels_on_a_fixed_series():
    """The HAC variance of a mean is statsmodels' OLS(d, const) HAC covariance (Bartlett
    kernel, no small-sample correction), on an autocorrelated series (an AR(1))."""
    import statsmodels.api as sm
    rng = np.random.default_rng(3)
    d = np.zeros(400)
    for t in range(1, 400):
        d[t] = 0.6 * d[t - 1] + rng.normal()
    for lags in (0, 3, newey_west_lags(400), 12):
        fit = sm.OLS(d, np.ones(400)).fit(cov_type="HAC",
                                           cov_kwds={"maxlags": lags, "use_correction": False})
        assert hac_variance(d, lags) == pytest.approx(float(fit.cov_params()[0, 0]), rel=1e-10)
        assert hac_variance(d, lags) == pytest.approx(newey_west_by_hand(d, lags), rel=1e-10)
    # on an autocorrelated series the HAC variance is larger than var(d) / n: the plain
    # Diebold-Mariano statistic would overstate significance
    assert hac_variance(d) > 2 * d.var() / len(d)


def test_dm_statistic_and_p_value_by_hand_and_scipy():
    a = np.array([1.0, -2.0, 0.5, 3.0, -1.0, 0.2])
    b = np.array([0.5, -1.0, 1.5, 2.0, -0.5, 0.1])
    d = np.abs(a) - np.abs(b)
    stat = d.mean() / math.sqrt(newey_west_by_hand(d, 2))   # 6 samples: 2 lags
    r = diebold_mariano(a, b)
    assert r["lags"] == 2 and r["stat"] == pytest.approx(stat)
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(stat)))
    assert r["p_better"] == pytest.approx(stats.norm.cdf(stat))
    sq = diebold_mariano(a, b, loss="squared")
    d2 = a**2 - b**2
    assert sq["stat"] == pytest.approx(d2.mean() / math.sqrt(newey_west_by_hand(d2, 2)))
    plain = diebold_mariano(a, b, lags=0)                    # lags 0: var(d) / n
    assert plain["stat"] == pytest.approx(d.mean() / math.sqrt(d.var() / len(d)))


def test_dm_scale_invariant():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=200), rng.normal(size=200)
    assert diebold_mariano(1000 * a, 1000 * b)["stat"] == pytest.approx(diebold_mariano(a, b)["stat"])


def test_dm_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        diebold_mariano(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="'absolute' or 'squared'"):
        diebold_mariano(np.zeros(3), np.zeros(3), loss="pinball")


def test_holm_adjust_by_hand():
    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert holm_adjust([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert holm_adjust([0.3, 0.2]) == pytest.approx([0.4, 0.4])  # 2 x 0.2, then max(0.4, 0.3)
    assert holm_adjust([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm_adjust([]) == []


# ---------------------------------------------------------------------------------------
# Baselines as models


@pytest.fixture(scope="module")
def data():
    return prepare_dataset(synthetic_klines("BTCUSDT", "15m", 1200), TINY_FEATURES, interval="15m")


def test_baselines_have_model_verbs_and_score_the_model_samples(data):
    te = data.split("test")
    assert np.array_equal(PersistenceBaseline().fit(data).predict(data, te), data.last_close[te])
    drift = DriftBaseline().fit(data).predict(data, te)
    assert drift == pytest.approx(data.last_close[te] * math.exp(data.target_mean))
    lin = LinearBaseline().fit(data)
    pred = lin.predict(data, te)
    assert pred.shape == (data.n_test,) and np.all(np.isfinite(pred))
    assert lin.alpha == min(lin.val_mse, key=lin.val_mse.get)  # chosen on validation


def test_linear_baseline_recovers_a_linear_signal(data):
    """Ridge must find a target that is a linear function of the window (sanity of the fit)."""
    lin = LinearBaseline()
    x = lin.inputs(data, np.arange(len(data.ends)))
    assert x.shape == (len(data.ends), 3 * data.transform.n_components)  # lags 1, 4, 16 (= seq_len)
    assert np.allclose(x[:, :data.transform.n_components], data.features[data.ends])
    coef = np.random.default_rng(3).normal(size=x.shape[1])
    fake = dataclasses.replace(data, target=(x @ coef).astype(np.float32))
    lin = LinearBaseline().fit(fake)
    te = fake.split("test")
    resid = lin.predict_standardized(fake, te) - fake.target[te]
    assert np.std(resid) < 0.05 * np.std(fake.target[te])
    assert lin.alpha <= 1.0


def test_linear_baseline_never_sees_test_targets(data):
    """Changing the test targets changes nothing in the fitted ridge (fit on train, alpha on val)."""
    a = LinearBaseline().fit(data)
    t = data.target.copy()
    t[data.split("test")] = 1e6
    b = LinearBaseline().fit(dataclasses.replace(data, target=t))
    assert a.alpha == b.alpha and np.array_equal(a.coef, b.coef)


def test_evaluate_pair_scores_all_baselines_on_the_same_samples(data):
    te = data.split("test")
    ev = evaluate_pair(data, data.last_close[te] * 1.0001)
    assert set(ev["baseline"]) == set(BASELINES)
    for m in [ev["test"]] + list(ev["baseline"].values()):
        assert set(m) == set(METRIC_FIELDS) and m["n"] == data.n_test
    assert ev["baseline"]["persistence"]["skill"] == 0.0
    assert ev["mase_scale"] == pytest.approx(np.mean(np.abs(data.actual_close[:data.n_train]
                                                            - data.last_close[:data.n_train])))
    assert ev["tuning"]["linear"]["alpha"] in LinearBaseline().alphas


# ---------------------------------------------------------------------------------------
# Backtest on a constructed price path
#   closes 100 -> 110 -> 99 -> 108.9: moves +10 %, -10 %, +10 %; forecasts up, down, up


BT_LAST = np.array([100.0, 110.0, 99.0])
BT_ACTUAL = np.array([110.0, 99.0, 108.9])
BT_PRED = np.array([101.0, 100.0, 100.0])
FEE = 0.001


def test_backtest_long_flat_known_trades_and_fees():
    r = backtest_direction(BT_PRED, BT_LAST, BT_ACTUAL, interval="1h", fee_per_side=FEE,
                           keep_equity=True)["long_flat"]
    # buy at 100 (fee), +10 %, sell at 110 (fee), flat, buy at 99 (fee), +10 %, sell (fee)
    expected = (1 - FEE) * 1.1 * (1 - FEE) * (1 - FEE) * 1.1 * (1 - FEE)
    assert r["total_return"] == pytest.approx(expected - 1)
    assert r["trades"] == 4 and r["fees_paid"] == pytest.approx(4 * FEE)
    assert r["exposure"] == pytest.approx(2 / 3)
    assert r["equity"] == pytest.approx([1.0, (1 - FEE) * 1.1, (1 - FEE)**2 * 1.1, expected])
    assert r["max_drawdown"] == pytest.approx(FEE)  # the fee of the sell at 110


def test_backtest_long_short_and_buy_and_hold():
    bt = backtest_direction(BT_PRED, BT_LAST, BT_ACTUAL, interval="1h", fee_per_side=FEE)
    ls = bt["long_short"]
    # long (1 side), flip to short (2 sides), flip to long (2 sides), close (1 side)
    assert ls["total_return"] == pytest.approx(1.1**3 * (1 - FEE) * (1 - 2 * FEE)**2 * (1 - FEE) - 1)
    assert ls["trades"] == 4 and ls["fees_paid"] == pytest.approx(6 * FEE)
    bh = bt["buy_and_hold"]
    assert bh["total_return"] == pytest.approx((1 - FEE) * 1.1 * 0.9 * 1.1 * (1 - FEE) - 1)
    assert bh["trades"] == 2
    assert bh["max_drawdown"] == pytest.approx(0.1)  # 1.1 -> 0.99 before fees
    assert "equity" not in bh  # only kept on request


def test_backtest_sharpe_annualised_for_the_timeframe():
    r = backtest_positions(np.ones(3), BT_LAST, BT_ACTUAL, fee_per_side=0.0, interval="15m")
    steps = BT_ACTUAL / BT_LAST - 1
    assert r["sharpe"] == pytest.approx(steps.mean() / steps.std(ddof=1) * math.sqrt(365.25 * 96))
    assert periods_per_year("1h") == pytest.approx(365.25 * 24)


def test_backtest_flat_strategy_has_no_sharpe_and_no_trades():
    r = backtest_positions(np.zeros(3), BT_LAST, BT_ACTUAL, fee_per_side=FEE, interval="1h")
    assert r["total_return"] == 0.0 and r["trades"] == 0 and r["sharpe"] is None


def test_backtest_rejects_a_percentage_fee():
    with pytest.raises(ConfigError, match="fraction"):
        backtest_positions(np.ones(3), BT_LAST, BT_ACTUAL, fee_per_side=1.0, interval="1h")


def test_market_move_of_the_test_samples():
    mm = market_move(BT_LAST, BT_ACTUAL)  # 100 -> 108.9; up, down, up
    assert mm["change"] == pytest.approx(0.089)
    assert mm["up_share"] == pytest.approx(200 / 3) and mm["down_share"] == pytest.approx(100 / 3)
    bt = backtest_direction(BT_PRED, BT_LAST, BT_ACTUAL, interval="1h")
    assert bt["test_market"] == mm


# ---------------------------------------------------------------------------------------
# Across pairs


def _entry(skill_p, dir_acc, dir_p, skill=0.0, constant=False):
    return {"test": {"n": 100, "mape": 0.3, "skill": skill, "dm_p_better": skill_p,
                     "directional_accuracy": dir_acc, "direction_p_value": dir_p,
                     "constant_direction": constant},
            "baseline": {b: {"skill": 0.0} for b in BASELINES}}


def test_summarize_pairs_counts_with_holm_and_reports_the_spread():
    entries = {"A_1h": _entry(0.001, 56.0, 0.004, 0.02), "B_1h": _entry(0.02, 51.0, 0.7, 0.01),
               "C_1h": _entry(0.999, 48.0, 0.5, -0.03)}
    s = summarize_pairs(entries)
    # Holm on better: 0.003, 0.04, 0.999 -> A and B beat (< 0.05); C is worse (1 - 0.999)
    assert s["beat_persistence"] == {"count": 2, "pairs": ["A_1h", "B_1h"]}
    assert s["worse_than_persistence"]["pairs"] == ["C_1h"]
    assert s["median_skill"]["model"] == pytest.approx(0.01)
    d = s["directional_accuracy"]
    assert (d["min"], d["median"], d["max"]) == (48.0, 51.0, 56.0)
    assert d["above_50_significant"]["pairs"] == ["A_1h"]
    assert sum(d["histogram"]["counts"]) == 3
    assert s["significance"]["correction"] == "holm"
    assert s["guide_targets"] == {"mape_below_0.02_pct": 0, "direction_above_90_pct": 0}


# ---------------------------------------------------------------------------------------
# Walk-forward: folds never train on rows they test, and test blocks move forward


@pytest.fixture(scope="module")
def wf_klines():
    return synthetic_klines("ETHUSDT", "1h", 1400)


def _fold_datasets(klines, k):
    full = prepare_dataset(klines, TINY_FEATURES, interval="1h")
    folds = walk_forward_folds(full.ends, k, test_size=full.n_test, train_frac=0.7, val_frac=0.15,
                               min_samples=20)
    out = []
    for f in folds:
        tf, vf = fold_fractions(f)
        cfg = dataclasses.replace(TINY_FEATURES, train_frac=tf, val_frac=vf)
        out.append((f, prepare_dataset(klines.iloc[:f.n_candles], cfg, interval="1h")))
    return full, out


def test_walk_forward_folds_never_train_on_their_test_rows(wf_klines):
    full, folds = _fold_datasets(wf_klines, 3)
    prev_test_last = -1
    for f, d in folds:
        assert (d.n_train, d.n_val, d.n_test) == (f.n_train, f.n_val, f.n_test)
        assert np.array_equal(d.ends, full.ends[:f.n_samples])  # same samples as the full series
        tr, va, te = d.split("train"), d.split("val"), d.split("test")
        test_rows = d.ends[te]
        first_test_window_row = test_rows[0] - d.seq_len + 1
        # every training target candle (row t+1) comes before the first test target candle, and
        # the last training target is not inside any test window's future
        assert d.ends[tr][-1] + 1 < test_rows[0] + 1
        assert d.ends[va][-1] < test_rows[0]
        assert d.ends[tr][-1] + 1 <= d.ends[va][0]
        # the fold saw no candle after its last test target
        assert f.n_candles == test_rows[-1] + 2
        # test blocks move forward and never overlap
        assert test_rows[0] > prev_test_last
        prev_test_last = test_rows[-1]
        assert first_test_window_row >= 0
    # the blocks tile the end of the series: the last fold ends where the full series ends
    assert prev_test_last == full.ends[-1]
    # the training window expands
    assert [f.n_train for f, _ in folds] == sorted(f.n_train for f, _ in folds)


def test_walk_forward_preprocessing_is_fitted_on_the_fold_training_rows_only(wf_klines):
    """Changing every candle after a fold's last training target leaves that fold's scaler,
    PCA and target statistics unchanged: nothing later was used to fit them."""
    _, folds = _fold_datasets(wf_klines, 2)
    f, d = folds[0]
    last_train_target_row = int(d.ends[d.n_train - 1]) + 1
    changed = wf_klines.copy()
    rows = changed.index[last_train_target_row + 1:]
    factor = 1.0 + 0.3 * np.sin(np.arange(len(rows)))  # a different multiple on every candle
    for col in ("open", "high", "low", "close", "volume"):
        changed.loc[rows, col] *= factor
    tf, vf = fold_fractions(f)
    cfg = dataclasses.replace(TINY_FEATURES, train_frac=tf, val_frac=vf)
    d2 = prepare_dataset(changed.iloc[:f.n_candles], cfg, interval="1h")
    assert np.allclose(d2.transform.mean, d.transform.mean)
    assert np.allclose(d2.transform.components, d.transform.components)
    assert d2.target_mean == pytest.approx(d.target_mean) and d2.target_std == pytest.approx(d.target_std)
    assert np.array_equal(d2.target[:d.n_train], d.target[:d.n_train])
    assert not np.array_equal(d2.target[d.split("test")], d.target[d.split("test")])


def test_walk_forward_refuses_too_many_folds(wf_klines):
    full = prepare_dataset(wf_klines, TINY_FEATURES, interval="1h")
    with pytest.raises(ConfigError, match=r"walk-forward with 9 folds .* Use fewer folds"):
        walk_forward_folds(full.ends, 9, test_size=full.n_test, train_frac=0.7, val_frac=0.15,
                           min_samples=20)
    with pytest.raises(ConfigError, match="folds >= 1"):
        walk_forward_folds(full.ends, 0, test_size=full.n_test, train_frac=0.7, val_frac=0.15,
                           min_samples=20)


def test_constant_direction_pairs_are_not_significantly_above_50():
    """A pair forecast 'down' on every candle of a falling market has a tiny binomial p-value;
    it is counted apart, not as skill, and stays out of the Holm family."""
    entries = {"A_1h": _entry(0.5, 56.0, 0.004), "D_1h": _entry(0.5, 70.0, 1e-9, constant=True)}
    d = summarize_pairs(entries)["directional_accuracy"]
    assert d["above_50_significant"] == {"count": 1, "pairs": ["A_1h"]}
    assert d["constant_direction"] == {"count": 1, "pairs": ["D_1h"]}
    per = summarize_pairs(entries)["per_pair"]
    assert per["D_1h"]["direction_p_holm"] is None and per["D_1h"]["constant_direction"] is True
    assert per["A_1h"]["direction_p_holm"] == pytest.approx(0.004)  # a family of one


def test_summary_says_how_the_test_markets_moved():
    def bt(change):
        r = {"total_return": 0.0, "trades": 2, "exposure": 0.5}
        return {"long_flat": r, "long_short": r, "buy_and_hold": r,
                "test_market": {"change": change, "up_share": 52.0, "down_share": 48.0, "n": 9}}
    entries = {k: dict(_entry(0.5, 50.0, 1.0), backtest=bt(c))
               for k, c in (("A_1h", 0.032), ("B_1h", -0.01), ("C_1h", 0.05))}
    tm = summarize_pairs(entries)["backtest"]["test_market"]
    assert tm == {"median_change": pytest.approx(0.032), "median_up_share": 52.0, "rose": 2,
                  "fell": 1, "n_pairs": 3}


def test_mean_forecast_val_loss_is_the_validation_mse_of_predicting_the_training_mean(data):
    va = data.split("val")
    loss = mean_forecast_val_loss(data)
    r = np.log(data.actual_close[va] / data.last_close[va])
    assert loss == pytest.approx(np.mean(((r - data.target_mean) / data.target_std) ** 2), rel=1e-4)
    calm = dataclasses.replace(data, target=data.target * np.float32(0.5))
    assert mean_forecast_val_loss(calm) == pytest.approx(loss / 4, rel=1e-5)  # not pinned at 1.0


def test_linear_penalty_at_the_largest_value_tried_is_marked_as_drift(data):
    """A signal that flips sign on validation: every fitted slope loses there, the largest
    penalty wins and the ridge is in effect drift; a real signal picks the small penalty."""
    lin = LinearBaseline()
    x = lin.inputs(data, np.arange(len(data.ends)))
    y = x @ np.random.default_rng(3).normal(size=x.shape[1])
    flipped = y.copy()
    flipped[data.split("val")] *= -1
    grid = (1e-2, 1e8)
    for target, alpha, largest in ((flipped, 1e8, True), (y, 1e-2, False)):
        fake = dataclasses.replace(data, target=target.astype(np.float32))
        t = evaluate_pair(fake, fake.last_close[fake.split("test")],
                          baselines=[LinearBaseline(alphas=grid)])["tuning"]["linear"]
        assert (t["alpha"], t["at_largest_alpha"], t["at_grid_edge"]) == (alpha, largest, True)
