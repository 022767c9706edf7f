"""Binance's bulk kline archive (data.binance.vision): monthly and daily zips, each checked
against its sha256 `.CHECKSUM`, with times normalised to milliseconds.

Layout (Binance's public-data documentation), `period` being YYYY-MM (monthly) or YYYY-MM-DD (daily):

    {base}/data/spot/monthly/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM}.zip
    {base}/data/spot/daily/klines/{SYMBOL}/{interval}/{SYMBOL}-{interval}-{YYYY-MM-DD}.zip
    ... and the same name + '.CHECKSUM' beside each: "<sha256 hex>  <file name>"

A monthly file appears after its month ends and a daily one the next day, so the archive
ends with yesterday's candles at best; the current month comes from daily files. From
2025-01-01 the spot files carry times in microseconds (milliseconds before).

This module plans which files cover a time range, checks and parses them. The HTTP GET
(with retries and backoff) is the caller's, passed in as `get(url) -> bytes | None`
(None for a file that does not exist): see v3_binance_client.BinanceHttp.archive_get.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import zipfile
from typing import Callable

import numpy as np
import pandas as pd

from v3_common import INTERVAL_MS, KLINE_COLUMNS, DownloadError, log

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
DAY_MS = 86_400_000
# Times above this are microseconds: 1e14 ms would be the year 5138, 1e14 us is 1973.
MICROSECOND_THRESHOLD = 10**14
# With nothing found yet, give up after this many missing months in a row (delisted pair).
MAX_EMPTY_MONTHS = 3


class ArchiveChecksumError(DownloadError):
    """An archive file does not match its .CHECKSUM (or has none): it is refused."""


class ArchiveEmptyError(DownloadError):
    """The archive has no kline files for the pair and time range asked for."""


def archive_url_from_env(url: str | None = None) -> str:
    """`url` if given, else $V3_BINANCE_ARCHIVE_URL, else https://data.binance.vision."""
    return (url or os.environ.get("V3_BINANCE_ARCHIVE_URL") or DEFAULT_ARCHIVE_URL).rstrip("/")


def file_name(symbol: str, interval: str, period: str) -> str:
    return f"{symbol}-{interval}-{period}.zip"


def file_url(base_url: str, symbol: str, interval: str, period: str) -> str:
    kind = "daily" if len(period) == 10 else "monthly"
    return (f"{base_url.rstrip('/')}/data/spot/{kind}/klines/{symbol}/{interval}/"
            f"{file_name(symbol, interval, period)}")


def verify_checksum(data: bytes, checksum_text: str | None, name: str) -> None:
    """Raise ArchiveChecksumError unless sha256(data) is the hash in `checksum_text`."""
    if not checksum_text or not checksum_text.split():
        raise ArchiveChecksumError(f"{name}: the archive has no {name}.CHECKSUM; the file is "
                                   f"refused unverified. Try again later or use --source binance.")
    expected = checksum_text.split()[0].lower()
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ArchiveChecksumError(
            f"{name}: checksum mismatch (sha256 {got[:16]}..., {name}.CHECKSUM says "
            f"{expected[:16]}...); the file is refused. It was corrupted on the server or in "
            f"transit: try again later, or use --source binance.")


def to_milliseconds(t: np.ndarray) -> np.ndarray:
    """Archive times (ms before 2025, us from 2025-01-01) -> ms, element by element."""
    t = np.asarray(t, dtype=np.int64)
    return np.where(t >= MICROSECOND_THRESHOLD, t // 1000, t)


def read_archive_zip(data: bytes, name: str) -> pd.DataFrame:
    """One archive zip (a CSV of 12-field kline rows, no header) -> the kline layout in ms."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [m for m in z.namelist() if m.endswith(".csv")]
            if not members:
                raise DownloadError(f"{name}: the zip holds no .csv file ({z.namelist()[:3]}).")
            raw = z.read(members[0])
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{name}: not a readable zip ({e}); try again later.") from e
    if not raw.strip():
        return pd.DataFrame(columns=KLINE_COLUMNS)
    first = raw.split(b"\n", 1)[0]
    header = 0 if first[:1].isalpha() else None  # some archive files carry a header row
    try:
        df = pd.read_csv(io.BytesIO(raw), header=header, usecols=range(11))
    except (ValueError, pd.errors.ParserError) as e:
        raise DownloadError(f"{name}: not a kline CSV ({e}).") from e
    df.columns = KLINE_COLUMNS
    df["open_time"] = to_milliseconds(df["open_time"].to_numpy())
    df["close_time"] = to_milliseconds(df["close_time"].to_numpy())
    for c in KLINE_COLUMNS:
        if c not in ("open_time", "close_time", "trades"):
            df[c] = df[c].astype(np.float64)
    df["trades"] = df["trades"].astype(np.int64)
    return df


def _month_start(ms: int) -> dt.datetime:
    d = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _prev_month(m: dt.datetime) -> dt.datetime:
    return (m - dt.timedelta(days=1)).replace(day=1)


def _next_month(m: dt.datetime) -> dt.datetime:
    return (m + dt.timedelta(days=32)).replace(day=1)


def _ms(d: dt.datetime) -> int:
    return int(d.timestamp() * 1000)


def _days(first_ms: int, last_ms: int) -> list[str]:
    """YYYY-MM-DD of every UTC day from the day of first_ms to the day of last_ms."""
    out = []
    d = first_ms - first_ms % DAY_MS
    while d <= last_ms:
        out.append(dt.datetime.fromtimestamp(d / 1000, dt.timezone.utc).strftime("%Y-%m-%d"))
        d += DAY_MS
    return out


def fetch_archive_klines(symbol: str, interval: str, *, start_ms: int, end_ms: int, now_ms: int,
                         base_url: str, get: Callable[[str], bytes | None]) -> pd.DataFrame:
    """Closed candles of `symbol` with open times in [start_ms, end_ms] from the archive.

    Walks back month by month from end_ms: a month before the current one comes from its
    monthly file (or daily files while that is not yet published), the current month from
    the daily files up to yesterday. Stops at the first missing month once data was found
    (the pair's listing). Every file is verified against its .CHECKSUM before use.
    Raises DownloadError when the archive has nothing for the range.
    """
    if interval not in INTERVAL_MS:
        raise DownloadError(f"{symbol}: the archive has no interval {interval!r}.")
    today_ms = now_ms - now_ms % DAY_MS
    this_month = _month_start(now_ms)
    frames: list[pd.DataFrame] = []
    empty_months = 0
    month = _month_start(min(end_ms, now_ms))
    while _ms(_next_month(month)) > start_ms:
        lo, hi = max(start_ms, _ms(month)), min(end_ms, _ms(_next_month(month)) - 1)
        if month >= this_month:
            got = _fetch_days(symbol, interval, lo, min(hi, today_ms - 1), base_url, get)
        else:
            got = _fetch_file(symbol, interval, month.strftime("%Y-%m"), base_url, get)
            if got is None and month == _prev_month(this_month):
                got = _fetch_days(symbol, interval, lo, hi, base_url, get)  # not yet published
        if got is None or got.empty:
            if frames:
                break  # before the pair's first month: its history starts here
            empty_months += 1
            if empty_months >= MAX_EMPTY_MONTHS and month < this_month:
                break
        else:
            frames.append(got)
            empty_months = 0
        month = _prev_month(month)
    if not frames:
        raise ArchiveEmptyError(
            f"{symbol} {interval}: data.binance.vision ({base_url}) has no kline files for "
            f"{_day(start_ms)} .. {_day(end_ms)}: the pair is unknown there, or delisted or "
            f"halted.")
    df = pd.concat(frames[::-1], ignore_index=True)
    df = df[(df["open_time"] >= start_ms) & (df["open_time"] <= end_ms)]
    df = df[df["close_time"] < now_ms]
    return df.drop_duplicates("open_time").sort_values("open_time").reset_index(drop=True)


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def _fetch_days(symbol: str, interval: str, lo_ms: int, hi_ms: int, base_url: str,
                get: Callable[[str], bytes | None]) -> pd.DataFrame | None:
    """The daily files for the days of [lo_ms, hi_ms]; a missing day is skipped (a gap, or
    yesterday's file not yet published)."""
    if hi_ms < lo_ms:
        return None
    frames = []
    for day in _days(lo_ms, hi_ms):
        got = _fetch_file(symbol, interval, day, base_url, get)
        if got is None:
            log.debug("%s %s: no daily archive file for %s", symbol, interval, day)
        elif not got.empty:
            frames.append(got)
    return pd.concat(frames, ignore_index=True) if frames else None


def _fetch_file(symbol: str, interval: str, period: str, base_url: str,
                get: Callable[[str], bytes | None]) -> pd.DataFrame | None:
    """One verified archive file as klines, or None when it does not exist. A checksum
    mismatch is fetched once more before the file is refused."""
    url = file_url(base_url, symbol, interval, period)
    name = file_name(symbol, interval, period)
    data = get(url)
    if data is None:
        return None
    checksum = get(url + ".CHECKSUM")
    text = checksum.decode("utf-8", "replace") if checksum is not None else None
    try:
        verify_checksum(data, text, name)
    except ArchiveChecksumError:
        if text is None:
            raise
        log.warning("%s: checksum mismatch; downloading it once more", name)
        data = get(url) or b""
        verify_checksum(data, text, name)
    return read_archive_zip(data, name)
