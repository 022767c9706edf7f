"""MERGE-TEMP: helper B moves this into v3_binance_data.load_offline_pair."""
from v3_binance_data import PairDownload, check_series, log_gaps
from v3_common import ConfigError, V3Error
from v3_market_data import data_path, find_csv, read_klines, synthetic_klines, write_klines


def load_offline_pair(symbol, interval, *, source, n_candles, data_dir, csv_dir=None, min_candles=None):
    out = PairDownload(symbol, symbol, interval, source=source, sources_used=[source])
    name = f"{symbol} {interval}"
    try:
        if source == "synthetic":
            df = synthetic_klines(symbol, interval, n_candles)
        else:
            src = find_csv(csv_dir, symbol, interval)
            df = check_series(read_klines(src), interval, str(src))[0].tail(n_candles)
        df, gaps = check_series(df.reset_index(drop=True), interval, name)
        path = data_path(data_dir, symbol, interval)
        write_klines(df, path)
    except (V3Error, OSError) as e:
        out.error = e if isinstance(e, V3Error) else ConfigError(
            f"{name}: cannot write the candles ({type(e).__name__}: {e}).")
        return out
    log_gaps(name, gaps)
    out.rows = out.new_rows = len(df)
    out.first_open_time = int(df["open_time"].iloc[0])
    out.last_open_time = int(df["open_time"].iloc[-1])
    out.gaps, out.path = gaps, path
    return out
