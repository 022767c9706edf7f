"""Step 2's Binance source: the latest N closed candles per pair, through python-binance.

Pages backwards by 1,000 candles (`GET /api/v3/klines` with `endTime`), drops the candle that
is still forming (its close time is not yet past), and returns the kline layout of
v3_market_data. Facts about the API are in REFERENCE.md sections 1-2.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from v3_common import KLINE_COLUMNS, DownloadError, log

DEFAULT_API_URLS = ["https://api.binance.com/api", "https://data-api.binance.vision/api"]
PAGE_LIMIT = 1000


def make_client(api_url: str, *, timeout: float = 10.0):
    """A python-binance Client aimed at `api_url` (no ping in the constructor)."""
    import warnings
    with warnings.catch_warnings():  # `import binance` warns about websockets internals
        warnings.simplefilter("ignore", DeprecationWarning)
        from binance.client import Client
    client = Client(ping=False, requests_params={"timeout": timeout})
    client.API_URL = api_url.rstrip("/")
    return client


def klines_to_frame(rows: list) -> pd.DataFrame:
    """Binance's 12-field kline rows (strings for prices) -> the kline layout."""
    if not rows:
        return pd.DataFrame(columns=KLINE_COLUMNS)
    a = pd.DataFrame([r[:11] for r in rows], columns=KLINE_COLUMNS)
    for c in ("open_time", "close_time", "trades"):
        a[c] = a[c].astype(np.int64)
    for c in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base",
              "taker_buy_quote"):
        a[c] = a[c].astype(np.float64)
    return a


def download_klines(symbol: str, interval: str, n_candles: int, *, client=None,
                    api_url: str = DEFAULT_API_URLS[0], now_ms: int | None = None) -> pd.DataFrame:
    """The latest `n_candles` closed candles of `symbol`, oldest first."""
    from binance.exceptions import BinanceAPIException
    from requests.exceptions import RequestException

    client = client or make_client(api_url)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    frames: list[pd.DataFrame] = []
    have = 0
    end_ms = None
    while have < n_candles:
        params = {"symbol": symbol, "interval": interval, "limit": PAGE_LIMIT}
        if end_ms is not None:
            params["endTime"] = end_ms
        try:
            rows = client.get_klines(**params)
        except BinanceAPIException as e:
            if e.code == -1121:
                raise DownloadError(f"{symbol}: invalid symbol (Binance says {e.message!r}).") from e
            raise DownloadError(f"{symbol} {interval}: Binance answered HTTP {e.status_code} "
                                f"({e.message}).") from e
        except RequestException as e:
            raise DownloadError(f"{symbol} {interval}: cannot reach {client.API_URL} "
                                f"({type(e).__name__}).") from e
        page = klines_to_frame(rows)
        page = page[page["close_time"] < now_ms]  # the newest candle is still forming
        if page.empty:
            break
        frames.append(page)
        have += len(page)
        end_ms = int(page["open_time"].iloc[0]) - 1
        if len(rows) < PAGE_LIMIT:
            break  # the start of the pair's history
    if not frames:
        raise DownloadError(f"{symbol} {interval}: Binance returned no closed candles.")
    df = pd.concat(frames[::-1], ignore_index=True)
    df = df.drop_duplicates("open_time").sort_values("open_time").tail(n_candles)
    if len(df) < n_candles:
        log.warning("%s %s: only %d closed candles exist (asked for %d)",
                    symbol, interval, len(df), n_candles)
    return df.reset_index(drop=True)
