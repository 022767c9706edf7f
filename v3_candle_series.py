"""Checks of one pair's candle series for step 2: valid candles, regular spacing, gaps with
their times, and merging saved and new candles (one row per open time)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from v3_common import INTERVAL_MS, DataValidationError, log, plural, utc_minute
from v3_data_processor import validate_klines


def find_gaps(df: pd.DataFrame, interval: str) -> list[dict]:
    """Every hole in a sorted series: {'after', 'before' (ISO times of the candles either
    side), 'after_open_time', 'before_open_time', 'missing' (candles)}."""
    step = INTERVAL_MS[interval]
    t = df["open_time"].to_numpy(dtype=np.int64)
    out = []
    for i in np.flatnonzero(np.diff(t) > step):
        a, b = int(t[i]), int(t[i + 1])
        out.append({"after": utc_minute(a), "before": utc_minute(b), "after_open_time": a,
                    "before_open_time": b, "missing": (b - a) // step - 1})
    return out


def check_series(df: pd.DataFrame, interval: str, name: str, *, first_line: int | None = None
                 ) -> tuple[pd.DataFrame, list[dict]]:
    """Validate a candle series (raises DataValidationError) and return it with its gaps.

    Checks: required columns numeric and finite, open times unique and sorted, OHLC
    consistent (v3_data_processor.validate_klines), and every spacing a whole number of
    intervals. Gaps (Binance outages, delisting pauses) are returned, not raised.
    `first_line`: the file line of the frame's first row (2 for a CSV with a header), so
    that errors name file lines instead of frame positions.
    """
    out = validate_klines(df, name, first_line=first_line)
    step = INTERVAL_MS[interval]
    d = np.diff(out["open_time"].to_numpy(dtype=np.int64))
    bad = np.flatnonzero(d % step != 0)
    if len(bad):
        i = int(bad[0])
        where = (f" (lines {i + first_line} and {i + 1 + first_line})"
                 if first_line is not None else "")
        raise DataValidationError(
            f"{name}: irregular spacing: candles at {utc_minute(out['open_time'].iloc[i])} and "
            f"{utc_minute(out['open_time'].iloc[i + 1])}{where} are {d[i] / 1000:g} s apart, not "
            f"a multiple of {interval} ({plural(len(bad), 'such place')}). Re-download the pair "
            f"(--refresh) or fix the file.")
    return out, find_gaps(out, interval)


def log_gaps(name: str, gaps: list[dict], *, limit: int = 3) -> None:
    if not gaps:
        return
    shown = "; ".join(f"{g['after']} -> {g['before']} ({g['missing']} missing)"
                      for g in gaps[:limit])
    more = f"; +{len(gaps) - limit} more" if len(gaps) > limit else ""
    log.warning("%s: %s in the series (no candles from Binance): %s%s", name,
                plural(len(gaps), "gap"), shown, more)


def merge_klines(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """Old and new candles together, one row per open time (the newer copy wins), sorted."""
    frames = [f for f in (old, new) if f is not None and len(f)]
    if not frames:
        return new.iloc[:0]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df = df.drop_duplicates("open_time", keep="last").sort_values("open_time")
    return df.reset_index(drop=True)
