"""Tests of v3_data_processor: indicators against TA-Lib, no look-ahead, warm-up agreement,
train-only scaling + PCA, windows and gaps, input validation, live windows, the benchmark.

Tolerances are relative to the value, floored at the column's median magnitude: a value far
smaller than the column's typical size (a MACD histogram crossing zero, a return of 0) has no
meaningful relative error, and the model sees each column standardised, so an error of 1e-8
(or 1e-6) of the column's typical size is what matters there.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import ast
import inspect
import json
import logging
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import v3_data_processor as dp
from conftest import tiny_config
from v3_colab_training import V3CoLabPipeline
from v3_common import (INTERVAL_MS, CheckpointError, DataValidationError, InsufficientDataError)
from v3_data_processor import (WARMUP_CANDLES, FeatureConfig, PreparedData, compute_indicators,
                               latest_window, prepare_dataset, validate_klines)
from v3_indicators import (DAY_MS, FEATURE_DOCS, PARKINSON_FLOOR, _rolling_mean_std,
                           clock_features, feature_names, parkinson_variance,
                           trailing_time_mean)
from v3_market_data import synthetic_klines, write_klines

ROOT = Path(__file__).resolve().parents[1]
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01: every synthetic candle is closed by then


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_features", ROOT / "bench" / "bench_features.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def rel_err(a, b) -> np.ndarray:
    """|a - b| / max(|b|, median |b| of the column), column by column (0 where both NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    floor = np.nanmedian(np.abs(b), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(a - b) / np.maximum(np.abs(b), floor)
    err[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    err[np.isnan(err)] = np.inf  # NaN on one side only
    return err


def assert_close(a, b, tol: float, what: str = "") -> None:
    err = rel_err(a, b)
    assert err.max() <= tol, f"{what}: max error {err.max():.2e} > {tol:g}"


def flat_klines(n: int, *, price: float = 2.5, volume: float = 0.0) -> pd.DataFrame:
    t = 1_700_000_000_000 + 3_600_000 * np.arange(n, dtype=np.int64)
    return pd.DataFrame({"open_time": t, "open": price, "high": price, "low": price,
                         "close": price, "volume": volume})


@pytest.fixture(scope="module")
def btc():
    return synthetic_klines("BTCUSDT", "15m", 1500)


# ---------------------------------------------------------------------------------------
# The columns


def test_at_least_30_documented_columns_in_order(btc):
    feats = compute_indicators(btc)
    assert len(feats.columns) >= 30
    assert list(feats.columns) == list(FEATURE_DOCS) == feature_names()
    assert all(doc.strip() and "\n" not in doc for doc in FEATURE_DOCS.values())
    assert feats.index.equals(btc.index) and len(feats) == len(btc)
    assert feats.iloc[:WARMUP_CANDLES].isna().all().all()
    assert np.isfinite(feats.iloc[WARMUP_CANDLES:].to_numpy()).all()


def test_no_raw_price_or_volume_levels(btc):
    """Prices x 1000 and volumes x 7 change nothing: every column is relative."""
    scaled = btc.copy()
    scaled[["open", "high", "low", "close"]] *= 1000.0
    scaled["volume"] *= 7.0
    assert_close(compute_indicators(scaled).to_numpy(), compute_indicators(btc).to_numpy(), 1e-9,
                 "scale invariance")


def test_only_open_time_and_ohlcv_needed_and_optional_columns_may_be_empty(btc):
    """The clock columns and the day's Parkinson mean read open_time; nothing else is needed."""
    bare = btc[["open_time", "open", "high", "low", "close", "volume"]]
    empty_optional = btc.assign(quote_volume=np.nan, trades=np.nan, taker_buy_base=np.nan,
                                taker_buy_quote=np.nan, close_time=np.nan)
    ref = compute_indicators(btc)
    pd.testing.assert_frame_equal(compute_indicators(bare), ref)
    pd.testing.assert_frame_equal(compute_indicators(empty_optional), ref)
    with pytest.raises(KeyError, match="open_time"):
        compute_indicators(bare.drop(columns=["open_time"]))


LOOK_AHEAD = "shift(-k), bfill/backfill, center=True"


def look_ahead_patterns(src: str) -> list[str]:
    """The look-ahead idioms in Python source: a shift by a negative amount (`x.shift(-1)`,
    `_shift(x, -k)`), a backward fill (`bfill`, `backfill`, `fillna(method='bfill')`) and a
    centred rolling window (`center=True`), each with its line number."""
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Attribute) and node.attr in ("bfill", "backfill"):
            found.append(f"line {node.lineno}: .{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        args = list(node.args) + [k.value for k in node.keywords if k.arg in ("periods", "k")]
        if "shift" in name and any(isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub)
                                   or isinstance(a, ast.Constant) and isinstance(a.value, (int, float))
                                   and a.value < 0 for a in args):
            found.append(f"line {node.lineno}: {name}(-...)")
        for k in node.keywords:
            if k.arg == "center" and isinstance(k.value, ast.Constant) and k.value.value:
                found.append(f"line {node.lineno}: center=True")
            if k.arg == "method" and isinstance(k.value, ast.Constant) and \
                    k.value.value in ("bfill", "backfill"):
                found.append(f"line {node.lineno}: method={k.value.value!r}")
    return found


def test_the_look_ahead_check_finds_each_idiom():
    """The source check below can fail: each idiom it looks for is found in a snippet."""
    snippet = ("a = s.shift(-1)\nb = _shift(x, -k)\nc = s.bfill()\nd = s.fillna(method='backfill')\n"
               "e = s.rolling(5, center=True).mean()\nf = s.shift(periods=-2)\n")
    assert len(look_ahead_patterns(snippet)) == 6
    assert look_ahead_patterns("a = s.shift(1)\nb = _shift(x, k)\nc = s.ffill()\n") == []


def test_the_feature_modules_never_look_ahead_in_their_source():
    """No look-ahead idiom in the modules that compute features: the indicator formulas
    (v3_indicators, where indicator_table lives) and step 3 (v3_data_processor). The
    behavioural checks (prefix equality at fixed and random cuts) are below."""
    import v3_indicators
    assert hasattr(v3_indicators, "indicator_table"), "the formulas moved: check their module"
    for mod in (v3_indicators, dp):
        assert look_ahead_patterns(inspect.getsource(mod)) == [], (mod.__name__, LOOK_AHEAD)


# ---------------------------------------------------------------------------------------
# Reference check against TA-Lib. Conventions that differ, and what is checked instead:
# - ours are relative to the close (SMA / close - 1 ...): the level is rebuilt and compared;
# - TA-Lib's MACD seeds its fast EMA at the slow EMA's first row (row 25) where its EMA seeds
#   at row 11; our MACD line is exactly talib.EMA(12) - talib.EMA(26), and equals talib.MACD
#   once that seed has decayed ((11/13)^k, far below 1e-8 after the warm-up);
# - OBV has no fixed level (it depends on where it started): obv_slope_20 is checked against
#   differences of talib.OBV over talib.SUM(volume, 20);
# - flat ranges and no moves: TA-Lib gives 0 (stoch, %R, RSI, MFI, and DX is skipped in ADX),
#   ours the neutral values in FEATURE_DOCS (test_flat_market_gives_the_documented_values);
#   TA-Lib also treats |x| < 1e-8 as zero in absolute terms (RSI, DI, ADX), which bites on
#   coins priced below ~1e-6; the series here are priced far above that.
# - %B, ratios and returns have no TA-Lib function: they are built from BBANDS, ROCR, STDDEV.


def _talib_reference(k: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{check: (ours rebuilt to TA-Lib's quantity, TA-Lib)} for one series."""
    o, h, l, c, v = (k[x].to_numpy(np.float64) for x in ("open", "high", "low", "close", "volume"))
    f = {name: col.to_numpy() for name, col in compute_indicators(k).items()}
    up, mid, lo = talib.BBANDS(c, 20, 2, 2, 0)
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    slow_k, slow_d = talib.STOCH(h, l, c, 14, 3, 0, 3, 0)
    obv = talib.OBV(c, v)
    lr = np.log(talib.ROCR(c, 1))
    ref = {
        **{f"sma_{n}": ((f[f"sma_{n}_rel"] + 1) * c, talib.SMA(c, n)) for n in (7, 14, 30, 50)},
        **{f"ema_{n}": ((f[f"ema_{n}_rel"] + 1) * c, talib.EMA(c, n)) for n in (12, 26)},
        **{f"ret_{n}": (f[f"ret_{n}"] + 1, talib.ROCR(c, n)) for n in (1, 3, 6, 12)},
        **{f"log_ret_{n}": (f[f"log_ret_{n}"], np.log(talib.ROCR(c, n))) for n in (1, 3, 6, 12)},
        "bb_upper": ((f["bb_upper_rel"] + 1) * c, up),
        "bb_lower": ((f["bb_lower_rel"] + 1) * c, lo),
        "bb_width": (f["bb_width"], (up - lo) / mid),
        "bb_pct_b": (f["bb_pct_b"], (c - lo) / (up - lo)),
        "rsi": (f["rsi_14"], talib.RSI(c, 14)),
        "macd=EMA12-EMA26": (f["macd_rel"] * c, talib.EMA(c, 12) - talib.EMA(c, 26)),
        "macd": (f["macd_rel"] * c, macd),
        "macd_signal": (f["macd_signal_rel"] * c, signal),
        "macd_hist": (f["macd_hist_rel"] * c, hist),
        "trange": (f["true_range_rel"] * c, talib.TRANGE(h, l, c)),
        "atr": (f["atr_14_rel"] * c, talib.ATR(h, l, c, 14)),
        "stoch_k": (f["stoch_k"], slow_k),
        "stoch_d": (f["stoch_d"], slow_d),
        "willr": (f["williams_r"], talib.WILLR(h, l, c, 14)),
        "cci": (f["cci_20"], talib.CCI(h, l, c, 20)),
        "plus_di": (f["plus_di_14"], talib.PLUS_DI(h, l, c, 14)),
        "minus_di": (f["minus_di_14"], talib.MINUS_DI(h, l, c, 14)),
        "adx": (f["adx_14"], talib.ADX(h, l, c, 14)),
        "roc": (f["roc_10"], talib.ROC(c, 10)),
        "mom": (f["momentum_10_rel"] * c, talib.MOM(c, 10)),
        "obv": (f["obv_slope_20"], (obv - np.r_[np.full(20, np.nan), obv[:-20]]) / talib.SUM(v, 20)),
        "mfi": (f["mfi_14"], talib.MFI(h, l, c, v, 14)),
        **{f"volatility_{n}": (f[f"volatility_{n}"], talib.STDDEV(lr, n, 1)) for n in (10, 30, 60)},
        "volume_ratio_20": (f["volume_ratio_20"], v / talib.SMA(v, 20)),
        "volume_ratio_5_20": (f["volume_ratio_5_20"], talib.SMA(v, 5) / talib.SMA(v, 20)),
        "range": (f["range_rel"] * c, h - l),
    }
    return ref


@pytest.mark.parametrize("symbol,interval", [("BTCUSDT", "15m"), ("XRPUSDT", "1h"),
                                             ("DOGEUSDT", "4h")])
def test_indicators_match_talib_after_warmup(symbol, interval):
    k = synthetic_klines(symbol, interval, 1200)
    for name, (ours, ref) in _talib_reference(k).items():
        assert_close(ours[WARMUP_CANDLES:], ref[WARMUP_CANDLES:], 1e-8, f"{symbol} {name}")


def test_di_adx_and_rsi_match_talib_from_their_first_row():
    """Our seeds are TA-Lib's (including its +DI/-DI/ADX Wilder sums), not just close to it."""
    k = synthetic_klines("ETHUSDT", "1h", 400)
    h, l, c = (k[x].to_numpy() for x in ("high", "low", "close"))
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):
        f = compute_indicators(k)
    for ours, ref, first in ((f["plus_di_14"], talib.PLUS_DI(h, l, c, 14), 14),
                             (f["adx_14"], talib.ADX(h, l, c, 14), 27),
                             (f["rsi_14"], talib.RSI(c, 14), 14),
                             (f["atr_14_rel"] * c, talib.ATR(h, l, c, 14), 14),
                             (f["ema_26_rel"] * c + c, talib.EMA(c, 26), 25)):
        ours = ours.to_numpy()
        assert np.flatnonzero(~np.isnan(ours))[0] == np.flatnonzero(~np.isnan(ref))[0] == first
        assert_close(ours, ref, 1e-10)


def test_loop_implementation_agrees_on_every_column(btc):
    """bench_features' row-by-row loops are a second implementation of every column."""
    loop = bench.loop_indicators(*(btc[x].tolist() for x in ("open", "high", "low", "close",
                                                             "volume", "open_time")))
    vec = compute_indicators(btc)
    assert bench.max_disagreement(vec.to_numpy(), np.column_stack([loop[n] for n in vec])) < 1e-9


# ---------------------------------------------------------------------------------------
# The candle's range and the clock (issue 20), by hand


def test_parkinson_variance_by_hand_and_the_floor_on_a_flat_candle():
    pv = parkinson_variance(np.array([110.0, 2.5, 1e-5 * np.e]), np.array([100.0, 2.5, 1e-5]))
    assert pv.dtype == np.float64
    assert pv[0] == pytest.approx(np.log(1.1) ** 2 / (4 * np.log(2)), rel=1e-15)  # 0.00327...
    assert pv[1] == 0.0  # flat candle: not floored here ...
    assert pv[2] == pytest.approx(1 / (4 * np.log(2)), rel=1e-12)  # a range of e: ln = 1
    k = flat_klines(3, price=2.5).assign(high=[2.5, 2.75, 2.5])
    k.loc[1, "close"] = 2.6
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):
        f = compute_indicators(k)
    # ... but floored before the log: a flat candle gives ln(1e-10), not -inf
    assert f["log_parkinson_var"].tolist() == pytest.approx(
        [np.log(1e-10), np.log(np.log(1.1) ** 2 / (4 * np.log(2))), np.log(1e-10)], rel=1e-14)
    # the day mean of rows 0..2 (3 hourly candles): (0 + pv + 0) / 3
    assert f["log_parkinson_var_day"].iloc[2] == pytest.approx(
        np.log(np.log(1.1) ** 2 / (4 * np.log(2)) / 3), rel=1e-14)


def test_trailing_time_mean_by_hand_with_a_gap():
    t = np.array([0, 10, 20, 30, 70, 80, 85], dtype=np.int64)  # a gap between 30 and 70
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    got = trailing_time_mean(x, t, 30)  # open times in (t - 30, t]
    want = [1.0,                  # t=0: rows 0
            (1 + 2) / 2,          # t=10: rows 0, 1 (the start: only what exists)
            (1 + 2 + 4) / 3,      # t=20: 0, 10, 20
            (2 + 4 + 8) / 3,      # t=30: 10, 20, 30 (0 is exactly 30 ms back: out)
            16.0,                 # t=70: after the gap, only itself (30 <= 70 - 30: out)
            (16 + 32) / 2,        # t=80: 70, 80
            (16 + 32 + 64) / 3]   # t=85: 70, 80, 85
    np.testing.assert_allclose(got, want, rtol=1e-15)
    # causal and history-free: a prefix, or earlier values changed outside the window, agree
    np.testing.assert_array_equal(trailing_time_mean(x[:4], t[:4], 30), got[:4])
    y = x.copy()
    y[:4] = [9.0, 9.0, 9.0, 9.0]
    np.testing.assert_array_equal(trailing_time_mean(y, t, 30)[4:], got[4:])
    assert np.isnan(trailing_time_mean(np.r_[np.nan, x[1:]], t, 30)[:3]).all()
    assert len(trailing_time_mean(np.array([]), np.array([], dtype=np.int64), 30)) == 0
    with pytest.raises(ValueError, match="window_ms must be > 0"):
        trailing_time_mean(x, t, 0)


def test_trailing_time_mean_on_long_windows_matches_a_brute_force_mean():
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.choice([60_000, 60_000, 120_000, 3_600_000], 3000)).astype(np.int64)
    x = rng.exponential(1e-6, 3000)
    got = trailing_time_mean(x, t, DAY_MS)
    for i in (0, 1, 17, 500, 1439, 1440, 2999):
        inside = (t > t[i] - DAY_MS) & (t <= t[i])
        assert got[i] == pytest.approx(x[inside].mean(), rel=1e-13), i


def test_day_mean_at_the_start_of_a_series_averages_what_exists(btc):
    h, l = btc["high"].to_numpy(), btc["low"].to_numpy()
    pv = parkinson_variance(h, l)
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):
        day = compute_indicators(btc)["log_parkinson_var_day"].to_numpy()
    per_day = DAY_MS // INTERVAL_MS["15m"]  # 96 candles
    for t in (0, 1, 50, per_day - 1, per_day, 1000):
        first = max(0, t - per_day + 1)
        assert day[t] == pytest.approx(np.log(pv[first:t + 1].mean()), rel=1e-12), t
    assert np.isfinite(day).all()  # no warm-up: valid from the first candle


def test_hour_and_weekend_for_known_timestamps():
    ms = pd.to_datetime(["2024-01-06 00:00", "2024-01-07 23:59", "2024-01-08 00:00",
                         "2024-01-08 06:00", "2024-01-05 12:00", "2024-01-05 23:45",
                         "1970-01-01 18:00", "1969-12-27 00:00"], utc=True)
    f = clock_features(np.asarray(ms.as_unit("ms").asi8))
    # Saturday, Sunday, Monday, Monday, Friday, Friday, Thursday, Saturday (before 1970)
    assert f["is_weekend"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    minutes = np.array([0, 1439, 0, 360, 720, 1425, 1080, 0])
    np.testing.assert_allclose(f["hour_sin"], np.sin(2 * np.pi * minutes / 1440), atol=1e-15)
    np.testing.assert_allclose(f["hour_cos"], np.cos(2 * np.pi * minutes / 1440), atol=1e-15)
    assert f["hour_sin"][3] == pytest.approx(1.0) and f["hour_cos"][4] == pytest.approx(-1.0)
    assert (f["hour_sin"][0], f["hour_cos"][0]) == (0.0, 1.0)  # midnight


def test_clock_columns_change_nothing_but_time_of_day(btc):
    """Shifting every open time by whole weeks changes nothing; by 6 hours, only the clock."""
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):
        ref = compute_indicators(btc)
        weeks = compute_indicators(btc.assign(open_time=btc["open_time"] + 3 * 7 * DAY_MS))
        later = compute_indicators(btc.assign(open_time=btc["open_time"] + DAY_MS // 4))
    pd.testing.assert_frame_equal(weeks, ref)
    clock = ["hour_sin", "hour_cos", "is_weekend"]
    pd.testing.assert_frame_equal(later.drop(columns=clock), ref.drop(columns=clock))
    np.testing.assert_allclose(later["hour_sin"], ref["hour_cos"], atol=1e-12)  # +90 degrees


# ---------------------------------------------------------------------------------------
# Trailing windows: each one reduced on its own (v3_indicators' block tables)

RECURSIVE = {"ema_12_rel", "ema_26_rel", "rsi_14", "macd_rel", "macd_signal_rel", "macd_hist_rel",
             "atr_14_rel", "plus_di_14", "minus_di_14", "adx_14"}


def test_window_columns_do_not_depend_on_older_candles_not_even_by_rounding(btc):
    """Every column but the recursive ones is a function of its own window: candles before
    it can change and the row stays bit-identical (a running sum would drift)."""
    other = synthetic_klines("NOISE", "15m", 500, seed=9)
    early = btc.copy()
    for x in ("open", "high", "low", "close"):
        early.loc[:499, x] = other[x].to_numpy() * 3.0
    early.loc[:499, "volume"] = other["volume"].to_numpy() * 0.1
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):
        a, b = compute_indicators(btc), compute_indicators(early)
    per_day = DAY_MS // INTERVAL_MS["15m"]
    for name in FEATURE_DOCS:
        if name in RECURSIVE:
            continue
        first = 500 + (per_day if name == "log_parkinson_var_day" else 61)  # longest window
        np.testing.assert_array_equal(a[name].iloc[first:], b[name].iloc[first:], err_msg=name)
        assert name in ("hour_sin", "hour_cos", "is_weekend") or \
            not a[name].iloc[:500].equals(b[name].iloc[:500]), name  # the change did reach it


def test_rolling_std_keeps_its_digits_on_a_price_that_barely_moves():
    """std 3e-8 of the price: sum(x^2)/n - mean^2 loses every digit here (error ~100 %); the
    merged blocks agree with numpy's two-pass std to 6e-9 (the prices' own rounding, 1e-16 of
    30,000, is 3e-9 of the std)."""
    rng = np.random.default_rng(2)
    x = 30_000.0 + 1e-3 * rng.standard_normal(400)
    for n, (mean, sd) in zip((7, 20, 60), _rolling_mean_std(x, 7, 20, 60)):
        w = np.lib.stride_tricks.sliding_window_view(x, n)
        np.testing.assert_allclose(sd[n - 1:], w.std(axis=1), rtol=2e-8)
        np.testing.assert_allclose(mean[n - 1:], w.mean(axis=1), rtol=1e-15)
        assert np.isnan(sd[:n - 1]).all()
    [(mean, sd)] = _rolling_mean_std(np.full(50, 0.1), 20)  # flat: exactly 0, not noise
    assert (sd[19:] == 0.0).all() and (mean[19:] == 0.1).all()


# ---------------------------------------------------------------------------------------
# Real-data hazards: flat markets and zero volume give the documented values, never NaN/inf.


def test_flat_market_gives_the_documented_values():
    expected = {"bb_pct_b": 0.5, "rsi_14": 50.0, "stoch_k": 50.0, "stoch_d": 50.0,
                "williams_r": -50.0, "mfi_14": 50.0, "volume_ratio_20": 1.0,
                "volume_ratio_5_20": 1.0, "log_parkinson_var": np.log(PARKINSON_FLOOR),
                "log_parkinson_var_day": np.log(PARKINSON_FLOOR)}
    clock = {"hour_sin", "hour_cos", "is_weekend"}  # the time of day, whatever the prices do
    for volume in (0.0, 12.5):
        k = flat_klines(WARMUP_CANDLES + 50, volume=volume)
        f = compute_indicators(k).iloc[WARMUP_CANDLES:]
        for name in f.columns:
            if name in clock:
                assert np.isfinite(f[name]).all(), name
                continue
            want = expected.get(name, 0.0)
            assert (f[name] == want).all(), (name, volume, f[name].unique()[:3])


def test_flat_stretch_and_zero_volume_inside_a_real_looking_series():
    k = synthetic_klines("FTMUSDT", "1h", 900)
    c0 = k.loc[449, "close"]
    k.loc[450:599, ["open", "high", "low", "close"]] = c0
    k.loc[450:599, "volume"] = 0.0
    k.loc[600, "open"] = c0
    k.loc[600, "high"] = max(k.loc[600, "high"], c0)
    k.loc[600, "low"] = min(k.loc[600, "low"], c0)
    validate_klines(k)
    vec = compute_indicators(k)
    assert np.isfinite(vec.iloc[WARMUP_CANDLES:].to_numpy()).all()
    # a zero-volume candle gives a bounded volume change, whatever the volume's units
    assert vec["log_volume_change"].abs().max() < np.log(20_001) + 1e-9
    loop = bench.loop_indicators(*(k[x].tolist() for x in ("open", "high", "low", "close", "volume",
                                                           "open_time")))
    assert bench.max_disagreement(vec.to_numpy(), np.column_stack([loop[n] for n in vec])) < 1e-9


# ---------------------------------------------------------------------------------------
# No look-ahead: row t never changes when later candles change or are missing.


def _noise_after(k: pd.DataFrame, cut: int, seed: int) -> pd.DataFrame:
    """`k` with rows cut.. replaced by unrelated (but valid) candles."""
    out = k.copy()
    if cut < len(k):
        other = synthetic_klines("NOISE", "15m", len(k) - cut, seed=seed)
        scale = k["close"].iloc[max(cut - 1, 0)] / other["close"].iloc[0]
        for x in ("open", "high", "low", "close"):
            out.loc[cut:, x] = other[x].to_numpy() * scale * (1 + seed % 7)
        out.loc[cut:, "volume"] = other["volume"].to_numpy() * (seed % 5)
    return out


@pytest.mark.parametrize("cut", [1, 14, 27, WARMUP_CANDLES - 1, WARMUP_CANDLES,
                                 WARMUP_CANDLES + 1, 777, 1499])
def test_prefix_equality_at_fixed_cuts(btc, cut):
    full = compute_indicators(btc).to_numpy()
    for warmup in (WARMUP_CANDLES, 0):
        with mock.patch.object(dp, "WARMUP_CANDLES", warmup):
            full = compute_indicators(btc).to_numpy()
            np.testing.assert_array_equal(compute_indicators(btc.iloc[:cut]).to_numpy(), full[:cut])
            noisy = compute_indicators(_noise_after(btc, cut, seed=3)).to_numpy()
            np.testing.assert_array_equal(noisy[:cut], full[:cut])
            if cut < len(btc) - 1:  # the test can fail: the future rows did change
                assert not np.array_equal(noisy[cut:], full[cut:], equal_nan=True)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(cut=st.integers(0, 1500), seed=st.integers(0, 10_000))
def test_prefix_equality_property(cut, seed):
    k = synthetic_klines("BTCUSDT", "15m", 1500)
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):  # check every row, warm-up included
        full = compute_indicators(k).to_numpy()
        np.testing.assert_array_equal(compute_indicators(k.iloc[:cut]).to_numpy(), full[:cut])
        np.testing.assert_array_equal(compute_indicators(_noise_after(k, cut, seed)).to_numpy()[:cut],
                                      full[:cut])


@st.composite
def candle_series(draw):
    """Arbitrary valid candles: jumps, flat runs, zero volume, tiny and huge prices."""
    n = draw(st.integers(1, 120))
    moves = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, -0.001, 0.05, -0.05, 0.7, -0.5]),
                          min_size=n, max_size=n))
    vols = draw(st.lists(st.sampled_from([0.0, 1e-6, 1.0, 3.0, 1e9]), min_size=n, max_size=n))
    wick = draw(st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.2]), min_size=n, max_size=n))
    start = draw(st.sampled_from([1e-5, 0.3, 30_000.0]))
    close = start * np.exp(np.cumsum(moves))
    open_ = np.r_[start, close[:-1]]
    high = np.maximum(open_, close) * (1 + np.array(wick))
    low = np.minimum(open_, close) / (1 + np.array(wick))
    return pd.DataFrame({"open_time": np.arange(n, dtype=np.int64) * 60_000, "open": open_,
                         "high": high, "low": low, "close": close, "volume": vols})


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=candle_series(), cut=st.integers(0, 120), seed=st.integers(0, 100))
def test_prefix_equality_on_arbitrary_candles(k, cut, seed):
    validate_klines(k)
    with mock.patch.object(dp, "WARMUP_CANDLES", 0):
        full = compute_indicators(k).to_numpy()
        np.testing.assert_array_equal(compute_indicators(k.iloc[:cut]).to_numpy(), full[:cut])
        future = k.copy()
        rng = np.random.default_rng(seed)
        future.loc[cut:, ["open", "high", "low", "close"]] *= rng.uniform(0.5, 2.0)
        future.loc[cut:, "volume"] = rng.uniform(0, 10, len(k) - min(cut, len(k)))
        np.testing.assert_array_equal(compute_indicators(future).to_numpy()[:cut], full[:cut])
    assert not np.isinf(full).any()  # flat runs and zero volume never give inf ...
    assert np.isfinite(full[61:]).all()  # ... nor NaN once the longest window (61 rows) is full


# ---------------------------------------------------------------------------------------
# Warm-up: a short history and a long one agree on every kept row.


def _warmup_error(k: pd.DataFrame, n_last: int) -> np.ndarray:
    """(rows kept, F) errors of the last n_last candles computed alone vs with all history."""
    short = compute_indicators(k.iloc[-n_last:]).to_numpy()
    long = compute_indicators(k).to_numpy()[-n_last:]
    kept = ~np.isnan(short).any(axis=1)
    assert kept.sum() == n_last - WARMUP_CANDLES
    return rel_err(short[kept], long[kept])


@pytest.mark.parametrize("symbol,interval", [("BTCUSDT", "15m"), ("SOLUSDT", "1h"),
                                             ("LUNCUSDT", "4h")])
def test_warmup_short_and_long_history_agree(symbol, interval):
    k = synthetic_klines(symbol, interval, 3000)
    for n_last in (WARMUP_CANDLES + 1, WARMUP_CANDLES + 60, 1000, 2500):
        assert _warmup_error(k, n_last).max() <= 1e-6, n_last


def test_a_shorter_warmup_would_not_be_enough():
    """The agreement above is not vacuous: 100 warm-up rows leave visible differences."""
    k = synthetic_klines("BTCUSDT", "15m", 3000)
    with mock.patch.object(dp, "WARMUP_CANDLES", 100):
        short = compute_indicators(k.iloc[-1000:]).to_numpy()
        long = compute_indicators(k).to_numpy()[-1000:]
    err = rel_err(short[100:], long[100:]).max(axis=0)
    worst = [feature_names()[j] for j in np.flatnonzero(err > 1e-6)]
    assert {"adx_14", "ema_26_rel", "macd_signal_rel"} <= set(worst)


@settings(max_examples=8, deadline=None)
@given(symbol=st.sampled_from(["BTCUSDT", "ETHUSDT", "ADAUSDT", "INJUSDT"]),
       interval=st.sampled_from(["15m", "1h"]), seed=st.integers(0, 1000),
       n_last=st.integers(WARMUP_CANDLES + 1, 1500))
def test_warmup_property(symbol, interval, seed, n_last):
    k = synthetic_klines(symbol, interval, 2000, seed=seed)
    assert _warmup_error(k, n_last).max() <= 1e-6


def test_live_window_from_a_short_history_equals_the_training_window():
    k = synthetic_klines("ETHUSDT", "1h", 1600)
    cfg = FeatureConfig(seq_len=24, n_components=10)
    data = prepare_dataset(k, cfg, interval="1h")
    last = len(data.ends) - 1
    # the last sample's window ends at row n-2 (row n-1 is its target)
    live, t_last, c_last = latest_window(k.iloc[-(WARMUP_CANDLES + 24 + 5):-1], data.transform,
                                         seq_len=24, interval="1h", now_ms=FAR_FUTURE_MS)
    assert live.shape == (1, 24, 10) and live.dtype == np.float32
    np.testing.assert_allclose(live[0], data.windows(np.array([last]))[0], rtol=0, atol=1e-5)
    assert t_last == data.target_open_time[last] - INTERVAL_MS["1h"]
    assert c_last == data.last_close[last]


# ---------------------------------------------------------------------------------------
# Train-only scaling + PCA


def _prepared(k, **over) -> PreparedData:
    return prepare_dataset(k, dataclasses.replace(FeatureConfig(seq_len=16, n_components=8), **over),
                           interval="15m")


def _assert_training_side_equal(a: PreparedData, b: PreparedData) -> None:
    last_train_row = a.ends[a.n_train - 1]
    assert (a.n_train, a.n_val) == (b.n_train, b.n_val)
    for key, arr in a.transform.to_arrays().items():
        np.testing.assert_array_equal(arr, b.transform.to_arrays()[key], err_msg=key)
    np.testing.assert_array_equal(a.features[:last_train_row + 1], b.features[:last_train_row + 1])
    np.testing.assert_array_equal(a.target[:a.n_train], b.target[:b.n_train])
    np.testing.assert_array_equal(a.vol_scale[:a.n_train], b.vol_scale[:b.n_train])
    assert (a.target_mean, a.target_std) == (b.target_mean, b.target_std)


def _perturb_rows(k: pd.DataFrame, rows, factor: float) -> pd.DataFrame:
    out = k.copy()
    out.loc[rows, ["open", "high", "low", "close"]] *= factor
    out.loc[rows, "volume"] *= factor * 3
    return out


def test_validation_and_test_rows_do_not_touch_the_training_side(btc):
    base = _prepared(btc)
    # candle ends[n_train-1] + 1 is the last training sample's target, so a training row;
    # every candle after it is seen only by validation and test samples
    first_val_only = base.ends[base.n_train - 1] + 2
    changed = _prepared(_perturb_rows(btc, range(first_val_only, len(btc)), 1.7))
    _assert_training_side_equal(base, changed)
    assert not np.array_equal(base.features[first_val_only:], changed.features[first_val_only:])
    # the check can fail: changing one training candle moves the fitted scaler and PCA
    moved = _prepared(_perturb_rows(btc, [first_val_only - 3], 1.7))
    assert not np.array_equal(base.transform.mean, moved.transform.mean)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(offset=st.integers(0, 10_000), factor=st.floats(0.5, 2.0))
def test_any_single_validation_or_test_row_change_is_invisible_to_training(offset, factor):
    k = synthetic_klines("BTCUSDT", "15m", 1000)
    base = _prepared(k)
    first_val_only = base.ends[base.n_train - 1] + 2
    row = first_val_only + offset % (len(k) - first_val_only)
    _assert_training_side_equal(base, _prepared(_perturb_rows(k, [row], factor)))


# ---------------------------------------------------------------------------------------
# The quantile head's unit: the recent volatility


def test_recent_volatility_is_the_normalised_ewma_of_the_last_100_squared_returns():
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
    got = dp.recent_volatility(close)
    r = np.diff(np.log(close))
    for t in (1, 2, 50, 100, 101, 399):
        j = np.arange(min(t, dp.VOL_WINDOW))           # returns r_t .. r_(t-99), newest first
        w = 0.94 ** j
        assert got[t] == pytest.approx(np.sqrt(np.sum(w * r[t - 1 - j] ** 2) / w.sum()), rel=1e-12)
    assert np.isnan(got[0])
    assert np.isnan(dp.recent_volatility(close[:1])).all() and len(dp.recent_volatility([])) == 0
    # by hand, two returns: sqrt((r2^2 + 0.94 r1^2) / 1.94)
    c = np.array([100.0, 110.0, 99.0])
    r1, r2 = np.log(1.1), np.log(0.9)
    assert dp.recent_volatility(c)[2] == pytest.approx(np.sqrt((r2 ** 2 + 0.94 * r1 ** 2) / 1.94))


def test_recent_volatility_uses_only_the_last_101_closes_up_to_each_row():
    rng = np.random.default_rng(4)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    base = dp.recent_volatility(close)
    later = close.copy()
    later[300:] *= 1.5                                    # a jump at row 300
    np.testing.assert_array_equal(dp.recent_volatility(later)[:300], base[:300])
    assert dp.recent_volatility(later)[300] != base[300]
    earlier = close.copy()
    earlier[:199] *= 0.5                                   # rows 0..198: forgotten at row 299
    np.testing.assert_allclose(dp.recent_volatility(earlier)[299:], base[299:], rtol=1e-12)
    # the tail alone gives the same values (what live prediction sees)
    np.testing.assert_allclose(dp.recent_volatility(close[-150:])[-1], base[-1], rtol=1e-12)


def test_vol_scale_is_the_unit_at_each_sample_end_floored(btc):
    data = _prepared(btc)
    unit = dp.volatility_unit(btc["close"].to_numpy(np.float64), data.target_std)
    np.testing.assert_allclose(data.vol_scale, unit[data.ends], rtol=1e-6)
    assert data.vol_scale.dtype == np.float32 and (data.vol_scale >= dp.VOL_FLOOR).all()
    np.testing.assert_allclose(data.quantile_target("ewma"), data.target / data.vol_scale)
    np.testing.assert_array_equal(data.quantile_target("none"), data.target)
    flat = dp.volatility_unit(np.full(300, 5.0), 0.01)
    assert (flat == dp.VOL_FLOOR).all()
    last = len(data.ends) - 1
    assert dp.latest_unit(btc, int(btc["open_time"].iloc[data.ends[last]]), data.target_std) == \
        pytest.approx(float(data.vol_scale[last]), rel=1e-6)


def test_a_processed_file_without_vol_scale_says_to_run_step_3_again(btc, tmp_path):
    data = _prepared(btc)
    path = tmp_path / "p.npz"
    data.save(path)
    arrays = dict(np.load(path))
    del arrays["vol_scale"]
    np.savez(path, **arrays)
    with pytest.raises(DataValidationError, match=r"older V3 .*--steps preprocess,train"):
        PreparedData.load(path)


def test_fitted_transform_is_plain_arrays_and_applies_to_all_rows(btc, tmp_path):
    data = _prepared(btc)
    arrays = data.transform.to_arrays()
    assert set(arrays) == {"mean", "scale", "components", "explained_variance_ratio"}
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    raw, ok = dp.feature_matrix(validate_klines(btc))
    np.testing.assert_allclose(data.features[ok], dp.apply_transform(raw[ok], data.transform),
                               rtol=1e-5, atol=1e-5)
    data.save(tmp_path / "p.npz")
    back = PreparedData.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.features, data.features)
    assert back.feature_names == feature_names() and back.n_train == data.n_train


def test_explained_variance_warning_below_95_percent(btc, caplog):
    with caplog.at_level(logging.WARNING, logger="v3"):
        few = prepare_dataset(btc, FeatureConfig(seq_len=16, n_components=2), interval="15m",
                              name="BTCUSDT 15m")
    assert few.transform.n_components == 2
    assert "BTCUSDT 15m: 2 PCA components keep" in caplog.text and "< 95%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="v3"):
        full = prepare_dataset(btc, FeatureConfig(seq_len=16, n_components=100), interval="15m")
    assert full.transform.n_components == len(FEATURE_DOCS)  # capped at the number of features
    assert full.transform.explained_variance_ratio.sum() == pytest.approx(1.0)
    assert "PCA components keep" not in caplog.text


# ---------------------------------------------------------------------------------------
# Windows


def test_windows_end_at_the_last_closed_candle_before_the_target(btc):
    data = prepare_dataset(btc, interval="15m")  # default: 60-candle windows
    assert data.seq_len == 60 and data.windows(np.arange(3)).shape == (3, 60, 30)
    t = data.ends
    step = INTERVAL_MS["15m"]
    ot, close = btc["open_time"].to_numpy(), btc["close"].to_numpy()
    assert (t >= WARMUP_CANDLES + 59).all() and (t <= len(btc) - 2).all()
    np.testing.assert_array_equal(data.target_open_time, ot[t] + step)
    np.testing.assert_array_equal(data.last_close, close[t])
    np.testing.assert_array_equal(data.actual_close, close[t + 1])
    np.testing.assert_allclose(data.target, (np.log(close[t + 1] / close[t]) - data.target_mean)
                               / data.target_std, rtol=1e-5, atol=1e-6)
    w = data.windows(np.array([0, len(t) - 1]))
    np.testing.assert_array_equal(w[1], data.features[t[-1] - 59:t[-1] + 1])
    np.testing.assert_array_equal(w[0][-1], data.features[t[0]])
    assert data.n_train + data.n_val + data.n_test == len(t)
    assert (np.diff(data.target_open_time) > 0).all()  # chronological splits


def test_windows_across_gaps_are_dropped_and_counted(btc, caplog):
    k = btc.drop(index=[700, 701, 702, 1100]).reset_index(drop=True)
    T, step = 16, INTERVAL_MS["15m"]
    with caplog.at_level(logging.INFO, logger="v3"):
        data = _prepared(k, seq_len=T)
    ot = k["open_time"].to_numpy()
    # brute force: every end t with a full window of kept rows, and whether it spans a gap
    spans_gap = [any(ot[j + 1] - ot[j] != step for j in range(t - T + 1, t + 1))
                 for t in range(WARMUP_CANDLES + T - 1, len(k) - 1)]
    assert data.gap_windows_dropped == sum(spans_gap) == 2 * T  # T windows cross each gap
    assert len(data.ends) == len(spans_gap) - sum(spans_gap)
    for t in data.ends:
        assert ot[t + 1] - ot[t - T + 1] == T * step
    assert f"{2 * T} windows span a gap in the candles and were dropped" in caplog.text


# ---------------------------------------------------------------------------------------
# Input validation: one named error per problem, with the first rows and the fix


def _bad(k: pd.DataFrame, kind: str) -> pd.DataFrame:
    k = k.copy()
    if kind == "missing":
        return k.drop(columns=["volume"])
    if kind == "non-numeric":
        k["close"] = k["close"].astype(object)
        k.loc[[5, 9], "close"] = "n/a"
    elif kind == "nan":
        k.loc[[5, 9], "open"] = np.nan
    elif kind == "inf":
        k.loc[[5, 9], "volume"] = np.inf
    elif kind == "duplicate":
        k.loc[[5, 9], "open_time"] = k.loc[[4, 8], "open_time"].to_numpy()
    elif kind == "unsorted":
        k.loc[[5, 9], "open_time"] = k.loc[[5, 9], "open_time"] - 10 * 900_000
    elif kind == "high<low":
        k.loc[[5, 9], "high"] = k.loc[[5, 9], "low"] * 0.9
    elif kind == "close outside":
        k.loc[[5, 9], "close"] = k.loc[[5, 9], "high"] * 1.1
    elif kind == "open outside":
        k.loc[[5, 9], "open"] = k.loc[[5, 9], "low"] * 0.9
    elif kind == "negative volume":
        k.loc[[5, 9], "volume"] = -1.0
    elif kind == "price <= 0":
        k.loc[[5, 9], ["open", "low", "close"]] = 0.0
    return k


@pytest.mark.parametrize("kind,message,fix", [
    ("missing", "missing column(s) ['volume']", "A kline frame needs"),
    ("non-numeric", "non-numeric values in 'close'", "re-download"),
    ("nan", "NaN or inf", "Re-download the pair"),
    ("inf", "NaN or inf", "Re-download the pair"),
    ("duplicate", "duplicate open_time", "drop_duplicates"),
    ("unsorted", "open_time not sorted ascending", "sort_values('open_time')"),
    ("high<low", "high < low", "re-download the pair"),
    ("close outside", "close outside [low, high]", "re-download the pair"),
    ("open outside", "open outside [low, high]", "re-download the pair"),
    ("negative volume", "negative volume", "re-download the pair"),
    ("price <= 0", "price <= 0", "re-download the pair"),
])
def test_each_bad_input_raises_a_named_error_with_rows_and_fix(kind, message, fix):
    k = synthetic_klines("BTCUSDT", "1h", 40)
    with pytest.raises(DataValidationError) as e:
        validate_klines(_bad(k, kind), "BTCUSDT 1h")
    text = str(e.value)
    assert text.startswith("BTCUSDT 1h: ") and message in text and fix in text
    if kind != "missing":
        assert "2 rows: row 5 (open_time=" in text and "; row 9 (" in text
    with pytest.raises(DataValidationError):  # prepare_dataset validates the same way
        prepare_dataset(_bad(synthetic_klines("BTCUSDT", "1h", 700), kind), interval="1h")


def test_error_lists_the_first_five_rows_and_counts_the_rest():
    k = synthetic_klines("BTCUSDT", "1h", 40)
    k.loc[10:17, "volume"] = -5.0
    with pytest.raises(DataValidationError, match=r"negative volume in 8 rows: row 10 "
                                                  r"\(open_time=\d+ \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\), "
                                                  r"volume=-5.0\); row 11"):
        validate_klines(k)
    with pytest.raises(DataValidationError, match=r"row 14 \(.*\) and 3 more\."):
        validate_klines(k)


def test_valid_frame_comes_back_typed(btc):
    mixed = btc.astype({"open": str, "open_time": float})
    out = validate_klines(mixed)
    assert out["open_time"].dtype == np.int64 and out["open"].dtype == np.float64
    np.testing.assert_array_equal(out["open"].to_numpy(), btc["open"].to_numpy())


def test_too_few_candles_says_how_many_are_needed():
    with pytest.raises(InsufficientDataError, match=r"399 candles, need >= \d+ \(warm-up 300"):
        prepare_dataset(synthetic_klines("BTCUSDT", "1h", 399), interval="1h")


@pytest.mark.slow
def test_a_bad_csv_fails_only_its_pair_in_the_pipeline(tmp_path, caplog):
    src = tmp_path / "csv"
    src.mkdir()
    for sym in ("BTCUSDT", "ETHUSDT", "BNBUSDT"):
        k = synthetic_klines(sym, "1h", 700)
        if sym == "BNBUSDT":
            k.loc[[123, 456], "high"] = k.loc[[123, 456], "low"] * 0.5
        write_klines(k, src / f"{sym}_1h.csv")
    pipe = V3CoLabPipeline(tmp_path / "out", config=tiny_config(source="csv", data_dir=str(src)),
                           coins=["BTCUSDT", "BNBUSDT", "ETHUSDT"], timeframes=["1h"])
    with caplog.at_level(logging.INFO, logger="v3"):
        pipe.run_full_pipeline(epochs=1, upload=False)
    results = json.loads(pipe.results_path.read_text())
    bad = results["BNBUSDT_1h"]
    assert bad["status"] == "failed" and bad["failed_step"] == "download"
    assert "high < low in 2 rows: " in bad["reason"] and "re-download" in bad["reason"]
    assert "BNBUSDT 1h: download failed: " in caplog.text
    for good in ("BTCUSDT_1h", "ETHUSDT_1h"):
        assert results[good]["status"] == "success"
        assert results[good]["features"]["n_features"] == len(FEATURE_DOCS)
        assert 0 < results[good]["features"]["explained_variance"] <= 1


# ---------------------------------------------------------------------------------------
# Live prediction: latest_window


def test_latest_window_drops_the_open_candle_and_reports_the_last_closed(btc, caplog):
    data = _prepared(btc)
    step = INTERVAL_MS["15m"]
    last_open = int(btc["open_time"].iloc[-1])
    with caplog.at_level(logging.INFO, logger="v3"):
        win, t_last, c_last = latest_window(btc, data.transform, seq_len=16, interval="15m",
                                            now_ms=last_open + step // 2, name="BTCUSDT 15m")
    assert "BTCUSDT 15m: dropped 1 candle(s) still open" in caplog.text
    assert t_last == last_open - step and c_last == btc["close"].iloc[-2]
    closed, t2, _ = latest_window(btc.iloc[:-1], data.transform, seq_len=16, interval="15m",
                                  now_ms=FAR_FUTURE_MS)
    np.testing.assert_array_equal(win, closed)
    assert t2 == t_last


def test_latest_window_errors_say_what_to_do(btc):
    data = _prepared(btc)
    kw = dict(seq_len=16, interval="15m", now_ms=FAR_FUTURE_MS, name="BTCUSDT 15m")
    with pytest.raises(InsufficientDataError, match=r"BTCUSDT 15m: 315 closed candles, need >= 316 "
                                                    r"\(indicator warm-up 300 \+ window 16\)"):
        latest_window(btc.iloc[-315:], data.transform, **kw)
    gap = btc.drop(index=[len(btc) - 5]).reset_index(drop=True)
    with pytest.raises(DataValidationError, match="span a gap"):
        latest_window(gap, data.transform, **kw)
    wrong = dataclasses.replace(data.transform, mean=data.transform.mean[:-1])
    with pytest.raises(CheckpointError, match=f"expects {len(FEATURE_DOCS) - 1} indicator columns"):
        latest_window(btc, wrong, **kw)
    with pytest.raises(DataValidationError, match="high < low"):
        latest_window(_bad(btc, "high<low"), data.transform, **kw)


# ---------------------------------------------------------------------------------------
# The benchmark runs (tiny) and its two implementations agree


def test_bench_features_runs_tiny(capsys):
    assert bench.main(["--pairs", "2", "--candles", "600", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "bench_features: 2 pairs x 600 candles" in out and "machine:" in out
    assert "command: python bench/bench_features.py --pairs 2 --candles 600" in out
    assert "row-by-row Python loops" in out and "-> OK" in out
    assert "previous compute_indicators (v2)" in out and "OMP_NUM_THREADS=" in out
    # long series: the loops run on a prefix, which must equal the full series' rows
    assert bench.main(["--pairs", "1", "--candles", "700", "--repeat", "1",
                       "--loop-candles", "350"]) == 0
    out = capsys.readouterr().out
    assert "(run on the first 350 candles of each pair)" in out
    assert "bit-identical to the full series' rows: yes" in out and "-> OK" in out


def test_save_writes_only_when_the_content_changes(btc, tmp_path):
    """Issue 12, item 6: processed/ was rewritten on every re-run although nothing changed."""
    path = tmp_path / "p.npz"
    data = _prepared(btc)
    assert data.save(path) is True
    mtime = path.stat().st_mtime_ns
    time.sleep(0.02)
    assert _prepared(btc).save(path) is False  # rebuilt from the same candles: same content
    assert path.stat().st_mtime_ns == mtime
    other = _prepared(btc.iloc[:-50].reset_index(drop=True))
    assert other.save(path) is True
    assert PreparedData.load(path).last_open_time == other.last_open_time
    path.write_bytes(b"not a zip")  # an unreadable file is written afresh
    assert data.save(path) is True and PreparedData.load(path).n_train == data.n_train


def test_too_few_candles_ends_with_the_callers_hint():
    """Issue 12, item 9: the fix named a window flag that does not exist; the caller knows
    which fix fits its source."""
    k = synthetic_klines("BTCUSDT", "1h", 420)
    with pytest.raises(InsufficientDataError) as e:
        prepare_dataset(k, interval="1h", name="BTCUSDT 1h",
                        hint="Give a longer BTCUSDT_1h.csv (at least 496 candles).")
    msg = str(e.value)
    assert msg.endswith("Give a longer BTCUSDT_1h.csv (at least 496 candles).")
    assert "window" not in msg.split("splits). ")[1] and "--candles" not in msg
    assert "70/15/15 splits" in msg
    with pytest.raises(InsufficientDataError) as e:  # no hint: no option named either
        prepare_dataset(k, interval="1h")
    assert "--" not in str(e.value) and "shorten the window" not in str(e.value)
    assert "at least 496 candles" in str(e.value)
