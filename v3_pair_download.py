"""Step 2's outcome for one pair (`PairDownload`), its closing table, and the offline sources
'csv' and 'synthetic' (`load_offline_pair`), which write data/SYMBOL_INTERVAL.csv only when
its bytes change. The Binance sources are v3_binance_data's."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from v3_candle_series import check_series, log_gaps
from v3_common import (ConfigError, InsufficientDataError, V3Error, log, pair_key, plural,
                       text_table, utc_minute)
from v3_market_data import (data_path, find_csv, latest_candles, read_klines, synthetic_klines,
                            write_klines)

OFFLINE_SOURCES = ("csv", "synthetic")
STATUS_WIDTH = 78  # characters of the table's status column ('failed: ' and the reason)


@dataclass
class PairDownload:
    """The outcome of one (symbol, interval): a file written (or left as it was), or an error."""
    requested_symbol: str
    symbol: str
    interval: str
    error: V3Error | None = None
    rows: int = 0
    new_rows: int = 0
    first_open_time: int | None = None
    last_open_time: int | None = None
    source: str = "binance"             # 'binance', 'binance-archive', 'csv' or 'synthetic'
    sources_used: list[str] = field(default_factory=list)
    api_url: str | None = None
    gaps: list[dict] = field(default_factory=list)
    path: Path | None = None
    unchanged: bool = False             # the file already held exactly these candles

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def key(self) -> str:
        return pair_key(self.symbol, self.interval)

    @property
    def renamed(self) -> bool:
        return self.symbol != self.requested_symbol

    def info(self) -> dict:
        """The `data` block of the results JSON."""
        return {"source": self.source, "synthetic": self.source == "synthetic", "rows": self.rows,
                "new_rows": self.new_rows, "unchanged": self.unchanged,
                "first_open_time": self.first_open_time, "last_open_time": self.last_open_time,
                "first": utc_minute(self.first_open_time), "last": utc_minute(self.last_open_time),
                "sources_used": self.sources_used, "api_url": self.api_url,
                "n_gaps": len(self.gaps), "gaps": self.gaps[:20]}


# ---------------------------------------------------------------------------------------
# The offline sources


def load_offline_pair(symbol: str, interval: str, *, source: str, n_candles: int,
                      data_dir: str | Path, csv_dir: str | Path | None = None,
                      min_candles: int | None = None) -> PairDownload:
    """Sources 'csv' (csv_dir/SYMBOL_INTERVAL.csv[.gz]) and 'synthetic': the pair's latest
    `n_candles`, validated, written to data_dir/SYMBOL_INTERVAL.csv only when its bytes change
    (else `unchanged` is set and new_rows is 0, and the file keeps its mtime).

    `min_candles` (e.g. FeatureConfig.min_candles()): fewer candles fail the pair here, with
    a fix that fits the source (a longer file, or a larger --candles). Never raises a V3Error
    for the pair: it is recorded on the PairDownload, as BinanceDownloader does. Raises
    ConfigError for a source it does not serve.
    """
    if source not in OFFLINE_SOURCES:
        raise ConfigError(f"source {source!r}: load_offline_pair serves {OFFLINE_SOURCES}.")
    if source == "csv" and csv_dir is None:
        raise ConfigError("source 'csv' needs the folder of SYMBOL_INTERVAL.csv files "
                          "(--data-dir).")
    out = PairDownload(symbol, symbol, interval, source=source, sources_used=[source])
    name = f"{symbol} {interval}"
    try:
        df = _offline_candles(symbol, interval, source, n_candles, csv_dir, min_candles)
        df, gaps = check_series(df, interval, name)
        path = data_path(data_dir, symbol, interval)
        wrote = write_klines(df, path)
    except (V3Error, OSError) as e:
        out.error = e if isinstance(e, V3Error) else ConfigError(
            f"{name}: cannot write the candles ({type(e).__name__}: {e}).")
        return out
    log_gaps(name, gaps)
    out.rows, out.new_rows, out.unchanged = len(df), len(df) if wrote else 0, not wrote
    out.first_open_time = int(df["open_time"].iloc[0])
    out.last_open_time = int(df["open_time"].iloc[-1])
    out.gaps, out.path = gaps, path
    return out


def _offline_candles(symbol: str, interval: str, source: str, n_candles: int,
                     csv_dir: str | Path | None, min_candles: int | None) -> pd.DataFrame:
    """The latest `n_candles` of the source, re-indexed; InsufficientDataError below
    `min_candles` with the fix that fits."""
    name = f"{symbol} {interval}"
    need = min_candles or 0
    if source == "synthetic":
        if n_candles < need:
            raise InsufficientDataError(
                f"{name}: --candles {n_candles} is too few synthetic candles; the indicator "
                f"warm-up, the window and the splits need >= {need}. Use --candles {need} or more.")
        return synthetic_klines(symbol, interval, n_candles)
    src = find_csv(csv_dir, symbol, interval)
    full = check_series(read_klines(src), interval, str(src), first_line=2)[0]
    df = latest_candles(full, n_candles)
    if len(full) < need:
        lines = f" (lines 2-{len(full) + 1})" if len(full) else ""
        raise InsufficientDataError(
            f"{src}: {plural(len(full), 'candle')}{lines}, and {name} needs >= {need} (the "
            f"indicator warm-up, the window and the splits). Give a longer file: at least "
            f"{need} {interval} candles.")
    if len(df) < need:
        raise InsufficientDataError(
            f"{name}: --candles {n_candles} keeps too few of the {len(full)} candles in {src}; "
            f"the indicator warm-up, the window and the splits need >= {need}. Use --candles "
            f"{need} or more.")
    if len(full) < n_candles:
        log.warning("%s: %s has %s, fewer than the %d asked for (--candles); using them all",
                    name, src.name, plural(len(full), "candle"), n_candles)
    return df


# ---------------------------------------------------------------------------------------
# The closing table


def format_download_table(outcomes: list[PairDownload]) -> str:
    """Step 2's closing table: pair, requested symbol (if renamed), rows, first and last
    candle, source used and status, one line per pair."""
    head = ("pair", "requested", "rows", "first candle", "last candle", "source", "status")
    rows = [(r.key, r.requested_symbol if r.renamed else "-", r.rows if r.ok else "-",
             utc_minute(r.first_open_time) or "-", utc_minute(r.last_open_time) or "-",
             " + ".join(r.sources_used) or r.source, _status(r)) for r in outcomes]
    return text_table(head, rows, max_width={6: STATUS_WIDTH})


def _status(r: PairDownload) -> str:
    """'ok, +5 new', 'ok, up to date' (Binance had nothing newer), 'ok, unchanged' (an
    offline source gave the same candles again), with the gaps; or 'failed: <reason>'."""
    if not r.ok:
        return "failed: " + _reason(str(r.error))
    if r.new_rows:
        status = f"ok, +{r.new_rows} new"
    else:
        status = "ok, unchanged" if r.source in OFFLINE_SOURCES else "ok, up to date"
    return status + (f", {plural(len(r.gaps), 'gap')}" if r.gaps else "")


def _reason(msg: str) -> str:
    """A failure message on one line, without its 'SYMBOL interval: ' prefix; a file's path
    prefix is cut to the file's name."""
    head, sep, rest = msg.partition(": ")
    if sep and head.replace(" ", "").isalnum() and head.split()[0].isupper():
        msg = rest
    elif sep and ("/" in head or "\\" in head) and " " not in head:
        msg = f"{Path(head).name}: {rest}"
    return " ".join(msg.split())
