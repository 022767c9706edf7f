"""The indicator set: every feature column's formula (FEATURE_DOCS) and its computation.

`indicator_table` turns validated candles (open_time, open, high, low, close, volume) into one
column per indicator, causally (row t uses candles up to and including t, never later),
price-like indicators relative to the close.
v3_data_processor.compute_indicators (the name callers use) wraps it and blanks the warm-up
rows; v3_data_processor.FEATURE_SET_VERSION is bumped whenever a column here changes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

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
    "log_parkinson_var": "ln(max(PV, 1e-10)), Parkinson variance PV = ln(high/low)^2 / (4 ln 2)",
    "log_parkinson_var_day": "ln(max(mean PV of the candles opened in (t - 1 day, t], 1e-10))",
    "hour_sin": "sin(2 pi * minute of the UTC day of open_time / 1440)",
    "hour_cos": "cos(2 pi * minute of the UTC day of open_time / 1440)",
    "is_weekend": "1 when open_time falls on a Saturday or Sunday (UTC), else 0",
}

# Parkinson variances are floored at this before the log: a flat candle (high == low) has
# variance 0, and ln(0) = -inf. 1e-10 is the variance of a high/low range of ~0.17 basis
# points (ln(high/low) = sqrt(4 ln 2 * 1e-10) = 1.7e-5), below a tick on liquid pairs, so real
# ranges are never floored and a flat candle gives a finite ln(1e-10) = -23.
PARKINSON_FLOOR = 1e-10

DAY_MS = 86_400_000


def feature_names() -> list[str]:
    """The columns of `compute_indicators`, in order."""
    return list(FEATURE_DOCS)


# ---------------------------------------------------------------------------------------
# Public pure functions, for the HAR volatility baseline too (issue 20)


def parkinson_variance(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Parkinson's range-based variance of each candle, ln(high/low)^2 / (4 ln 2), float64 and
    not floored: a flat candle (high == low) gives 0."""
    high, low = np.asarray(high, np.float64), np.asarray(low, np.float64)
    return np.log(high / low) ** 2 / (4 * np.log(2.0))


def trailing_time_mean(values: np.ndarray, open_time_ms: np.ndarray, window_ms: int
                       ) -> np.ndarray:
    """Row t: the mean of `values` over the rows whose open time lies in
    (open_time_ms[t] - window_ms, open_time_ms[t]], row t included.

    Time-based, so it fits any interval and averages what exists: fewer rows at gaps in the
    candles and at the start of the series. Open times must be ascending (validate_klines
    checks it); a window holding a NaN gives NaN. Each row's sum is a fixed binary tree over
    the values of its own window only, so it does not depend on earlier rows, not even
    through rounding (a running sum would).
    """
    x = np.asarray(values, np.float64)
    t = np.asarray(open_time_ms, np.int64)
    if x.shape != t.shape or x.ndim != 1:
        raise ValueError(f"trailing_time_mean: values {x.shape} and open times {t.shape} must "
                         "be 1-D of the same length.")
    if window_ms <= 0:
        raise ValueError(f"trailing_time_mean: window_ms must be > 0, got {window_ms}.")
    if len(x) == 0:
        return x.copy()
    count = _rows_in_window(t, window_ms)
    sums = _power_sums(x, int(count.max()).bit_length() - 1)
    # most rows see the same number of rows (a window without gaps): one fixed-length sum
    usual = int(np.bincount(count).argmax())
    out = _window_sum(sums, usual) / usual
    # the others (the start of the series, around gaps): their own power-of-two blocks,
    # added in the same order as _window_sum, so both ways give the same bits
    odd = np.flatnonzero(count != usual)
    total, end, n_odd = np.zeros(len(odd)), odd, count[odd]
    for k in reversed(range(len(sums))):
        bit = (n_odd >> k) & 1  # does the window have a block of 2^k rows here?
        total += np.where(bit == 1, sums[k].take(end, mode="clip"), 0.0)
        end = end - (bit << k)
    out[odd] = total / n_odd
    return out


def _rows_in_window(t: np.ndarray, window_ms: int) -> np.ndarray:
    """How many rows have open times in (t_i - window_ms, t_i], for each row i (>= 1).

    Guessed first from the last row's count (right for every row of a series without gaps,
    past its first window), checked with two lookups, and searched only where wrong: a
    binary search for every row costs more than all the sums."""
    rows, since = np.arange(len(t)), t - window_ms
    guess = int(len(t) - np.searchsorted(t, since[-1], side="right"))
    first = np.maximum(rows - guess + 1, 0)  # the guessed first row inside each window
    ok = (t[first] > since) & ((first == 0) | (t[np.maximum(first - 1, 0)] <= since))
    wrong = np.flatnonzero(~ok)
    first[wrong] = np.searchsorted(t, since[wrong], side="right")
    return rows + 1 - first


# ---------------------------------------------------------------------------------------
# Trailing windows. Every window is reduced on its own, by a fixed binary tree of
# power-of-two blocks ("sparse table"): a row's value depends only on the values inside its
# window, never on how much history came before it (unlike a running sum, whose rounding
# grows with the series), and prefixes of a series give bit-identical rows. One table of
# block results serves all window lengths of a series: O(n log w) instead of O(n w).


def _blank(n: int, head: int) -> np.ndarray:
    """An uninitialised float64 row of length n whose first `head` values are NaN."""
    out = np.empty(n)
    out[:head] = np.nan
    return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """x_(t-k) on row t (NaN for the first k rows). Never a negative k: that would look ahead."""
    out = _blank(len(x), k)
    if k < len(x):
        out[k:] = x[:len(x) - k]
    return out


def _lag(op: np.ufunc, x: np.ndarray, k: int) -> np.ndarray:
    """op(x_t, x_(t-k)) on row t (NaN for the first k rows): _shift and op in one pass."""
    out = _blank(len(x), k)
    if k < len(x):
        op(x[k:], x[:len(x) - k], out=out[k:])
    return out


def _power_sums(x: np.ndarray, top: int) -> np.ndarray:
    """(top+1, n) table: row k holds s_k[t] = sum of the 2^k values x[t-2^k+1 .. t] (NaN for
    t < 2^k-1), each level the sum of two blocks of the level below."""
    sums = np.empty((top + 1, len(x)))
    sums[0] = x
    for k in range(1, top + 1):
        h = 1 << (k - 1)
        sums[k, :h] = np.nan
        np.add(sums[k - 1, h:], sums[k - 1, :-h], out=sums[k, h:])
    return sums


def _pieces(n: int) -> list[tuple[int, int]]:
    """A window of n rows ending at t as power-of-two blocks, newest first:
    [(k, lag)]: the block of 2^k rows ending at row t - lag."""
    out, lag = [], 0
    for k in reversed(range(n.bit_length())):
        if n >> k & 1:
            out.append((k, lag))
            lag += 1 << k
    return out


def _rolling_sums(x: np.ndarray, *ns: int) -> list[np.ndarray]:
    """Trailing sums over n rows for each n in ns (NaN for the first n-1 rows and for windows
    holding a NaN)."""
    sums = _power_sums(x, max(ns).bit_length() - 1)
    return [_window_sum(sums, n) for n in ns]


def _window_sum(sums: np.ndarray, n: int) -> np.ndarray:
    """The trailing sum over n rows from a _power_sums table: its blocks added newest first."""
    out = _blank(sums.shape[1], n - 1)
    if sums.shape[1] >= n:
        acc = out[n - 1:]
        for i, (k, lag) in enumerate(_pieces(n)):
            block = sums[k, n - 1 - lag: sums.shape[1] - lag]  # rows t = n-1 .. end
            if i == 0:
                acc[:] = block
            else:
                acc += block
    return out


def _rolling_extreme(x: np.ndarray, n: int, op: np.ufunc) -> np.ndarray:
    """Trailing max (op=np.maximum) or min (np.minimum) over n rows: two overlapping
    power-of-two blocks cover the window (exact, as max and min are idempotent)."""
    out = _blank(len(x), n - 1)
    if len(x) < n:
        return out
    k = n.bit_length() - 1
    block = x
    for j in range(k):  # block[t] = op over x[t-2^(j+1)+1 .. t]
        h = 1 << j
        nxt = _blank(len(x), h)
        op(block[h:], block[:-h], out=nxt[h:])
        block = nxt
    lag = n - (1 << k)
    op(block[n - 1:], block[n - 1 - lag: len(x) - lag], out=out[n - 1:])
    return out


def _rolling_mean_std(x: np.ndarray, *ns: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Trailing mean and population std over n rows for each n in ns (NaN as _rolling_sums).

    Blocks carry (mean, sum of squared deviations) and are merged with Chan et al.'s pairwise
    update, which never subtracts two large sums: sum(x^2) - n mean^2 would lose the std of
    a price that barely moves (std 1e-5 of the price leaves ~6 digits), while here a flat
    window gives exactly 0 and the flat-band checks (std <= 1e-12 * price) hold.
    """
    n_all, levels = len(x), max(ns).bit_length()
    means, m2s = np.empty((levels, n_all)), np.empty((levels, n_all))  # one block each
    means[0], m2s[0] = x, 0.0 * x  # 0 * x: a NaN stays NaN
    for k in range(1, levels):
        h = 1 << (k - 1)
        means[k, :h] = m2s[k, :h] = np.nan
        older, newer = means[k - 1, :-h], means[k - 1, h:]  # the two halves of each block
        d = newer - older
        np.multiply(d, 0.5, out=means[k, h:])
        means[k, h:] += older
        np.add(m2s[k - 1, :-h], m2s[k - 1, h:], out=m2s[k, h:])
        d *= d
        d *= h / 2  # h * h / (h + h)
        m2s[k, h:] += d
    outs = []
    for n in ns:
        mean_out, std_out = _blank(n_all, n - 1), _blank(n_all, n - 1)
        if n_all >= n:
            mean, m2 = mean_out[n - 1:], std_out[n - 1:]  # std_out holds m2 until the end
            count = 0
            for k, lag in _pieces(n):  # merge the next older block into the running result
                rows = slice(n - 1 - lag, n_all - lag)
                size = 1 << k
                if count == 0:
                    mean[:], m2[:], count = means[k, rows], m2s[k, rows], size
                    continue
                d = means[k, rows] - mean
                m2 += m2s[k, rows]
                mean += d * (size / (count + size))
                d *= d
                d *= count * size / (count + size)
                m2 += d
                count += size
            m2 /= n
            np.sqrt(m2, out=m2)
        outs.append((mean_out, std_out))
    return outs


# ---------------------------------------------------------------------------------------
# Recursive averages (EMA and Wilder's smoothing)


def _seeded_ewm(x: np.ndarray, alpha: float, n: int, *, divisor: int | None = None
                ) -> np.ndarray:
    """y_t = alpha*x_t + (1-alpha)*y_(t-1), seeded on the n-th valid row with the sum of the
    first n valid x over `divisor` (default n: their mean, TA-Lib's EMA and Wilder seeding).
    x must be finite after its leading NaNs (it is, for validated candles)."""
    out = np.full(len(x), np.nan)
    first = _first_valid(x)
    if first is None or len(x) - first < n:
        return out
    p = first + n - 1
    out[p] = x[first: p + 1].sum() / (divisor or n)
    # the recursion is sequential (a C loop in lfilter): row t never sees a later row
    out[p + 1:] = lfilter([alpha], [1.0, alpha - 1.0], x[p + 1:], zi=[(1 - alpha) * out[p]])[0]
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
    seed = _first_valid(out)
    if seed is not None:
        out[seed] = np.nan
    return out


def _first_valid(x: np.ndarray) -> int | None:
    """The first row that is not NaN (None if there is none), looked for in growing chunks
    from the start: the leading NaNs are a few warm-up rows, not worth a pass over x."""
    start, size = 0, 64
    while start < len(x):
        found = np.flatnonzero(~np.isnan(x[start: start + size]))
        if len(found):
            return start + int(found[0])
        start, size = start + size, size * 4
    return None


def _ratio(num: np.ndarray, den: np.ndarray, fill: float, *, zero: np.ndarray | None = None
           ) -> np.ndarray:
    """num / den, `fill` where the denominator is zero (or where `zero` says so), NaN where
    either input is NaN (warm-up)."""
    out = num / den  # NaN already where num or den is NaN
    at = np.flatnonzero((den == 0) if zero is None else zero)  # few rows: flat, no volume
    out[at] = np.where(np.isnan(num[at]) | np.isnan(den[at]), np.nan, fill)
    return out


def _mean_abs_deviation(x: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """Trailing mean of |x_s - mean_t| over the n rows s ending at t (CCI's denominator). The
    deviation is from each row's own mean, so this one is n passes, not a block table."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        m, acc, d = mean[n - 1:], np.zeros(len(x) - n + 1), np.empty(len(x) - n + 1)
        for j in range(n):  # x[j:...] holds x_(t-n+1+j) on row t
            np.subtract(x[j: len(x) - n + 1 + j], m, out=d)
            acc += np.abs(d, out=d)
        out[n - 1:] = acc / n
    return out


# ---------------------------------------------------------------------------------------
# The table


class _Table:
    """The (F, n) output block. `table[name] = values` copies a finished column into its row
    right away, so finished columns are not kept as fifty more arrays until the end: on long
    series, fresh memory (its page faults) costs about as much as the arithmetic (issue 20)."""

    def __init__(self, n: int):
        self.rows = np.empty((len(FEATURE_DOCS), n))
        self.row_of = {name: i for i, name in enumerate(FEATURE_DOCS)}
        self.filled: set[str] = set()

    def __setitem__(self, name: str, values: np.ndarray) -> None:
        self.rows[self.row_of[name]] = values
        self.filled.add(name)

    def result(self) -> np.ndarray:
        missing = [k for k in FEATURE_DOCS if k not in self.filled]
        assert not missing, f"indicator_table did not compute {missing}"
        # (F, n) in memory, returned as its (n, F) transpose: each column one contiguous
        # block, the layout pandas keeps, so wrapping it in a DataFrame needs no copy
        return self.rows.T


def indicator_table(klines: pd.DataFrame) -> np.ndarray:
    """The indicator columns (FEATURE_DOCS, in order) as an (n, F) float64 array, warm-up rows
    included: row t uses only candles <= t. Reads open_time (int ms UTC), open, high, low,
    close and volume. v3_data_processor.compute_indicators blanks the first WARMUP_CANDLES
    rows and names the columns.
    """
    o, h, l, c, v = (klines[k].to_numpy(np.float64) for k in ("open", "high", "low", "close",
                                                                 "volume"))
    open_time = klines["open_time"].to_numpy(np.int64)
    f = _Table(len(c))
    # one function per family of columns: its intermediate arrays are freed when it returns,
    # so fewer are alive at once (see _Table)
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(c)
        delta = _lag(np.subtract, c, 1)
        tp = (h + l + c) / 3  # typical price
        _trend_columns(f, c, logc)
        _oscillator_columns(f, h, l, c, delta, tp)
        _volume_columns(f, c, v, delta, tp)
        _range_columns(f, o, h, l, c, logc, open_time)
    for name, values in clock_features(open_time).items():
        f[name] = values
    return f.result()  # (n, F)


def _trend_columns(f: _Table, c: np.ndarray, logc: np.ndarray) -> None:
    """Returns, SMA / EMA distances, Bollinger Bands, MACD, rate of change and momentum."""
    for k in (1, 3, 6, 12):
        f[f"ret_{k}"] = _lag(np.divide, c, k) - 1
        f[f"log_ret_{k}"] = _lag(np.subtract, logc, k)
    for n, total in zip((7, 14, 30, 50), _rolling_sums(c, 7, 14, 30, 50)):
        f[f"sma_{n}_rel"] = total / n / c - 1
    ema12, ema26 = _ema(c, 12), _ema(c, 26)
    f["ema_12_rel"], f["ema_26_rel"] = ema12 / c - 1, ema26 / c - 1

    [(mid, sd)] = _rolling_mean_std(c, 20)
    upper, lower = mid + 2 * sd, mid - 2 * sd
    f["bb_upper_rel"], f["bb_lower_rel"] = upper / c - 1, lower / c - 1
    f["bb_width"] = (upper - lower) / mid
    # a nearly flat window's std is rounding noise, not a band: compare it to the price
    f["bb_pct_b"] = _ratio(c - lower, upper - lower, 0.5, zero=sd <= 1e-12 * mid)

    macd = ema12 - ema26
    signal = _ema(macd, 9)
    f["macd_rel"], f["macd_signal_rel"] = macd / c, signal / c
    f["macd_hist_rel"] = (macd - signal) / c

    f["roc_10"] = 100 * (_lag(np.divide, c, 10) - 1)
    f["momentum_10_rel"] = _lag(np.subtract, c, 10) / c


def _oscillator_columns(f: _Table, h: np.ndarray, l: np.ndarray, c: np.ndarray,
                        delta: np.ndarray, tp: np.ndarray) -> None:
    """RSI, true range and ATR, stochastic, Williams %R, CCI, +DI / -DI / ADX."""
    gain = _wilder(np.maximum(delta, 0.0), 14)  # np.maximum keeps the NaN of row 0
    loss = _wilder(np.maximum(-delta, 0.0), 14)
    f["rsi_14"] = _ratio(100 * gain, gain + loss, 50.0)

    prev_c = _shift(c, 1)
    tr = np.maximum(h - l, np.maximum(np.abs(h - prev_c), np.abs(l - prev_c)))  # NaN on row 0
    f["true_range_rel"], f["atr_14_rel"] = tr / c, _wilder(tr, 14) / c

    hh, ll = _rolling_extreme(h, 14, np.maximum), _rolling_extreme(l, 14, np.minimum)
    [fast_k_sum] = _rolling_sums(_ratio(100 * (c - ll), hh - ll, 50.0), 3)
    stoch_k = fast_k_sum / 3
    f["stoch_k"], f["stoch_d"] = stoch_k, _rolling_sums(stoch_k, 3)[0] / 3
    f["williams_r"] = _ratio(-100 * (hh - c), hh - ll, -50.0)

    tp_mean = _rolling_sums(tp, 20)[0] / 20
    mad = _mean_abs_deviation(tp, tp_mean, 20)
    f["cci_20"] = _ratio(tp - tp_mean, 0.015 * mad, 0.0, zero=mad <= 1e-12 * tp_mean)

    up, down = _lag(np.subtract, h, 1), _shift(l, 1) - l
    # a product with the condition, not np.where: the masks are coin flips, and a
    # mispredicted branch per row costs more than the multiplication
    plus_dm = up * ((up > down) & (up > 0))
    minus_dm = down * ((down > up) & (down > 0))
    plus_dm[:1] = minus_dm[:1] = np.nan  # no previous candle
    tr_dm = _wilder_dm(tr, 14)
    plus_di = _ratio(100 * _wilder_dm(plus_dm, 14), tr_dm, 0.0)
    minus_di = _ratio(100 * _wilder_dm(minus_dm, 14), tr_dm, 0.0)
    f["plus_di_14"], f["minus_di_14"] = plus_di, minus_di
    dx = _ratio(100 * np.abs(plus_di - minus_di), plus_di + minus_di, 0.0)
    f["adx_14"] = _wilder(dx, 14)


def _volume_columns(f: _Table, c: np.ndarray, v: np.ndarray, delta: np.ndarray,
                    tp: np.ndarray) -> None:
    """OBV slope, money flow index, volume ratios and the log volume change."""
    vol5, vol20 = _rolling_sums(v, 5, 20)
    f["obv_slope_20"] = _ratio(_rolling_sums(np.sign(delta) * v, 20)[0], vol20, 0.0)

    tp_d = _lag(np.subtract, tp, 1)
    mf = tp * v
    up_mf, down_mf = mf * (tp_d > 0), mf * (tp_d < 0)
    up_mf[:1] = down_mf[:1] = np.nan  # no previous candle
    pos_mf, neg_mf = _rolling_sums(up_mf, 14)[0], _rolling_sums(down_mf, 14)[0]
    f["mfi_14"] = _ratio(100 * pos_mf, pos_mf + neg_mf, 50.0)

    vol_sma20 = vol20 / 20
    f["volume_ratio_20"] = _ratio(v, vol_sma20, 1.0)
    f["volume_ratio_5_20"] = _ratio(vol5 / 5, vol_sma20, 1.0)
    m = vol_sma20 / 1000  # scale-free floor: zero-volume candles give a finite value
    lvc = np.log((v + m) / (_shift(v, 1) + m))
    lvc[m == 0] = 0.0  # no volume in 20 candles: no change
    f["log_volume_change"] = lvc


def _range_columns(f: _Table, o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray,
                   logc: np.ndarray, open_time: np.ndarray) -> None:
    """Realised volatility, the candle's shape, and its Parkinson variance (candle, day)."""
    lr = _lag(np.subtract, logc, 1)
    for n, (_, sd) in zip((10, 30, 60), _rolling_mean_std(lr, 10, 30, 60)):
        f[f"volatility_{n}"] = sd

    span = h - l
    f["range_rel"] = span / c
    f["body"] = _ratio(c - o, span, 0.0)
    f["upper_wick"] = _ratio(h - np.maximum(o, c), span, 0.0)
    f["lower_wick"] = _ratio(np.minimum(o, c) - l, span, 0.0)

    pv = parkinson_variance(h, l)
    f["log_parkinson_var"] = np.log(np.maximum(pv, PARKINSON_FLOOR))
    pv_day = trailing_time_mean(pv, open_time, DAY_MS)
    f["log_parkinson_var_day"] = np.log(np.maximum(pv_day, PARKINSON_FLOOR))


def clock_features(open_time_ms: np.ndarray) -> dict[str, np.ndarray]:
    """hour_sin, hour_cos (the minute of the UTC day on a circle) and is_weekend of each
    open time (int ms UTC). 1970-01-01, day 0, was a Thursday."""
    minutes = np.asarray(open_time_ms, np.int64) // 60_000  # floor: right before 1970 too
    minute = minutes % 1440
    angle = 2 * np.pi * np.arange(1440) / 1440  # one sin/cos per minute of the day, looked up
    weekday = (minutes // 1440 + 3) % 7  # Monday 0 .. Sunday 6; day 0 was a Thursday (3)
    return {"hour_sin": np.sin(angle)[minute], "hour_cos": np.cos(angle)[minute],
            "is_weekend": (weekday >= 5).astype(np.float64)}
