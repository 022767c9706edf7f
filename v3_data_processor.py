"""Step 3: candles -> leak-free indicator features -> train-only scaling + PCA -> windows.

The rules that keep every number honest:
- `compute_indicators` is causal: row t uses candles up to and including t, never later.
- Price-like indicators are relative to the close (no raw price levels as features).
- The first WARMUP_CANDLES rows are NaN, so recursive indicators (EMA, Wilder smoothing)
  give the same values whether they saw a short or a long history.
- The scaler and the PCA are fitted on the training rows of the chronological split only,
  and kept as plain arrays (`FittedTransform`) that go into the checkpoint.
- Sample i predicts candle t+1 from the window of rows t-seq_len+1 .. t (all closed).
- Live prediction (`latest_window`) goes through the same functions as training.
- The quantile head's unit is a volatility known at candle t: `vol_scale` (see
  `recent_volatility`), an EWMA over the last VOL_WINDOW closes with no fitting at all, or
  `har_scale`, the HAR forecast of candle t+1's range-based volatility (v3_har) from the
  ranges of the candles up to t and the clock of t+1, its coefficients fitted on the
  training samples only (`PreparedData.har`, kept in the checkpoint).
"""
from __future__ import annotations

import ast
import io
import time
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import (INTERVAL_MS, REQUIRED_COLUMNS, CheckpointError, ConfigError,
                       DamagedFileError, DataValidationError, InsufficientDataError, atomic_write_bytes,
                       check_interval, log, plural, utc_minute)
from v3_har import HarFit, fit_har, range_features
from v3_indicators import FEATURE_DOCS, feature_names, indicator_table

# Rows dropped (NaN) at the start of every series. Recursive indicators forget where they
# started as (1 - alpha)^k: EMA(26) and Wilder(14) lose a factor 10 every ~31 candles, ADX
# (Wilder twice) a little slower. On 27 series of real Binance candles
# (2017-2022, ~2,400 cut points; bench/check_real_data.py) values computed on a
# short history agree with those on the full history to 1e-6 (relative to the value, floored
# at the column's median magnitude) from row ~250 on (ADX is the slowest); at row 300 the
# worst error is 3e-8 to 6e-8 depending on the cut points, a margin of 15x or more. A price
# jump by a factor X inside the first candles of the short history costs ~30 * log10(X)
# candles more (a crash like LUNA's in May 2022): fetch more history then.
WARMUP_CANDLES = 300

# The version of the indicator set: bumped whenever a column is added, removed or redefined,
# so a checkpoint is only used with the features it was trained on (v3_predict checks it).
FEATURE_SET_VERSION = 3  # 3: + Parkinson variance (candle, day), hour of day, weekend (issue 20)

# The quantile head predicts the next return in units of the recent volatility (ModelConfig.
# quantile_scale = "ewma"): RiskMetrics weights lambda^j (lambda 0.94, as the `ewma` interval
# baseline) on the last VOL_WINDOW squared log returns up to candle t, normalised to sum to 1
# (the weights left out past 100 candles are 0.94^100 = 0.2 %). A pure function of the last
# VOL_WINDOW + 1 closes, so live prediction gets exactly the training value. The unit is
# floored at VOL_FLOOR x the training returns' std (a flat price series has no volatility).
VOL_LAMBDA = 0.94
VOL_WINDOW = 100
VOL_FLOOR = 0.05


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


def validate_klines(df: pd.DataFrame, name: str = "candles", *,
                    first_line: int | None = None) -> pd.DataFrame:
    """Check a kline frame; return a copy with float prices and int64 open times.

    Raises DataValidationError naming the problem, the first offending rows (0-based
    positions in the frame, or file lines when `first_line` gives the line of the frame's
    first row: 2 for a CSV with a header; open_time as an integer and in UTC) and the fix,
    for: missing columns, non-numeric values, NaN or inf, duplicate or unsorted open_time, high < low, open or
    close outside [low, high], negative volume and prices <= 0.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{name}: missing column(s) {missing}; the columns given are {list(df.columns)[:12]}. "
            f"A kline frame needs {REQUIRED_COLUMNS}: read files with v3_market_data.read_klines "
            f"or rename the columns.")
    out = df.copy()
    for c in REQUIRED_COLUMNS:
        num = pd.to_numeric(out[c], errors="coerce")
        bad = (num.isna() & out[c].notna()).to_numpy()
        if bad.any():
            raise _invalid(name, f"non-numeric values in {c!r}", bad, df, [c],
                           "Fix or re-download the file (plain numbers, '.' as decimal point).",
                           first_line)
        out[c] = num.astype(np.float64)
    vals = out[REQUIRED_COLUMNS].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals).all(axis=1)
    if bad.any():
        raise _invalid(name, f"NaN or inf in {REQUIRED_COLUMNS}", bad, out, REQUIRED_COLUMNS,
                       "Re-download the pair, or drop those rows (the gap is then handled: "
                       "windows across it are dropped).", first_line)
    t = out["open_time"].to_numpy()
    dup = pd.Series(t).duplicated(keep="first").to_numpy()
    if dup.any():
        raise _invalid(name, "duplicate open_time", dup, out, ["open_time"],
                       "Keep one candle per open time: df.drop_duplicates('open_time', keep='last').",
                       first_line)
    unsorted = np.r_[False, np.diff(t) < 0]
    if unsorted.any():
        raise _invalid(name, "open_time not sorted ascending (earlier than the row before)",
                       unsorted, out, ["open_time"],
                       "Sort the candles: df.sort_values('open_time').", first_line)
    out["open_time"] = out["open_time"].astype(np.int64)
    o, h, l, c, v = (out[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    broken = "The candles are inconsistent: re-download the pair or fix those rows."
    for mask, what, cols in ((h < l, "high < low", ["high", "low"]),
                             ((c > h) | (c < l), "close outside [low, high]", ["low", "high", "close"]),
                             ((o > h) | (o < l), "open outside [low, high]", ["low", "high", "open"]),
                             (v < 0, "negative volume", ["volume"]),
                             (l <= 0, "price <= 0", ["low", "close"])):
        if mask.any():
            raise _invalid(name, what, mask, out, cols, broken, first_line)
    return out


def _invalid(name: str, what: str, mask: np.ndarray, df: pd.DataFrame, cols: list[str],
             fix: str, first_line: int | None = None, k: int = 5) -> DataValidationError:
    """The error for `mask`'s rows: how many, the first k with their values, and the fix.
    Rows are frame positions, or file lines counted from `first_line`."""
    idx = np.flatnonzero(mask)
    show = ["open_time"] + [c for c in cols if c != "open_time"]
    rows = []
    for i in idx[:k]:
        vals = ", ".join(f"{c}={_show(df[c].iloc[i], c)}" for c in show if c in df.columns)
        rows.append(f"line {i + first_line} ({vals})" if first_line is not None
                    else f"row {i} ({vals})")
    more = f" and {len(idx) - k} more" if len(idx) > k else ""
    return DataValidationError(f"{name}: {what} in {plural(len(idx), 'row')}: "
                               f"{'; '.join(rows)}{more}. {fix}")


def _show(x, column: str = "") -> str:
    """A cell for an error message; open times as integer ms and UTC (never 1.7e+12)."""
    if isinstance(x, str):
        return repr(x)
    if column == "open_time" and isinstance(x, (int, float, np.number)) and np.isfinite(x) \
            and float(x) == int(x) and 0 <= x < 253_402_300_800_000:  # up to the year 9999
        return f"{int(x)} ({utc_minute(int(x))})"
    return str(x)


# ---------------------------------------------------------------------------------------
# Indicators (the formulas are v3_indicators'), with the warm-up rows blanked


def compute_indicators(klines: pd.DataFrame) -> pd.DataFrame:
    """Indicator columns for each candle (FEATURE_DOCS, in order). Row t uses only candles <= t.

    Needs open_time (int ms UTC, ascending: the clock columns and the day's Parkinson mean)
    and open, high, low, close and volume (finite, close > 0): see `validate_klines`.
    Returns one column per indicator on the same index and length as the input; the first
    WARMUP_CANDLES rows are NaN (the caller drops them).
    """
    out = indicator_table(klines)  # (n, F), each column contiguous
    out[:WARMUP_CANDLES] = np.nan
    # out is ours alone: wrapping it without a copy saves a pass over n x F floats
    return pd.DataFrame(out, index=klines.index, columns=list(FEATURE_DOCS), copy=False)


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
    from sklearn.decomposition import PCA  # noqa: PLC0415  (lazy: scikit-learn takes ~1 s to import)
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
    vol_scale: np.ndarray       # (N,) float32 recent volatility at t / target_std (>= VOL_FLOOR)
    range_var: np.ndarray       # (N, 4) Parkinson variance of t, its 4-candle, day, week means
    next_range_var: np.ndarray  # (N,) Parkinson variance of candle t+1 (the HAR's target)
    har_scale: np.ndarray       # (N,) float32 HAR volatility of t+1 / target_std (>= VOL_FLOOR)
    har: HarFit                 # the HAR's coefficients, fitted on the training samples
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

    def unit(self, scale: str) -> np.ndarray:
        """(N,) the quantile head's unit per sample (ModelConfig.quantile_scale): the recent
        EWMA volatility ('ewma'), the HAR forecast ('har'), or 1 ('none')."""
        if scale == "ewma":
            return self.vol_scale
        if scale == "har":
            return self.har_scale
        return np.ones(len(self.target), np.float32)

    def quantile_target(self, scale: str) -> np.ndarray:
        """(N,) what the quantile head learns: the standardised target in its unit."""
        return self.target if scale == "none" else self.target / self.unit(scale)

    def to_close(self, standardized_return: np.ndarray, idx) -> np.ndarray:
        """Model output -> predicted close: last_close * exp(predicted log return)."""
        r = self.target_mean + self.target_std * np.asarray(standardized_return, np.float64)
        return self.last_close[idx] * np.exp(r)

    def _arrays(self) -> dict[str, np.ndarray]:
        """What `save` writes: every array, the transform's and the scalars (as one repr)."""
        arrays = {k: np.asarray(getattr(self, k)) for k in (
            "features", "ends", "target", "vol_scale", "range_var", "next_range_var",
            "har_scale", "last_close", "actual_close", "target_open_time")}
        arrays.update({f"transform_{k}": v for k, v in self.transform.to_arrays().items()})
        arrays["feature_names"] = np.array(self.feature_names)
        scalars = {k: getattr(self, k) for k in ("n_train", "n_val", "target_mean", "target_std",
                                                  "seq_len", "gap_windows_dropped",
                                                  "first_open_time", "last_open_time")}
        scalars["har"] = self.har.to_dict()
        arrays["scalars"] = np.array([repr(scalars)])
        return arrays

    def save(self, path: str | Path) -> bool:
        """Write the dataset to `path` (.npz), atomically, only when its content changes
        (an unchanged file keeps its mtime). Returns whether it wrote."""
        arrays = self._arrays()
        if _same_npz(Path(path), arrays):
            return False
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return True

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        """Read a dataset `save` wrote. DamagedFileError for a truncated or garbled file (step 3
        writes it again); DataValidationError for one of an older V3."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls._from_npz(z, path)
        except (DataValidationError, FileNotFoundError):
            raise
        except NPZ_DAMAGE as e:
            raise DamagedFileError(f"{path} is damaged ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:160]}): step 3 (preprocess) "
                                   f"writes it again.", path=path) from e

    @classmethod
    def _from_npz(cls, z, path) -> "PreparedData":
        missing = [k for k in ("vol_scale", "har_scale", "range_var") if k not in z.files]
        if missing:
            raise DataValidationError(
                f"{path} was written by an older V3 (no {', '.join(missing)}: the quantile "
                f"head's units). Run step 3 again (--steps preprocess,train) to rebuild it.")
        scalars = ast.literal_eval(str(z["scalars"][0]))
        har = HarFit.from_dict(scalars.pop("har"))
        transform = FittedTransform.from_arrays(
            {k[len("transform_"):]: z[k] for k in z.files if k.startswith("transform_")})
        return cls(features=z["features"], ends=z["ends"], target=z["target"],
                   vol_scale=z["vol_scale"], range_var=z["range_var"],
                   next_range_var=z["next_range_var"], har_scale=z["har_scale"], har=har,
                   last_close=z["last_close"], actual_close=z["actual_close"],
                   target_open_time=z["target_open_time"], transform=transform,
                   feature_names=[str(s) for s in z["feature_names"]], **scalars)


# what a truncated or garbled .npz raises from np.load or its arrays (a missing file is
# FileNotFoundError, an OSError: callers check for the file first)
NPZ_DAMAGE = (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, SyntaxError, TypeError,
              IndexError)


def _same_npz(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Whether the .npz at `path` holds exactly `arrays` (names, dtypes, shapes, values).
    np.savez stamps the time into its zip, so bytes cannot be compared."""
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            if sorted(z.files) != sorted(arrays):
                return False
            for k, v in arrays.items():
                old = z[k]
                if old.dtype != v.dtype or old.shape != v.shape or not np.array_equal(
                        old, v, equal_nan=v.dtype.kind in "fc"):
                    return False
    except NPZ_DAMAGE:
        return False  # unreadable: write it afresh
    return True


def feature_matrix(klines: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Validated candles -> (raw indicator rows (R, F) float64, ok (R,) bool: no NaN/inf)."""
    raw = compute_indicators(klines).to_numpy(dtype=np.float64)
    return raw, np.isfinite(raw).all(axis=1)


def feature_scores(raw: np.ndarray, ok: np.ndarray, transform: FittedTransform) -> np.ndarray:
    """Raw indicator rows -> (R, K) float32 PCA scores with a fitted transform; rows that are
    not ok (the warm-up) stay 0 and are never part of a window. The one path from features to
    model inputs, shared by training (`prepare_dataset`) and live prediction (`latest_window`)."""
    if raw.shape[1] != len(transform.mean):
        raise CheckpointError(
            f"the fitted transform expects {len(transform.mean)} indicator columns, "
            f"compute_indicators gives {raw.shape[1]}: the checkpoint comes from another "
            f"version of V3. Retrain the pair with this version.")
    scores = np.zeros((len(raw), transform.n_components), dtype=np.float32)
    scores[ok] = apply_transform(raw[ok], transform).astype(np.float32)
    return scores


def prepare_dataset(klines: pd.DataFrame, cfg: FeatureConfig = FeatureConfig(), *,
                    interval: str, name: str = "candles", hint: str | None = None
                    ) -> PreparedData:
    """Validate, compute indicators, split chronologically, fit scaling+PCA on train only.

    `hint`: how the caller's user gets more candles, ending the InsufficientDataError (e.g.
    "Download more candles (--candles 5000)." or "Give a longer BTCUSDT_1h.csv."); the default
    names no option, since only the caller knows which exist."""
    df = validate_klines(klines, name).reset_index(drop=True)
    need = cfg.min_candles()
    hint = hint or f"Give it a longer candle series (at least {need} candles)."
    if len(df) < need:
        raise InsufficientDataError(
            f"{name}: {plural(len(df), 'candle')}, need >= {need} (warm-up {WARMUP_CANDLES} + "
            f"window {cfg.seq_len} + {need - WARMUP_CANDLES - cfg.seq_len} for the "
            f"{_splits(cfg)} splits). {hint}")
    raw, ok_row = feature_matrix(df)
    close = df["close"].to_numpy(np.float64)
    t_open = df["open_time"].to_numpy(np.int64)
    T = cfg.seq_len
    n = len(df)
    t, gap_dropped = _sample_ends(ok_row, t_open, T, INTERVAL_MS[interval], name)

    n_samples = len(t)
    n_train = int(n_samples * cfg.train_frac)
    n_val = int(n_samples * cfg.val_frac)
    n_test = n_samples - n_train - n_val
    if min(n_val, n_test) < cfg.min_split_samples or n_train < cfg.min_split_samples:
        raise InsufficientDataError(
            f"{name}: {n_samples} usable windows from {n} candles (after a warm-up of "
            f"{WARMUP_CANDLES}, windows of {cfg.seq_len}, {gap_dropped} dropped at gaps) give "
            f"train/val/test = {n_train}/{n_val}/{n_test}; each needs >= "
            f"{cfg.min_split_samples}. {hint}")

    transform = _fit_on_train_rows(raw, ok_row, int(t[n_train - 1]), cfg.n_components, name)
    scores = feature_scores(raw, ok_row, transform)

    log_ret = np.log(close[t + 1] / close[t])
    mu = float(log_ret[:n_train].mean())
    sd = float(log_ret[:n_train].std())
    sd = sd if sd > 1e-12 else 1.0
    rf = range_features(df["high"].to_numpy(np.float64), df["low"].to_numpy(np.float64),
                        t_open, INTERVAL_MS[interval])                   # (n, 4), rows <= t
    range_var, next_pv, target_open = rf[t], rf[t + 1, 0], t_open[t + 1]
    har = fit_har(range_var[:n_train], next_pv[:n_train], target_open[:n_train])
    return PreparedData(
        features=scores, ends=t.astype(np.int64),
        target=((log_ret - mu) / sd).astype(np.float32),
        vol_scale=volatility_unit(close, sd)[t].astype(np.float32),
        range_var=range_var, next_range_var=next_pv, har=har,
        har_scale=as_unit(har.volatility(range_var, target_open), sd).astype(np.float32),
        last_close=close[t], actual_close=close[t + 1],
        target_open_time=t_open[t + 1], n_train=n_train, n_val=n_val,
        transform=transform, target_mean=mu, target_std=sd, feature_names=feature_names(),
        seq_len=T, gap_windows_dropped=gap_dropped,
        first_open_time=int(t_open[0]), last_open_time=int(t_open[-1]))


def recent_volatility(close: np.ndarray) -> np.ndarray:
    """(n,) float64 volatility of the log returns up to each candle: sqrt of the
    VOL_LAMBDA^j-weighted mean (j = 0 the newest) of the last VOL_WINDOW squared log returns
    ending at that candle, the weights normalised over the returns there are. Row t uses
    closes t - VOL_WINDOW .. t only; row 0 (no return yet) is NaN."""
    c = np.asarray(close, np.float64)
    if len(c) < 2:
        return np.full(len(c), np.nan)
    r2 = np.diff(np.log(c)) ** 2
    w = VOL_LAMBDA ** np.arange(VOL_WINDOW)
    num = np.convolve(r2, w)[:len(r2)]
    den = np.convolve(np.ones(len(r2)), w)[:len(r2)]
    return np.r_[np.nan, np.sqrt(num / den)]


def as_unit(volatility: np.ndarray, target_std: float) -> np.ndarray:
    """A volatility of the log return as the quantile head's unit: / target_std, floored at
    VOL_FLOOR (and VOL_FLOOR where undefined)."""
    v = np.asarray(volatility, np.float64) / float(target_std)
    return np.maximum(np.nan_to_num(v, nan=VOL_FLOOR), VOL_FLOOR)


def volatility_unit(close: np.ndarray, target_std: float) -> np.ndarray:
    """(n,) the 'ewma' unit at each candle: as_unit(recent_volatility)."""
    return as_unit(recent_volatility(close), target_std)


def _sample_ends(ok_row: np.ndarray, t_open: np.ndarray, T: int, step: int, name: str
                 ) -> tuple[np.ndarray, int]:
    """The sample ends t of windows of T rows: a full window of valid rows ending at t, a
    candle t+1, and no gap in the candles the window and its target span. Returns (t, the
    number of windows dropped at gaps)."""
    n = len(ok_row)
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
    return t, gap_dropped


def _fit_on_train_rows(raw: np.ndarray, ok_row: np.ndarray, last_train_row: int,
                       n_components: int, name: str) -> FittedTransform:
    """Scaling + PCA fitted on the feature rows the training samples can see, nothing later."""
    fit_rows = ok_row.copy()
    fit_rows[last_train_row + 1:] = False
    transform = fit_transform(raw[fit_rows], n_components)
    if transform.explained_variance_ratio.sum() < 0.95:
        log.warning("%s: %d PCA components keep %.1f%% of the training variance (< 95%%)",
                    name, transform.n_components, 100 * transform.explained_variance_ratio.sum())
    return transform


def _splits(cfg: FeatureConfig) -> str:
    """'70/15/15': the train/validation/test shares in percent."""
    test = 1.0 - cfg.train_frac - cfg.val_frac
    return "/".join(f"{100 * f:.0f}" for f in (cfg.train_frac, cfg.val_frac, test))


def latest_window(klines: pd.DataFrame, transform: FittedTransform, *, seq_len: int,
                  interval: str, now_ms: int | None = None, name: str = "candles"
                  ) -> tuple[np.ndarray, int, float]:
    """The model input for predicting the candle after the last closed one, built exactly as
    in training (`validate_klines` -> `compute_indicators` -> `feature_scores`).

    Candles still open at `now_ms` (default: now) are dropped. Returns (window (1, seq_len, K)
    float32, open time in ms of the window's last candle, its close); the prediction is for
    the candle opening at that time + the interval. Raises InsufficientDataError when there
    are fewer than WARMUP_CANDLES + seq_len closed candles, DataValidationError when the last
    seq_len candles span a gap (training drops such windows too).
    """
    step = INTERVAL_MS[check_interval(interval)]
    df = validate_klines(klines, name).reset_index(drop=True)
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    closed = df["open_time"].to_numpy(np.int64) + step <= now_ms
    if not closed.all():
        log.info("%s: dropped %d candle(s) still open at %d ms", name, int((~closed).sum()), now_ms)
        df = df[closed].reset_index(drop=True)
    need = WARMUP_CANDLES + seq_len
    if len(df) < need:
        raise InsufficientDataError(
            f"{name}: {len(df)} closed candles, need >= {need} (indicator warm-up "
            f"{WARMUP_CANDLES} + window {seq_len}). Fetch at least {need} {interval} candles.")
    t_open = df["open_time"].to_numpy(np.int64)
    tail = t_open[-seq_len:]
    if tail[-1] - tail[0] != (seq_len - 1) * step:
        at = int(np.flatnonzero(np.diff(tail) != step)[0]) + len(df) - seq_len + 1
        raise DataValidationError(
            f"{name}: the last {seq_len} candles span a gap in the series (before row {at}, "
            f"open_time {t_open[at]}); a model only sees gap-free windows. Download the "
            f"missing candles, or wait for {seq_len} candles after the gap.")
    raw, ok = feature_matrix(df)
    if not ok[-seq_len:].all():
        raise DataValidationError(f"{name}: NaN or inf indicators in the last {seq_len} candles; "
                                  f"check the candles for broken values.")
    window = feature_scores(raw, ok, transform)[-seq_len:]   # (T, K)
    return window[None], int(t_open[-1]), float(df["close"].iloc[-1])


def latest_unit(klines: pd.DataFrame, last_open_time: int, target_std: float, *,
                scale: str = "ewma", har: HarFit | None = None, interval: str | None = None,
                name: str = "candles") -> float:
    """The quantile head's unit at the candle opening at `last_open_time` (latest_window's
    last one), from the candles up to it, as in training: PreparedData.vol_scale ('ewma':
    the closes) or har_scale ('har': the ranges, and the clock of the next candle; needs the
    fitted `har` and the `interval`); 1.0 for 'none'."""
    if scale == "none":
        return 1.0
    df = validate_klines(klines, name)
    df = df[df["open_time"].to_numpy(np.int64) <= last_open_time]
    if scale == "ewma":
        return float(volatility_unit(df["close"].to_numpy(np.float64), target_std)[-1])
    step = INTERVAL_MS[check_interval(interval)]
    rf = range_features(df["high"].to_numpy(np.float64), df["low"].to_numpy(np.float64),
                        df["open_time"].to_numpy(np.int64), step)
    vol = har.volatility(rf[-1:], np.array([int(last_open_time) + step]))
    return float(as_unit(vol, target_std)[0])


def check_feature_config(cfg: FeatureConfig) -> None:
    """Raise ConfigError for a feature config that cannot work (before any heavy work)."""
    if cfg.seq_len < 1:
        raise ConfigError(f"window length must be >= 1, got {cfg.seq_len}.")
    if cfg.n_components < 1:
        raise ConfigError(f"n_components must be >= 1, got {cfg.n_components}.")
    if not (0 < cfg.train_frac < 1 and 0 < cfg.val_frac < 1 and cfg.train_frac + cfg.val_frac < 1):
        raise ConfigError(f"splits train {cfg.train_frac} / val {cfg.val_frac} must be in (0, 1) "
                          f"and leave room for a test split.")
