"""Step 3: candles -> leak-free indicator features -> train-only scaling + PCA -> windows.

The rules that keep every number honest:
- `compute_indicators` is causal: row t uses candles up to and including t, never later.
- Price-like indicators are relative to the close (no raw price levels as features).
- The first WARMUP_CANDLES rows are NaN, so recursive indicators (EMA, Wilder smoothing)
  give the same values whether they saw a short or a long history.
- The scaler and the PCA are fitted on the training rows of the chronological split only,
  and kept as plain arrays (`FittedTransform`) that go into the checkpoint.
- Sample i predicts candle t+1 from the window of rows t-seq_len+1 .. t (all closed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import (INTERVAL_MS, REQUIRED_COLUMNS, ConfigError, DataValidationError,
                       InsufficientDataError, log)

# Rows dropped at the start of every series: long enough that EMA(26) + signal(9) and Wilder
# smoothing (ADX smooths twice) have forgotten their starting values to well below 1e-6
# relative (the decay is (1 - alpha)^k, with alpha >= 1/14 here).
WARMUP_CANDLES = 300


@dataclass(frozen=True)
class FeatureConfig:
    seq_len: int = 60           # candles per input window
    n_components: int = 30      # PCA components kept (or the number of features, if fewer)
    train_frac: float = 0.70    # chronological split: train / validation / test = rest
    val_frac: float = 0.15
    min_split_samples: int = 20  # fewest samples allowed in validation and in test

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def min_candles(self) -> int:
        """The fewest candles that leave enough samples for all three splits."""
        test_frac = 1.0 - self.train_frac - self.val_frac
        need = int(np.ceil(self.min_split_samples / min(self.val_frac, test_frac))) + 2
        return WARMUP_CANDLES + self.seq_len + need


# ---------------------------------------------------------------------------------------
# Input validation


def validate_klines(df: pd.DataFrame, name: str = "candles") -> pd.DataFrame:
    """Check a kline frame; return it with numeric dtypes. Raises DataValidationError."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(f"{name}: missing column(s) {missing}. A kline frame needs "
                                  f"{REQUIRED_COLUMNS}.")
    out = df.copy()
    for c in REQUIRED_COLUMNS:
        num = pd.to_numeric(out[c], errors="coerce")
        bad = num.isna() & out[c].notna()
        if bad.any():
            raise DataValidationError(f"{name}: non-numeric values in {c!r} at rows "
                                      f"{_first_rows(bad)}. Fix or re-download the file.")
        out[c] = num.astype(np.float64) if c != "open_time" else num
    vals = out[REQUIRED_COLUMNS].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals).all(axis=1)
    if bad.any():
        raise DataValidationError(f"{name}: NaN or inf in {REQUIRED_COLUMNS} at rows "
                                  f"{_first_rows(bad)}. Re-download the file or drop those rows.")
    out["open_time"] = out["open_time"].astype(np.int64)
    t = out["open_time"].to_numpy()
    dup = pd.Series(t).duplicated().to_numpy()
    if dup.any():
        raise DataValidationError(f"{name}: duplicate open_time at rows {_first_rows(dup)}. "
                                  f"Keep one candle per open time.")
    unsorted = np.r_[False, np.diff(t) < 0]
    if unsorted.any():
        raise DataValidationError(f"{name}: open_time not sorted ascending at rows "
                                  f"{_first_rows(unsorted)}. Sort the candles by open_time.")
    o, h, l, c, v = (out[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    for mask, what in ((h < l, "high < low"),
                       ((c > h) | (c < l), "close outside [low, high]"),
                       ((o > h) | (o < l), "open outside [low, high]"),
                       (v < 0, "negative volume"),
                       (c <= 0, "close <= 0")):
        if mask.any():
            raise DataValidationError(f"{name}: {what} at rows {_first_rows(mask)}. The "
                                      f"candles are inconsistent: re-download or fix them.")
    return out


def _first_rows(mask, k: int = 5) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    more = f" (+{len(idx) - k} more)" if len(idx) > k else ""
    return ", ".join(str(i) for i in idx[:k]) + more


# ---------------------------------------------------------------------------------------
# Indicators. Each column is documented in FEATURE_DOCS (one line: formula or convention).


def _ema(x: pd.Series, span: int) -> pd.Series:
    return _seeded_ewm(x, 2.0 / (span + 1), span)


def _wilder(x: pd.Series, n: int) -> pd.Series:
    return _seeded_ewm(x, 1.0 / n, n)


def _seeded_ewm(x: pd.Series, alpha: float, n: int) -> pd.Series:
    """Recursive average seeded with the mean of the first n valid values (TA-Lib's way)."""
    x = x.astype(np.float64)
    first = x.first_valid_index()
    out = pd.Series(np.nan, index=x.index)
    if first is None:
        return out
    pos = x.index.get_loc(first)
    if len(x) - pos < n:
        return out
    y = x.copy()
    y.iloc[: pos + n - 1] = np.nan
    y.iloc[pos + n - 1] = x.iloc[pos: pos + n].mean()
    return y.ewm(alpha=alpha, adjust=False).mean()


def _rolling_mad(x: pd.Series, n: int) -> pd.Series:
    """Mean absolute deviation from the mean over the last n values (vectorised)."""
    a = x.to_numpy(np.float64)
    out = np.full(len(a), np.nan)
    if len(a) >= n:
        w = np.lib.stride_tricks.sliding_window_view(a, n)
        out[n - 1:] = np.abs(w - w.mean(axis=1, keepdims=True)).mean(axis=1)
    return pd.Series(out, index=x.index)


FEATURE_DOCS: dict[str, str] = {}


def _doc(name: str, text: str) -> str:
    FEATURE_DOCS[name] = text
    return name


def compute_indicators(klines: pd.DataFrame) -> pd.DataFrame:
    """Indicator columns for each candle. Row t uses only candles <= t.

    Needs open, high, low, close and volume. Returns one column per indicator on the same
    index and length as the input; the first WARMUP_CANDLES rows are NaN.
    """
    o = klines["open"].astype(np.float64)
    h = klines["high"].astype(np.float64)
    l = klines["low"].astype(np.float64)
    c = klines["close"].astype(np.float64)
    v = klines["volume"].astype(np.float64)
    f: dict[str, pd.Series] = {}
    logc = np.log(c)

    for k in (1, 3, 6, 12):
        f[_doc(f"ret_{k}", f"close_t / close_(t-{k}) - 1")] = c / c.shift(k) - 1
        f[_doc(f"log_ret_{k}", f"ln(close_t / close_(t-{k}))")] = logc - logc.shift(k)
    for n in (7, 14, 30, 50):
        f[_doc(f"sma_{n}_rel", f"SMA({n}) of close / close - 1")] = c.rolling(n).mean() / c - 1
    for n in (12, 26):
        f[_doc(f"ema_{n}_rel", f"EMA({n}) of close (SMA-seeded) / close - 1")] = _ema(c, n) / c - 1

    mid = c.rolling(20).mean()
    sd = c.rolling(20).std(ddof=0)
    upper, lower = mid + 2 * sd, mid - 2 * sd
    f[_doc("bb_upper_rel", "Bollinger upper (SMA20 + 2 population std) / close - 1")] = upper / c - 1
    f[_doc("bb_lower_rel", "Bollinger lower (SMA20 - 2 population std) / close - 1")] = lower / c - 1
    f[_doc("bb_width", "(upper - lower) / SMA20")] = (upper - lower) / mid
    f[_doc("bb_pct_b", "%B = (close - lower) / (upper - lower); 0.5 when the band is flat")] = (
        ((c - lower) / (upper - lower)).where(upper > lower, 0.5))

    delta = c.diff()
    gain = _wilder(delta.clip(lower=0), 14)
    loss = _wilder((-delta).clip(lower=0), 14)
    rsi = 100 - 100 / (1 + gain / loss)
    f[_doc("rsi_14", "Wilder RSI(14), 0-100; 100 when there were no losses")] = (
        rsi.where(loss > 0, 100.0).where(gain.notna()))

    macd = _ema(c, 12) - _ema(c, 26)
    signal = _ema(macd, 9)
    f[_doc("macd_rel", "(EMA12 - EMA26) / close")] = macd / c
    f[_doc("macd_signal_rel", "EMA9 of the MACD line / close")] = signal / c
    f[_doc("macd_hist_rel", "(MACD - signal) / close")] = (macd - signal) / c

    prev_c = c.shift(1)
    tr = pd.concat([h - l, (h - prev_c).abs(), (l - prev_c).abs()], axis=1).max(axis=1, skipna=False)
    tr.iloc[0] = np.nan  # no previous close on the first candle
    atr = _wilder(tr, 14)
    f[_doc("true_range_rel", "max(high-low, |high-prev close|, |low-prev close|) / close")] = tr / c
    f[_doc("atr_14_rel", "Wilder ATR(14) / close")] = atr / c

    hh, ll = h.rolling(14).max(), l.rolling(14).min()
    rng = hh - ll
    k_fast = (100 * (c - ll) / rng).where(rng > 0, 50.0).where(rng.notna())
    stoch_k = k_fast.rolling(3).mean()
    f[_doc("stoch_k", "slow %K: SMA3 of 100*(close - LL14)/(HH14 - LL14); 50 on a flat range")] = stoch_k
    f[_doc("stoch_d", "slow %D: SMA3 of slow %K")] = stoch_k.rolling(3).mean()
    f[_doc("williams_r", "-100*(HH14 - close)/(HH14 - LL14); -50 on a flat range")] = (
        (-100 * (hh - c) / rng).where(rng > 0, -50.0).where(rng.notna()))

    tp = (h + l + c) / 3
    tp_sma = tp.rolling(20).mean()
    mad = _rolling_mad(tp, 20)
    f[_doc("cci_20", "(TP - SMA20(TP)) / (0.015 * mean abs deviation), TP = (H+L+C)/3")] = (
        ((tp - tp_sma) / (0.015 * mad)).where(mad > 0, 0.0).where(mad.notna()))

    up, down = h.diff(), -l.diff()
    plus_dm = up.where((up > down) & (up > 0), 0.0).where(up.notna())
    minus_dm = down.where((down > up) & (down > 0), 0.0).where(down.notna())
    atr_sum = _wilder(tr, 14)
    plus_di = 100 * _wilder(plus_dm, 14) / atr_sum
    minus_di = 100 * _wilder(minus_dm, 14) / atr_sum
    di_sum = plus_di + minus_di
    dx = (100 * (plus_di - minus_di).abs() / di_sum).where(di_sum > 0, 0.0).where(di_sum.notna())
    f[_doc("plus_di_14", "+DI(14) = 100 * Wilder(+DM) / Wilder(TR)")] = plus_di
    f[_doc("minus_di_14", "-DI(14) = 100 * Wilder(-DM) / Wilder(TR)")] = minus_di
    f[_doc("adx_14", "ADX(14): Wilder average of DX = 100*|+DI - -DI|/(+DI + -DI)")] = _wilder(dx, 14)

    f[_doc("roc_10", "rate of change: 100 * (close / close_(t-10) - 1)")] = 100 * (c / c.shift(10) - 1)
    f[_doc("momentum_10_rel", "(close - close_(t-10)) / close")] = (c - c.shift(10)) / c

    obv_step = np.sign(delta) * v
    obv_change = obv_step.rolling(20).sum()
    f[_doc("obv_slope_20", "20-candle OBV change / 20-candle volume (OBV has no fixed level)")] = (
        (obv_change / v.rolling(20).sum()).where(v.rolling(20).sum() > 0, 0.0).where(obv_change.notna()))

    mf = tp * v
    tp_d = tp.diff()
    pos_mf = mf.where(tp_d > 0, 0.0).where(tp_d.notna()).rolling(14).sum()
    neg_mf = mf.where(tp_d < 0, 0.0).where(tp_d.notna()).rolling(14).sum()
    mfi = 100 - 100 / (1 + pos_mf / neg_mf)
    f[_doc("mfi_14", "money flow index(14), 0-100; 100 when no negative flow, 50 when none")] = (
        mfi.where(neg_mf > 0, np.where(pos_mf > 0, 100.0, 50.0)).where(pos_mf.notna()))

    lr = logc.diff()
    for n in (10, 30, 60):
        f[_doc(f"volatility_{n}", f"std (ddof=0) of 1-candle log returns over {n} candles")] = (
            lr.rolling(n).std(ddof=0))

    vol_sma20 = v.rolling(20).mean()
    f[_doc("volume_ratio_20", "volume / SMA20(volume); 1 when there was no volume")] = (
        (v / vol_sma20).where(vol_sma20 > 0, 1.0).where(vol_sma20.notna()))
    vol_sma5 = v.rolling(5).mean()
    f[_doc("volume_ratio_5_20", "SMA5(volume) / SMA20(volume); 1 when there was no volume")] = (
        (vol_sma5 / vol_sma20).where(vol_sma20 > 0, 1.0).where(vol_sma20.notna()))
    f[_doc("log_volume_change", "ln((1 + volume_t) / (1 + volume_(t-1)))")] = np.log1p(v).diff()

    span = h - l
    f[_doc("range_rel", "(high - low) / close")] = span / c
    f[_doc("body", "(close - open) / (high - low); 0 when high == low")] = (
        ((c - o) / span).where(span > 0, 0.0))
    f[_doc("upper_wick", "(high - max(open, close)) / (high - low); 0 when high == low")] = (
        ((h - np.maximum(o, c)) / span).where(span > 0, 0.0))
    f[_doc("lower_wick", "(min(open, close) - low) / (high - low); 0 when high == low")] = (
        ((np.minimum(o, c) - l) / span).where(span > 0, 0.0))

    out = pd.DataFrame(f, index=klines.index)
    out.iloc[:WARMUP_CANDLES] = np.nan
    return out


FEATURE_NAMES: list[str] = []  # filled on first use (the order of compute_indicators' columns)


def feature_names() -> list[str]:
    if not FEATURE_NAMES:
        probe = pd.DataFrame({"open": [1.0] * 3, "high": [1.0] * 3, "low": [1.0] * 3,
                              "close": [1.0] * 3, "volume": [1.0] * 3})
        FEATURE_NAMES.extend(compute_indicators(probe).columns)
    return list(FEATURE_NAMES)


# ---------------------------------------------------------------------------------------
# Scaling + PCA, fitted on training rows only; the fitted state is plain arrays.


@dataclass
class FittedTransform:
    mean: np.ndarray                 # (F,) feature means on the training rows
    scale: np.ndarray                # (F,) feature std on the training rows (1 where 0)
    components: np.ndarray           # (K, F) PCA axes of the standardised training rows
    explained_variance_ratio: np.ndarray  # (K,)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}

    @classmethod
    def from_arrays(cls, d: dict) -> "FittedTransform":
        return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in
                      ("mean", "scale", "components", "explained_variance_ratio")})


def fit_transform(train: np.ndarray, n_components: int) -> FittedTransform:
    """Standardise, then PCA, fitted on `train` (rows x features) alone."""
    from sklearn.decomposition import PCA
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant column stays 0 after scaling
    z = (train - mean) / scale
    k = min(n_components, z.shape[1], z.shape[0])
    pca = PCA(n_components=k, svd_solver="full").fit(z)  # deterministic signs (svd_flip)
    return FittedTransform(mean=mean, scale=scale, components=pca.components_.copy(),
                           explained_variance_ratio=pca.explained_variance_ratio_.copy())


def apply_transform(x: np.ndarray, state: FittedTransform) -> np.ndarray:
    """(rows, F) raw features -> (rows, K) PCA scores, with the training rows' fit."""
    z = (np.asarray(x, dtype=np.float64) - state.mean) / state.scale
    # z is centred with the training mean, so PCA's own centring is a no-op (its mean is 0)
    return z @ state.components.T


# ---------------------------------------------------------------------------------------
# The dataset of one pair


@dataclass
class PreparedData:
    features: np.ndarray        # (R, K) float32 PCA scores, one row per candle
    ends: np.ndarray            # (N,) int64 row index of each sample's last window candle
    target: np.ndarray          # (N,) float32 standardised log return of the next candle
    last_close: np.ndarray      # (N,) close of candle t
    actual_close: np.ndarray    # (N,) close of candle t+1
    target_open_time: np.ndarray  # (N,) int64 open time (ms) of candle t+1
    n_train: int
    n_val: int
    transform: FittedTransform
    target_mean: float          # of training log returns
    target_std: float
    feature_names: list[str]
    seq_len: int
    gap_windows_dropped: int
    first_open_time: int
    last_open_time: int

    @property
    def n_test(self) -> int:
        return len(self.ends) - self.n_train - self.n_val

    def split(self, name: str) -> slice:
        """'train', 'val' or 'test' -> slice of samples."""
        return {"train": slice(0, self.n_train),
                "val": slice(self.n_train, self.n_train + self.n_val),
                "test": slice(self.n_train + self.n_val, len(self.ends))}[name]

    def windows(self, idx) -> np.ndarray:
        """(n, seq_len, K) input windows for the samples `idx`."""
        ends = self.ends[idx]
        rows = ends[:, None] - np.arange(self.seq_len - 1, -1, -1)[None, :]
        return self.features[rows]

    def to_close(self, standardized_return: np.ndarray, idx) -> np.ndarray:
        """Model output -> predicted close: last_close * exp(predicted log return)."""
        r = self.target_mean + self.target_std * np.asarray(standardized_return, np.float64)
        return self.last_close[idx] * np.exp(r)

    def save(self, path: str | Path) -> None:
        import io
        from v3_common import atomic_write_bytes
        arrays = {k: getattr(self, k) for k in ("features", "ends", "target", "last_close",
                                                  "actual_close", "target_open_time")}
        arrays.update({f"transform_{k}": v for k, v in self.transform.to_arrays().items()})
        arrays["feature_names"] = np.array(self.feature_names)
        scalars = {k: getattr(self, k) for k in ("n_train", "n_val", "target_mean", "target_std",
                                                  "seq_len", "gap_windows_dropped",
                                                  "first_open_time", "last_open_time")}
        arrays["scalars"] = np.array([repr(scalars)])
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        import ast
        with np.load(path, allow_pickle=False) as z:
            scalars = ast.literal_eval(str(z["scalars"][0]))
            transform = FittedTransform.from_arrays(
                {k[len("transform_"):]: z[k] for k in z.files if k.startswith("transform_")})
            return cls(features=z["features"], ends=z["ends"], target=z["target"],
                       last_close=z["last_close"], actual_close=z["actual_close"],
                       target_open_time=z["target_open_time"], transform=transform,
                       feature_names=[str(s) for s in z["feature_names"]], **scalars)


def prepare_dataset(klines: pd.DataFrame, cfg: FeatureConfig = FeatureConfig(), *,
                    interval: str, name: str = "candles") -> PreparedData:
    """Validate, compute indicators, split chronologically, fit scaling+PCA on train only."""
    df = validate_klines(klines, name).reset_index(drop=True)
    need = cfg.min_candles()
    if len(df) < need:
        raise InsufficientDataError(
            f"{name}: {len(df)} candles, need >= {need} (warm-up {WARMUP_CANDLES} + window "
            f"{cfg.seq_len} + {need - WARMUP_CANDLES - cfg.seq_len} for the 70/15/15 splits). "
            f"Download more candles (--candles) or shorten the window.")
    feats = compute_indicators(df)
    names = list(feats.columns)
    raw = feats.to_numpy(dtype=np.float64)
    ok_row = np.isfinite(raw).all(axis=1)
    close = df["close"].to_numpy(np.float64)
    t_open = df["open_time"].to_numpy(np.int64)
    step = INTERVAL_MS[interval]
    T = cfg.seq_len
    n = len(df)

    # candidate sample ends t: a full window of valid rows ending at t, and a candle t+1
    t = np.arange(T - 1, n - 1)
    valid_run = np.convolve(ok_row.astype(np.int64), np.ones(T, dtype=np.int64), "valid")  # len n-T+1
    full = valid_run[t - (T - 1)] == T
    t = t[full]
    # a window (and its target) must not span a gap in the candle series
    spans = t_open[t + 1] - t_open[t - (T - 1)]
    contiguous = spans == T * step
    gap_dropped = int((~contiguous).sum())
    t = t[contiguous]
    if gap_dropped:
        log.info("%s: %d windows span a gap in the candles and were dropped", name, gap_dropped)

    n_samples = len(t)
    n_train = int(n_samples * cfg.train_frac)
    n_val = int(n_samples * cfg.val_frac)
    n_test = n_samples - n_train - n_val
    if min(n_val, n_test) < cfg.min_split_samples or n_train < cfg.min_split_samples:
        raise InsufficientDataError(
            f"{name}: {n_samples} usable windows from {n} candles (after a warm-up of "
            f"{WARMUP_CANDLES}, windows of {cfg.seq_len}, {gap_dropped} dropped at gaps) give "
            f"train/val/test = {n_train}/{n_val}/{n_test}; each needs >= "
            f"{cfg.min_split_samples}. Download more candles or shorten the window.")

    # fit scaling + PCA on the feature rows the training samples can see, nothing later
    last_train_row = t[n_train - 1]
    fit_rows = ok_row.copy()
    fit_rows[last_train_row + 1:] = False
    transform = fit_transform(raw[fit_rows], cfg.n_components)
    if transform.explained_variance_ratio.sum() < 0.95:
        log.warning("%s: %d PCA components keep %.1f%% of the training variance (< 95%%)",
                    name, transform.n_components, 100 * transform.explained_variance_ratio.sum())
    scores = np.zeros((n, transform.n_components), dtype=np.float32)
    scores[ok_row] = apply_transform(raw[ok_row], transform).astype(np.float32)

    log_ret = np.log(close[t + 1] / close[t])
    mu = float(log_ret[:n_train].mean())
    sd = float(log_ret[:n_train].std())
    sd = sd if sd > 1e-12 else 1.0
    return PreparedData(
        features=scores, ends=t.astype(np.int64),
        target=((log_ret - mu) / sd).astype(np.float32),
        last_close=close[t], actual_close=close[t + 1],
        target_open_time=t_open[t + 1], n_train=n_train, n_val=n_val,
        transform=transform, target_mean=mu, target_std=sd, feature_names=names,
        seq_len=T, gap_windows_dropped=gap_dropped,
        first_open_time=int(t_open[0]), last_open_time=int(t_open[-1]))


def check_feature_config(cfg: FeatureConfig) -> None:
    """Raise ConfigError for a feature config that cannot work (before any heavy work)."""
    if cfg.seq_len < 1:
        raise ConfigError(f"window length must be >= 1, got {cfg.seq_len}.")
    if cfg.n_components < 1:
        raise ConfigError(f"n_components must be >= 1, got {cfg.n_components}.")
    if not (0 < cfg.train_frac < 1 and 0 < cfg.val_frac < 1 and cfg.train_frac + cfg.val_frac < 1):
        raise ConfigError(f"splits train {cfg.train_frac} / val {cfg.val_frac} must be in (0, 1) "
                          f"and leave room for a test split.")
