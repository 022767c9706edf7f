"""FROZEN COPY, not used by V3: v3_indicators.indicator_table as it was at FEATURE_SET_VERSION 2
(commit 792d92c, 45 columns), kept only as the speed baseline of bench/bench_features.py.

It reduced each trailing window through sliding_window_view (an (n, window) view reduced
row by row) and ran the EMA / Wilder recursions through pandas' ewm. Do not edit it to match
later formulas: it is the "before" in the benchmark table. The 45 columns it gives are the
first 45 columns of v3_indicators.FEATURE_DOCS, and the benchmark checks they still agree.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# Indicators. Every column, in order, with its formula or convention (one line each).
# Conventions where a ratio has no value: a flat range (high == low over the window), a flat
# band (std 0), no volume or no price moves give the neutral value named here, never NaN/inf.

FEATURE_DOCS: dict[str, str] = {
    **{f"ret_{k}": f"close_t / close_(t-{k}) - 1" for k in (1, 3, 6, 12)},
    **{f"log_ret_{k}": f"ln(close_t / close_(t-{k}))" for k in (1, 3, 6, 12)},
    **{f"sma_{n}_rel": f"SMA({n}) of close / close - 1" for n in (7, 14, 30, 50)},
    **{f"ema_{n}_rel": f"EMA({n}) of close (seeded with SMA({n}), as TA-Lib) / close - 1"
       for n in (12, 26)},
    "bb_upper_rel": "Bollinger upper (SMA20 + 2 population std of close) / close - 1",
    "bb_lower_rel": "Bollinger lower (SMA20 - 2 population std of close) / close - 1",
    "bb_width": "(upper - lower) / SMA20",
    "bb_pct_b": "%B = (close - lower) / (upper - lower); 0.5 on a flat band",
    "rsi_14": "Wilder RSI(14) = 100 * avg gain / (avg gain + avg loss); 50 with no moves",
    "macd_rel": "MACD line (EMA12 - EMA26 of close) / close",
    "macd_signal_rel": "signal line (EMA9 of the MACD line, SMA-seeded) / close",
    "macd_hist_rel": "(MACD - signal) / close",
    "true_range_rel": "true range max(high-low, |high-prev close|, |low-prev close|) / close",
    "atr_14_rel": "Wilder ATR(14) / close",
    "stoch_k": "slow %K: SMA3 of 100*(close - LL14)/(HH14 - LL14); fast %K 50 on a flat range",
    "stoch_d": "slow %D: SMA3 of slow %K",
    "williams_r": "Williams %R(14) = -100*(HH14 - close)/(HH14 - LL14); -50 on a flat range",
    "cci_20": "CCI(20) = (TP - SMA20(TP)) / (0.015 * mean abs deviation), TP=(H+L+C)/3; 0 if flat",
    "plus_di_14": "+DI(14) = 100 * Wilder(+DM) / Wilder(TR); 0 when Wilder(TR) = 0",
    "minus_di_14": "-DI(14) = 100 * Wilder(-DM) / Wilder(TR); 0 when Wilder(TR) = 0",
    "adx_14": "ADX(14): Wilder average of DX = 100*|+DI - -DI|/(+DI + -DI) (DX 0 if both 0)",
    "roc_10": "rate of change: 100 * (close / close_(t-10) - 1)",
    "momentum_10_rel": "momentum (close - close_(t-10)) / close",
    "obv_slope_20": "OBV_t - OBV_(t-20) over the volume of those 20 candles, in [-1, 1]; 0 if none",
    "mfi_14": "money flow index(14), 0-100: 100 * up flow / (up + down flow); 50 with no flow",
    **{f"volatility_{n}": f"population std of 1-candle log returns over {n} candles"
       for n in (10, 30, 60)},
    "volume_ratio_20": "volume / SMA20(volume); 1 when there was no volume",
    "volume_ratio_5_20": "SMA5(volume) / SMA20(volume); 1 when there was no volume",
    "log_volume_change": "ln((volume_t + m) / (volume_(t-1) + m)), m = SMA20(volume)/1000; 0 if m=0",
    "range_rel": "(high - low) / close",
    "body": "(close - open) / (high - low); 0 when high == low",
    "upper_wick": "(high - max(open, close)) / (high - low); 0 when high == low",
    "lower_wick": "(min(open, close) - low) / (high - low); 0 when high == low",
}


def feature_names() -> list[str]:
    """The columns of `compute_indicators`, in order."""
    return list(FEATURE_DOCS)


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """x_(t-k) on row t (NaN for the first k rows). Never a negative k: that would look ahead."""
    out = np.full(len(x), np.nan)
    if k < len(x):
        out[k:] = x[:len(x) - k]
    return out


def _windows(x: np.ndarray, n: int) -> np.ndarray:
    """(len(x) - n + 1, n) view: row j holds x[j .. j+n-1], the window ending at row j+n-1."""
    return np.lib.stride_tricks.sliding_window_view(x, n)


def _rolling(x: np.ndarray, n: int, how: str) -> np.ndarray:
    """Trailing-window 'mean', 'sum', 'max', 'min' or 'std' (population) ending at each row.

    Each window is reduced on its own, so a row's value does not depend on how much history
    came before it (unlike a running sum). A window holding a NaN gives NaN.
    """
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1:] = getattr(_windows(x, n), how)(axis=1)
    return out


def _seeded_ewm(x: np.ndarray, alpha: float, n: int, *, divisor: int | None = None
                ) -> np.ndarray:
    """y_t = alpha*x_t + (1-alpha)*y_(t-1), seeded on the n-th valid row with the sum of the
    first n valid x over `divisor` (default n: their mean, TA-Lib's EMA and Wilder seeding).
    x must be finite after its leading NaNs (it is, for validated candles)."""
    out = np.full(len(x), np.nan)
    valid = np.flatnonzero(~np.isnan(x))
    if len(valid) == 0 or len(x) - valid[0] < n:
        return out
    p = valid[0] + n - 1
    seeded = x[p:].copy()
    seeded[0] = x[valid[0]: p + 1].sum() / (divisor or n)
    # pandas' adjust=False recursion starts from its first value: the seed (a C loop)
    out[p:] = pd.Series(seeded).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    return out


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    return _seeded_ewm(x, 2.0 / (span + 1), span)


def _wilder(x: np.ndarray, n: int) -> np.ndarray:
    return _seeded_ewm(x, 1.0 / n, n)


def _wilder_dm(x: np.ndarray, n: int) -> np.ndarray:
    """TA-Lib's smoothing of +DM, -DM and TR inside +DI/-DI/ADX (not its ATR): a Wilder sum
    seeded with the sum of the first n-1 values, first reported one Wilder step later. As an
    average: seed (sum of n-1 values) / n, and the seed row itself is NaN."""
    out = _seeded_ewm(x, 1.0 / n, n - 1, divisor=n)
    valid = np.flatnonzero(~np.isnan(out))
    if len(valid):
        out[valid[0]] = np.nan
    return out


def _ratio(num: np.ndarray, den: np.ndarray, fill: float, *, zero: np.ndarray | None = None
           ) -> np.ndarray:
    """num / den, `fill` where the denominator is zero (or where `zero` says so), NaN where
    either input is NaN (warm-up)."""
    zero = (den == 0) if zero is None else zero
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(zero, fill, num / den)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


def indicator_table(klines: pd.DataFrame) -> np.ndarray:
    """The indicator columns (FEATURE_DOCS, in order) as an (n, F) float64 array, warm-up rows
    included: row t uses only candles <= t. v3_data_processor.compute_indicators blanks the
    first WARMUP_CANDLES rows and names the columns.
    """
    o, h, l, c, v = (klines[k].to_numpy(np.float64) for k in ("open", "high", "low", "close",
                                                                 "volume"))
    f: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(c)
        for k in (1, 3, 6, 12):
            f[f"ret_{k}"] = c / _shift(c, k) - 1
            f[f"log_ret_{k}"] = logc - _shift(logc, k)
        for n in (7, 14, 30, 50):
            f[f"sma_{n}_rel"] = _rolling(c, n, "mean") / c - 1
        ema12, ema26 = _ema(c, 12), _ema(c, 26)
        f["ema_12_rel"], f["ema_26_rel"] = ema12 / c - 1, ema26 / c - 1

        mid, sd = _rolling(c, 20, "mean"), _rolling(c, 20, "std")
        upper, lower = mid + 2 * sd, mid - 2 * sd
        f["bb_upper_rel"], f["bb_lower_rel"] = upper / c - 1, lower / c - 1
        f["bb_width"] = (upper - lower) / mid
        # a flat window's std is rounding noise (~1e-17 * price), not 0: compare to the price
        f["bb_pct_b"] = _ratio(c - lower, upper - lower, 0.5, zero=sd <= 1e-12 * mid)

        delta = c - _shift(c, 1)
        gain = _wilder(np.maximum(delta, 0.0), 14)  # np.maximum keeps the NaN of row 0
        loss = _wilder(np.maximum(-delta, 0.0), 14)
        f["rsi_14"] = _ratio(100 * gain, gain + loss, 50.0)

        macd = ema12 - ema26
        signal = _ema(macd, 9)
        f["macd_rel"], f["macd_signal_rel"] = macd / c, signal / c
        f["macd_hist_rel"] = (macd - signal) / c

        prev_c = _shift(c, 1)
        tr = np.maximum(h - l, np.maximum(np.abs(h - prev_c), np.abs(l - prev_c)))  # NaN on row 0
        atr = _wilder(tr, 14)
        f["true_range_rel"], f["atr_14_rel"] = tr / c, atr / c

        hh, ll = _rolling(h, 14, "max"), _rolling(l, 14, "min")
        stoch_k = _rolling(_ratio(100 * (c - ll), hh - ll, 50.0), 3, "mean")
        f["stoch_k"], f["stoch_d"] = stoch_k, _rolling(stoch_k, 3, "mean")
        f["williams_r"] = _ratio(-100 * (hh - c), hh - ll, -50.0)

        tp = (h + l + c) / 3
        tp_w = _windows(tp, 20) if len(tp) >= 20 else np.empty((0, 20))
        tp_mean, mad = np.full(len(tp), np.nan), np.full(len(tp), np.nan)
        tp_mean[19:] = tp_w.mean(axis=1)
        mad[19:] = np.abs(tp_w - tp_mean[19:, None]).mean(axis=1)
        f["cci_20"] = _ratio(tp - tp_mean, 0.015 * mad, 0.0, zero=mad <= 1e-12 * tp_mean)

        up, down = h - _shift(h, 1), _shift(l, 1) - l
        plus_dm = np.where((up > down) & (up > 0), up, 0.0)
        minus_dm = np.where((down > up) & (down > 0), down, 0.0)
        plus_dm[:1] = minus_dm[:1] = np.nan  # no previous candle
        tr_dm = _wilder_dm(tr, 14)
        plus_di = _ratio(100 * _wilder_dm(plus_dm, 14), tr_dm, 0.0)
        minus_di = _ratio(100 * _wilder_dm(minus_dm, 14), tr_dm, 0.0)
        f["plus_di_14"], f["minus_di_14"] = plus_di, minus_di
        dx = _ratio(100 * np.abs(plus_di - minus_di), plus_di + minus_di, 0.0)
        f["adx_14"] = _wilder(dx, 14)

        f["roc_10"] = 100 * (c / _shift(c, 10) - 1)
        f["momentum_10_rel"] = (c - _shift(c, 10)) / c

        vol20 = _rolling(v, 20, "sum")
        f["obv_slope_20"] = _ratio(_rolling(np.sign(delta) * v, 20, "sum"), vol20, 0.0)

        tp_d = tp - _shift(tp, 1)
        mf = tp * v
        up_mf, down_mf = np.where(tp_d > 0, mf, 0.0), np.where(tp_d < 0, mf, 0.0)
        up_mf[:1] = down_mf[:1] = np.nan  # no previous candle
        pos_mf, neg_mf = _rolling(up_mf, 14, "sum"), _rolling(down_mf, 14, "sum")
        f["mfi_14"] = _ratio(100 * pos_mf, pos_mf + neg_mf, 50.0)

        lr = logc - _shift(logc, 1)
        for n in (10, 30, 60):
            f[f"volatility_{n}"] = _rolling(lr, n, "std")

        vol_sma20 = vol20 / 20
        f["volume_ratio_20"] = _ratio(v, vol_sma20, 1.0)
        f["volume_ratio_5_20"] = _ratio(_rolling(v, 5, "mean"), vol_sma20, 1.0)
        m = vol_sma20 / 1000  # scale-free floor: zero-volume candles give a finite value
        lvc = np.log(v + m) - np.log(_shift(v, 1) + m)
        lvc[m == 0] = 0.0  # no volume in 20 candles: no change
        f["log_volume_change"] = lvc

        span = h - l
        f["range_rel"] = span / c
        f["body"] = _ratio(c - o, span, 0.0)
        f["upper_wick"] = _ratio(h - np.maximum(o, c), span, 0.0)
        f["lower_wick"] = _ratio(np.minimum(o, c) - l, span, 0.0)

    return np.column_stack([f[k] for k in FEATURE_DOCS])  # (n, F)
