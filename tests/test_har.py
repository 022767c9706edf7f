"""v3_har and the `har` interval baseline: the regressors by hand, the OLS on known
coefficients, causality of the range inputs, and a synthetic market whose volatility follows a
HAR with an hour-of-day pattern (the HAR finds it and beats the EWMA there)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import v3_har
from tests.conftest import TINY_FEATURES
from v3_data_processor import prepare_dataset
from v3_har import DAY_MS, HOUR_MS, HarFit, design, fit_har, history_candles, range_features
from v3_indicators import PARKINSON_FLOOR
from v3_interval_scores import per_sample_pinball
from v3_intervals import EwmaBaseline, HarBaseline, sample_returns
from v3_market_data import synthetic_klines

T0 = 1_704_067_200_000          # 2024-01-01 00:00 UTC, a Monday


def test_design_row_by_hand():
    """One sample: the log of each range input (floored), the forecast candle's hour dummy
    and weekend flag. 2024-01-06 13:00 UTC is a Saturday."""
    rv = np.array([[1e-4, 2e-4, 0.0, 4e-4]])                 # a day mean of 0: floored
    sat_13h = T0 + 5 * DAY_MS + 13 * HOUR_MS
    x = design(rv, np.array([sat_13h]))
    assert x.shape == (1, 1 + 4 + 23 + 1) == (1, 1 + len(v3_har.HAR_INPUTS))
    np.testing.assert_allclose(x[0, :5], [1.0, math.log(1e-4), math.log(2e-4),
                                          math.log(PARKINSON_FLOOR), math.log(4e-4)])
    hours = x[0, 5:28]
    assert hours.sum() == 1.0 and hours[12] == 1.0           # hour_13 is the 13th dummy
    assert x[0, 28] == 1.0                                   # weekend
    monday_0h = design(rv, np.array([T0]))
    assert monday_0h[0, 5:].sum() == 0.0                     # hour 0 and a weekday: reference


def test_ols_recovers_known_coefficients_exactly():
    """ln PV_(t+1) built as an exact linear function of the regressors: the fit gives back the
    coefficients, R^2 = 1, and the volatility is exp(x b / 2)."""
    rng = np.random.default_rng(0)
    n = 24 * 9                                                # 9 days of hourly samples
    open_time = T0 + HOUR_MS * np.arange(1, n + 1)
    rv = np.exp(rng.normal(-9, 1, (n, 4)))
    beta = np.r_[-2.0, 0.3, 0.2, 0.25, 0.15, rng.normal(0, 0.3, 23), 0.4]
    next_rv = np.exp(design(rv, open_time) @ beta)
    fit = fit_har(rv, next_rv, open_time)
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-8, atol=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.n_fit == n
    np.testing.assert_allclose(fit.volatility(rv, open_time), np.sqrt(next_rv), rtol=1e-8)
    assert HarFit.from_dict(fit.to_dict()) == fit


def test_a_clock_column_that_never_varies_gets_no_weight():
    """Daily candles all open at 00:00: the hour dummies are all zero, the OLS still solves."""
    rng = np.random.default_rng(1)
    n = 200
    open_time = T0 + DAY_MS * np.arange(n)
    rv = np.exp(rng.normal(-7, 1, (n, 4)))
    fit = fit_har(rv, np.exp(rng.normal(-7, 1, n)), open_time)
    assert np.all(np.asarray(fit.beta[5:28]) == 0.0)


def test_range_inputs_of_row_t_ignore_later_candles():
    k = synthetic_klines("BTCUSDT", "15m", 1500)
    base = range_features(k.high, k.low, k.open_time, 900_000)
    moved = k.copy()
    t = 1000
    rng = np.random.default_rng(2)
    f = np.exp(rng.normal(0, 0.05, len(k) - t - 1))
    moved.loc[t + 1:, "high"] *= f * 1.02
    moved.loc[t + 1:, "low"] *= f / 1.02
    after = range_features(moved.high, moved.low, moved.open_time, 900_000)
    np.testing.assert_array_equal(after[:t + 1], base[:t + 1])
    assert not np.allclose(after[t + 1:], base[t + 1:])


def test_long_means_average_what_exists():
    """The week mean of the first candles averages the candles there are; with a gap, the
    candles inside the window."""
    hi = np.array([101.0, 102.0, 103.0, 104.0])
    lo = np.array([100.0, 100.0, 100.0, 100.0])
    ot = np.array([0, 1, 2, 5]) * HOUR_MS                     # a 3-hour gap before the last
    rf = range_features(hi, lo, ot, HOUR_MS)
    pv = np.log(hi / lo) ** 2 / (4 * math.log(2))
    np.testing.assert_allclose(rf[:, 0], pv)                  # the candle itself
    np.testing.assert_allclose(rf[:, 3], np.cumsum(pv) / np.arange(1, 5))    # the week
    np.testing.assert_allclose(rf[3, 1], pv[2:].mean())       # (1h, 5h]: the 2h and 5h candles
    np.testing.assert_allclose(rf[2, 1], pv[:3].mean())
    assert history_candles(HOUR_MS) == 168 and history_candles(900_000) == 672


def har_market(n: int, seed: int) -> pd.DataFrame:
    """Hourly candles whose variance follows a HAR with a US-session bump (+1.0 in ln
    variance at 13:00-16:59 UTC) and a calmer weekend (-0.5); intra-candle paths of 12
    Brownian steps give the highs, lows and closes."""
    rng = np.random.default_rng(seed)
    open_time = T0 + HOUR_MS * np.arange(n)
    hour = (open_time // HOUR_MS) % 24
    weekend = ((open_time // DAY_MS + 3) % 7) >= 5
    clock = np.where((hour >= 13) & (hour <= 16), 1.0, 0.0) - 0.5 * weekend
    lnv = np.full(n, math.log(1e-5))
    for t in range(1, n):
        day = lnv[max(0, t - 24):t].mean()
        lnv[t] = (-11.5 * 0.5 + 0.25 * lnv[t - 1] + 0.25 * day + clock[t]
                  + rng.normal(0, 0.35))
    steps = rng.normal(size=(n, 12)) * np.sqrt(np.exp(lnv) / 12)[:, None]
    path = np.cumsum(steps, axis=1)
    close_log = np.cumsum(path[:, -1]) + math.log(100.0)
    open_log = np.r_[math.log(100.0), close_log[:-1]]
    high_log = open_log + np.maximum(path.max(axis=1), np.maximum(0, path[:, -1]))
    low_log = open_log + np.minimum(path.min(axis=1), np.minimum(0, path[:, -1]))
    o, c = np.exp(open_log), np.exp(close_log)
    return pd.DataFrame({"open_time": open_time, "open": o,
                         "high": np.maximum.reduce([np.exp(high_log), o, c]),   # exp rounds
                         "low": np.minimum.reduce([np.exp(low_log), o, c]),
                         "close": c, "volume": 1.0 + rng.random(n)})


def test_har_finds_the_hour_pattern_and_beats_ewma_on_a_har_market():
    data = prepare_dataset(har_market(4000, seed=3), TINY_FEATURES, interval="1h")
    har = HarBaseline().fit(data)
    beta = np.asarray(har.fitted.beta)
    hours = beta[5:28]                                         # hours 1..23 vs hour 0
    session = hours[12:16].mean()                              # 13:00-16:59
    others = np.delete(hours, range(12, 16)).mean()
    assert session - others == pytest.approx(1.0, abs=0.35)    # the +1.0 bump, found
    assert beta[28] == pytest.approx(-0.5, abs=0.25)           # the calmer weekend
    te = data.split("test")
    y = sample_returns(data)[te]
    loss_har = per_sample_pinball(y, har.predict_returns(data, te)).mean()
    loss_ewma = per_sample_pinball(y, EwmaBaseline().fit(data).predict_returns(data, te)).mean()
    assert loss_har < 0.97 * loss_ewma                         # > 3 % better: range and clock
