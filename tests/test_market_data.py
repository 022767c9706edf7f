import time

import numpy as np
import pandas as pd
import pytest

from v3_common import INTERVAL_MS, KLINE_COLUMNS, ConfigError
from v3_data_processor import validate_klines
from v3_market_data import find_csv, read_klines, synthetic_klines, write_klines


def test_synthetic_is_deterministic_and_consistent():
    a = synthetic_klines("BTCUSDT", "15m", 3000)
    b = synthetic_klines("BTCUSDT", "15m", 3000)
    pd.testing.assert_frame_equal(a, b)
    assert not synthetic_klines("ETHUSDT", "15m", 3000)["close"].equals(a["close"])
    assert list(a.columns) == KLINE_COLUMNS
    validate_klines(a)  # OHLC consistent, sorted, unique, positive
    assert (np.diff(a.open_time) == INTERVAL_MS["15m"]).all()
    assert (a.close_time == a.open_time + INTERVAL_MS["15m"] - 1).all()
    assert (a.taker_buy_base <= a.volume).all()


def test_synthetic_looks_like_a_market():
    df = synthetic_klines("BTCUSDT", "1h", 20000)
    r = np.diff(np.log(df.close.to_numpy()))
    kurt = ((r - r.mean()) ** 4).mean() / r.var() ** 2
    assert kurt > 4  # heavy tails (a normal has 3)
    sq = r**2 - (r**2).mean()
    acf_sq = (sq[1:] * sq[:-1]).mean() / sq.var()
    assert acf_sq > 0.05  # volatility clusters
    acf = ((r[1:] - r.mean()) * (r[:-1] - r.mean())).mean() / r.var()
    assert abs(acf) < 0.05  # but no predictable direction
    vol_move = np.corrcoef(np.abs(r), df.volume.to_numpy()[1:])[0, 1]
    assert vol_move > 0.2  # volume rises with the move


def test_write_read_round_trip(tmp_path):
    df = synthetic_klines("SOLUSDT", "1h", 50)
    write_klines(df, tmp_path / "SOLUSDT_1h.csv")
    back = read_klines(tmp_path / "SOLUSDT_1h.csv")
    assert back.open_time.dtype == np.int64
    np.testing.assert_allclose(back.close, df.close, rtol=1e-11)
    assert (back.open_time == df.open_time).all()


def test_optional_columns_may_be_missing(tmp_path):
    df = synthetic_klines("SOLUSDT", "1h", 10)[["open_time", "open", "high", "low", "close", "volume"]]
    df.to_csv(tmp_path / "SOLUSDT_1h.csv.gz", index=False)
    back = read_klines(find_csv(tmp_path, "SOLUSDT", "1h"))
    assert list(back.columns) == KLINE_COLUMNS and back.trades.isna().all()


def test_find_csv_names_the_expected_files(tmp_path):
    with pytest.raises(ConfigError, match="expected BTCUSDT_1h.csv or BTCUSDT_1h.csv.gz"):
        find_csv(tmp_path, "BTCUSDT", "1h")


def test_write_klines_writes_only_when_the_bytes_change(tmp_path):
    """Issue 12, item 6: re-runs rewrote identical files; an unchanged file keeps its mtime."""
    path = tmp_path / "BTCUSDT_1h.csv"
    df = synthetic_klines("BTCUSDT", "1h", 300)
    assert write_klines(df, path) is True
    mtime = path.stat().st_mtime_ns
    time.sleep(0.02)
    assert write_klines(df.copy(), path) is False
    assert path.stat().st_mtime_ns == mtime and not list(tmp_path.glob(".*.tmp"))
    changed = df.copy()
    changed.loc[5, "volume"] += 1.0
    assert write_klines(changed, path) is True
    assert read_klines(path)["volume"].iloc[5] == pytest.approx(changed["volume"].iloc[5])
