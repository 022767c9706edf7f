"""Predict the next candle from a trained V3 model, locally or from the Hugging Face Hub.

    from v3_predict import predict_next
    p = predict_next("BTCUSDT", "1h", model="v3_output/all_models")      # a folder of models
    p = predict_next("BTCUSDT", "1h", model="me/cpb-models")              # a Hub repo id
    p["predicted_close"], p["direction"], p["test"], p["baseline"]

`model` is a `.pt` file, a folder holding `v3_model_SYMBOL_INTERVAL.pt` (or a base_dir with
`all_models/`), or a Hub repo id. Without `candles`, the latest closed candles come from
Binance through step 2's download code; the features are computed by exactly the code that
built the training windows (`v3_data_processor.latest_window`), with the scaler and PCA
stored in the checkpoint. Every forecast carries the model's test metrics and the
persistence baseline on the same samples: read them before trusting a direction.

Command line: `python v3_predict.py --model-dir DIR` (or `--hub-repo ID`) predicts for every
model there and prints one table; `--coins`, `--timeframes`, `--json`, `--data-dir`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from v3_common import (INTERVAL_MS, CheckpointError, DownloadError, RetryableDownloadError,
                       StaleDataError, V3Error, check_interval, fmt_num, json_default, log,
                       normalize_symbol, pair_key, plural, setup_logging, text_table, utc_minute)
from v3_layout import MODEL_GLOB, MODEL_NAME_RE, RunLayout, model_filename
from v3_model_card import DEFAULT_FOLDER

# torch, pandas and the modules that import them (v3_trainer, v3_data_processor, v3_hub,
# v3_binance_data, v3_market_data, huggingface_hub) are imported inside the functions that
# use them, lazily on purpose: `python v3_predict.py --help`, or a mistyped flag, answers at
# once instead of after seconds of imports.
if TYPE_CHECKING:
    import pandas as pd

    from v3_checkpoint import LoadedModel

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
STALE_AFTER_INTERVALS = 2  # market data older than this many intervals is refused
NOTE_WIDTH = 48            # the table's note column (an error) is shortened to this
OFFLINE_HINT = ("Set V3_BINANCE_API_URLS to a Binance API base that works from this machine, "
                "or give the candles yourself: v3_predict.py --data-dir DIR (a folder of "
                "SYMBOL_INTERVAL.csv files, such as a run's data/), or predict_next(candles=...).")


def model_file(model: str | Path, symbol: str, interval: str) -> Path | None:
    """The local checkpoint for a pair under `model` (file, models folder or base_dir)."""
    p = Path(model)
    if p.is_file():
        return p
    for candidate in (p / model_filename(symbol, interval),
                      RunLayout(p).model_path(symbol, interval)):
        if candidate.is_file():
            return candidate
    return None


def load_model(model: str | Path, symbol: str, interval: str, *, folder: str = DEFAULT_FOLDER,
               token: str | None = None, **hub_kw) -> LoadedModel:
    """Load one pair's model from a local file/folder or a Hub repo id (weights_only=True).

    Raises CheckpointError when there is no model for the pair, the file is corrupt, or it
    was trained by an incompatible version of V3.
    """
    from v3_checkpoint import load_model_file  # lazy: torch (see the top)
    symbol, interval = normalize_symbol(symbol), check_interval(interval)
    path = model_file(model, symbol, interval)
    if path is not None:
        loaded = load_model_file(path)
    elif Path(model).exists() or not _REPO_ID.match(str(model)):
        raise CheckpointError(f"no model for {symbol} {interval} in {model}: expected "
                              f"{model_filename(symbol, interval)} there (train that pair "
                              f"first, or pass a Hub repo id such as 'me/cpb-models').")
    else:
        from v3_hub import load_model_from_hub  # lazy: torch and huggingface_hub
        loaded = load_model_from_hub(str(model), symbol, interval, folder=folder, token=token,
                                     **hub_kw)
    _check_compatible(loaded, symbol, interval)
    return loaded


def _check_compatible(m: LoadedModel, symbol: str, interval: str) -> None:
    from v3_data_processor import FEATURE_SET_VERSION  # lazy: pandas
    from v3_indicators import feature_names
    where = m.repo_id or m.path
    if (m.symbol, m.interval) != (symbol, interval):
        raise CheckpointError(f"{where} holds a model for {m.symbol} {m.interval}, not "
                              f"{symbol} {interval}.")
    version = m.checkpoint.get("feature_set_version")
    if version != FEATURE_SET_VERSION or m.feature_names != feature_names():
        raise CheckpointError(
            f"{where} was trained on indicator set v{version} ({len(m.feature_names)} columns); "
            f"this V3 computes v{FEATURE_SET_VERSION} ({len(feature_names())} columns). Retrain "
            f"the pair with this version (--retrain).")


def candle_cache_dir() -> Path:
    """Where downloaded candles are kept between predictions ($V3_CANDLE_CACHE, else
    ~/.cache/v3/candles): the next call only fetches the candles that closed since."""
    env = os.environ.get("V3_CANDLE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "v3" / "candles"


def fetch_candles(symbol: str, interval: str, n_candles: int, *, data_dir: str | Path | None = None,
                  api_urls: list[str] | str | None = None) -> pd.DataFrame:
    """The latest closed candles, through the same download code as step 2 (base URL
    fallbacks, rate limits, renames, 'delisted or halted' checks, incremental updates).
    When no Binance API base can be used: DownloadError with the fixes this command has."""
    from v3_binance_data import ApiUnavailableError, download_klines  # lazy: pandas
    from v3_market_data import latest_candles
    try:
        df = download_klines(symbol, interval, n_candles, api_urls=api_urls,
                             data_dir=data_dir or candle_cache_dir(),
                             unavailable_hint=OFFLINE_HINT)
    except ApiUnavailableError as e:  # its text names the pipeline's flags, not this command's
        log.debug("%s %s: %s", symbol, interval, e)
        raise ApiUnavailableError(f"{symbol} {interval}: no Binance API base can be used from "
                                  f"this machine (blocked, banned or unreachable). "
                                  f"{OFFLINE_HINT}") from e
    except RetryableDownloadError as e:  # the API or the archive kept failing
        raise RetryableDownloadError(f"{e} {OFFLINE_HINT}") from e
    return latest_candles(df, n_candles)


def predict_next(symbol: str, interval: str, *, model: str | Path | LoadedModel,
                 candles: pd.DataFrame | None = None, now_ms: int | None = None,
                 check_stale: bool | None = None, folder: str = DEFAULT_FOLDER,
                 token: str | None = None, api_urls: list[str] | str | None = None,
                 candle_dir: str | Path | None = None) -> dict:
    """The forecast for the candle after the last closed one, with the model's track record.

    `candles`: the history up to now in the kline layout (open, high, low, close, volume and
    open_time at least); without it the latest closed candles are downloaded (`api_urls`,
    default $V3_BINANCE_API_URLS or Binance's, kept in `candle_dir`). Candles still
    open at `now_ms` (default: now) are dropped. `check_stale` (default: only for downloaded
    candles) refuses data whose newest candle closed more than two intervals ago.
    Returns a dict: symbol, interval, open_time (ms, of the predicted candle) and its ISO
    form, last_open_time, last_close, predicted_close, predicted_return (simple, e.g. 0.001 =
    +0.1 %), predicted_log_return, direction ('up', 'down' or 'flat'), quantiles ({'0.05':
    close, ..., '0.95': close}), median_close (the 0.50 quantile), interval_80 and interval_90
    ([low, high] close; all four None for a model without a quantile head),
    interval_80_test_coverage (the share of test candles that closed inside the model's 80 %
    range: 0.8 when calibrated; None without one), test and baseline (the
    model's stored test metrics and the persistence baseline on the same samples), model
    (where it came from), trained_on (data range, source, synthetic).
    """
    import torch  # lazy (see the top)

    from v3_checkpoint import LoadedModel
    from v3_data_processor import latest_unit, latest_window
    from v3_har import HarFit
    symbol, interval = normalize_symbol(symbol), check_interval(interval)
    m = model if isinstance(model, LoadedModel) else load_model(model, symbol, interval,
                                                                folder=folder, token=token)
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    scale = m.model.config.quantile_scale if m.model.has_quantiles else "none"
    # the indicators' warm-up and window; the 'har' unit also reads a week of ranges
    need = max(m.warmup_candles + m.seq_len,
               int(m.checkpoint.get("har_history_candles") or 0) + 1 if scale == "har" else 0)
    if candles is None:
        candles = fetch_candles(symbol, interval, need + 2, data_dir=candle_dir, api_urls=api_urls)
        check_stale = True if check_stale is None else check_stale
    # the warm-up makes a short history give the training values; skip the rest of it
    candles = candles.iloc[-(need + 2):] if len(candles) > need + 2 else candles
    window, last_open, last_close = latest_window(
        candles, m.transform, seq_len=m.seq_len, interval=interval, now_ms=now_ms,
        name=f"{symbol} {interval}")
    if check_stale:
        _check_fresh(symbol, interval, last_open, now_ms)
    with torch.inference_mode():
        point, q = m.model.forward_with_quantiles(torch.from_numpy(window))
    # the quantile head's unit at the window's last candle, as in training
    unit = latest_unit(candles, last_open, m.target_std, scale=scale, interval=interval,
                       har=HarFit.from_dict(m.checkpoint["har"]) if scale == "har" else None,
                       name=f"{symbol} {interval}")
    q_log = None if q is None else [m.target_mean + m.target_std * unit * float(v) for v in q[0]]
    return _forecast(m, symbol, interval, last_open, last_close,
                     m.target_mean + m.target_std * float(point.reshape(-1)[0]), q_log)


def _check_fresh(symbol: str, interval: str, last_open: int, now_ms: int) -> None:
    step = INTERVAL_MS[interval]
    age = now_ms - (last_open + step)
    if age > STALE_AFTER_INTERVALS * step:
        raise StaleDataError(
            f"{symbol} {interval}: the newest closed candle closed {age / step:.1f} intervals "
            f"ago ({utc_minute(last_open + step)}); market data older than {STALE_AFTER_INTERVALS} "
            f"intervals is stale (delisted or halted pair, or a stuck feed). Fetch fresh "
            f"candles.")


def _forecast(m: LoadedModel, symbol: str, interval: str, last_open: int, last_close: float,
              log_ret: float, q_log: list[float] | None = None) -> dict:
    """predict_next's answer, from the model's log-return forecast (and its quantiles)."""
    step = INTERVAL_MS[interval]
    predicted = last_close * math.exp(log_ret)
    ck = m.checkpoint
    closes = None if q_log is None else {f"{lvl:.2f}": last_close * math.exp(v)
                                         for lvl, v in zip(m.quantiles, q_log)}
    return {
        **_intervals(closes),
        "symbol": symbol, "interval": interval,
        "open_time": last_open + step, "open_time_utc": utc_minute(last_open + step),
        "last_open_time": last_open, "last_close": last_close,
        "predicted_close": predicted, "predicted_return": math.expm1(log_ret),
        "predicted_log_return": log_ret,
        "direction": "up" if predicted > last_close else "down" if predicted < last_close else "flat",
        "interval_80_test_coverage": _test_coverage_80(ck.get("test")),
        "test": ck.get("test"), "baseline": ck.get("baseline"),
        "model": f"{m.repo_id}@{m.revision}" if m.repo_id else str(m.path),
        "trained_on": {"data_range": ck.get("data_range"), "source": ck.get("source"),
                       "synthetic": bool(ck.get("synthetic"))},
    }


def _intervals(closes: dict[str, float] | None) -> dict:
    """quantiles {level: close} and the central 80 % and 90 % intervals (low, high close);
    None for a model without a quantile head."""
    def central(lo: str, hi: str):
        return [closes[lo], closes[hi]] if closes and lo in closes and hi in closes else None
    return {"quantiles": closes, "median_close": (closes or {}).get("0.50"),
            "interval_80": central("0.10", "0.90"), "interval_90": central("0.05", "0.95")}


def _test_coverage_80(test: dict | None) -> float | None:
    """The share of test candles that closed inside the model's 80 % range (stored in the
    checkpoint with the test metrics), or None for a model without one."""
    cov = (((test or {}).get("interval") or {}).get("coverage") or {}).get("80")
    return None if cov is None else float(cov)


# ---------------------------------------------------------------------------------------
# Every model in a folder or a repo


def available_models(*, model_dir: str | Path | None = None, hub_repo: str | None = None,
                     folder: str = DEFAULT_FOLDER, token: str | None = None,
                     endpoint: str | None = None) -> list[tuple[str, str]]:
    """(symbol, interval) of every model in a local folder (or base_dir) or a Hub repo."""
    names = (_local_model_names(model_dir) if model_dir is not None
             else _hub_model_names(hub_repo, folder=folder, token=token, endpoint=endpoint))
    pairs = [(mt.group(1), mt.group(2)) for n in names if (mt := MODEL_NAME_RE.search(n))]
    return sorted(p for p in pairs if p[1] in INTERVAL_MS)


def _local_model_names(model_dir: str | Path) -> list[str]:
    d = Path(model_dir)
    layout = RunLayout(d)
    if layout.models_dir.is_dir():
        d = layout.models_dir
    if not d.is_dir():
        raise CheckpointError(f"{model_dir} is not a folder of models: pass --model-dir with "
                              f"a folder of {MODEL_GLOB} files or a base_dir holding "
                              f"{layout.models_dir.name}/ (or --hub-repo for a Hub repo).")
    return [p.name for p in d.glob(MODEL_GLOB)]


def _hub_model_names(hub_repo: str | None, *, folder: str, token: str | None,
                     endpoint: str | None) -> list[str]:
    from huggingface_hub import HfApi  # lazy: huggingface_hub and torch (see the top)
    from huggingface_hub.errors import HfHubHTTPError

    from v3_hub import hub_endpoint, transport_errors
    try:  # the repo's file list comes with its info ('siblings')
        info = HfApi(endpoint=hub_endpoint(endpoint), token=token).model_info(hub_repo)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        raise CheckpointError(f"cannot list the models in {hub_repo} (HTTP {status}): check "
                              f"the repo id; a private repo needs a token (HF_TOKEN).") from None
    except transport_errors() as e:
        raise DownloadError(f"the Hub did not answer while listing {hub_repo} "
                            f"({type(e).__name__}); check the connection and HF_ENDPOINT.") from None
    return [f.rfilename.split("/")[-1] for f in (info.siblings or [])
            if f.rfilename.startswith(f"{folder}/v3_model_")]


# ---------------------------------------------------------------------------------------
# The command line

TABLE_HEAD = ("pair", "next candle (UTC)", "last close", "point forecast",
              "median [80 % range]", "held on test %", "return %", "dir", "test MAPE %",
              "persist. MAPE %", "test dir %", "note")
TABLE_FOOTER = (
    "point forecast: the model's forecast of the next close (return % and dir follow it).\n"
    "median [80 % range]: the middle of its forecast distribution, and the range the next close "
    "should fall in 4 times out of 5;\nheld on test %: how many of the test candles closed "
    "inside such a range (80 % when it is calibrated).\n"
    "Metrics are the model's test split; persistence = 'next close = last close' on the same "
    "samples. Not financial advice.")


def format_table(rows: list[dict]) -> str:
    """One line per forecast (or failed pair): no padding after the last column, the note
    shortened to NOTE_WIDTH characters at a word boundary, no '-0.0'."""
    lines = []
    for r in rows:
        t = r.get("test") or {}
        b = (r.get("baseline") or {}).get("persistence") or {}
        ret, cov = r.get("predicted_return"), r.get("interval_80_test_coverage")
        note = r.get("note") or r.get("error") or (
            "SYNTHETIC" if (r.get("trained_on") or {}).get("synthetic") else "")
        lines.append((pair_key(r["symbol"], r["interval"]), r.get("open_time_utc") or "-",
                      fmt_num(r.get("last_close"), ".6g"), fmt_num(r.get("predicted_close"), ".6g"),
                      _range(r.get("median_close"), r.get("interval_80")),
                      fmt_num(None if cov is None else 100 * cov, ".1f"),
                      fmt_num(None if ret is None else 100 * ret, "+.3f"), r.get("direction", "-"),
                      fmt_num(t.get("mape"), ".3f"), fmt_num(b.get("mape"), ".3f"),
                      fmt_num(t.get("directional_accuracy"), ".1f"), note))
    return text_table(TABLE_HEAD, lines, max_width={len(TABLE_HEAD) - 1: NOTE_WIDTH})


def _range(median: float | None, iv: list[float] | None) -> str:
    """'35125 [34977.6 .. 35248.9]': the median and the 80 % range ('-' without a range)."""
    if not iv:
        return "-"
    return f"{fmt_num(median, '.6g')} [{fmt_num(iv[0], '.6g')} .. {fmt_num(iv[1], '.6g')}]"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="v3_predict.py", description=(
        "Forecast the next candle for every trained V3 model in a folder or a Hub repo, next "
        "to each model's test metrics and the persistence baseline."))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a folder of v3_model_*.pt files (or a base_dir)")
    src.add_argument("--hub-repo", help="a Hub model repo id, e.g. me/cpb-models")
    ap.add_argument("--hf-folder", default=DEFAULT_FOLDER,
                    help=f"folder in the Hub repo (default {DEFAULT_FOLDER})")
    ap.add_argument("--coins", nargs="+", metavar="SYMBOL", help="only these symbols")
    ap.add_argument("--timeframes", nargs="+", metavar="TF", help="only these timeframes")
    ap.add_argument("--data-dir", help="read candles from SYMBOL_INTERVAL.csv[.gz] files here "
                                       "instead of downloading (no staleness check)")
    ap.add_argument("--json", action="store_true", help="machine-readable output (one JSON list)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before any heavy import: --help is instant
    setup_logging("WARNING" if args.json else "INFO")
    try:
        pairs = _chosen_pairs(args)
    except V3Error as e:
        log.error("%s: %s", type(e).__name__, e)
        return 2
    if not pairs:
        return 1
    rows = _predict_rows(args, pairs)
    if args.json:
        print(json.dumps(rows, indent=2, default=json_default))
    else:
        print(format_table(rows))
        print(TABLE_FOOTER)
    return 0 if any("error" not in r for r in rows) else 1


def _split(items: list[str] | None) -> list[str]:
    """`--coins a,b c` -> ['a', 'b', 'c']."""
    return [x for item in items or [] for x in item.replace(",", " ").split()]


def _chosen_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The models there that --coins / --timeframes pick; when none, says which exist."""
    where = args.model_dir or args.hub_repo
    found = available_models(model_dir=args.model_dir, hub_repo=args.hub_repo,
                             folder=args.hf_folder)
    coins = {normalize_symbol(c) for c in _split(args.coins)}
    tfs = {check_interval(t) for t in _split(args.timeframes)}
    pairs = [p for p in found if (not coins or p[0] in coins) and (not tfs or p[1] in tfs)]
    if not found:
        log.error("no models in %s (%s): train first (python v3_colab_training.py), or point "
                  "--model-dir at a folder of models or a base_dir (or --hub-repo at a Hub repo).",
                  where, MODEL_GLOB)
    elif not pairs:
        wanted = " ".join([*sorted(coins), *sorted(tfs, key=INTERVAL_MS.get)])
        log.error("no model for %s in %s; it has %s: %s. Choose --coins / --timeframes among "
                  "these, or train that pair first.", wanted, where,
                  plural(len(found), "model"), ", ".join(pair_key(*p) for p in found))
    return pairs


def _predict_rows(args: argparse.Namespace, pairs: list[tuple[str, str]]) -> list[dict]:
    """Every pair's row. When the first pair cannot get candles from Binance (no API base
    answers, or it kept failing), the others are not tried: each would wait through the
    same retries (~45 s a pair) to fail the same way."""
    rows: list[dict] = []
    for n, (symbol, interval) in enumerate(pairs):
        row, err = _predict_row(args, symbol, interval)
        rows.append(row)
        if _unreachable(err) and n + 1 < len(pairs):
            rest = pairs[n + 1:]
            log.error("%s %s: no candles from Binance; not trying the other %s (each would "
                      "fail the same way after the same retries). Give the candles yourself: "
                      "--data-dir DIR (a folder of SYMBOL_INTERVAL.csv files, such as a run's "
                      "data/).", symbol, interval, plural(len(rest), "pair"))
            rows += [{"symbol": s, "interval": i, "note": "not tried: no candles from Binance",
                      "error": f"not tried: {symbol} {interval} got no candles from Binance "
                               f"({type(err).__name__}). {OFFLINE_HINT}"} for s, i in rest]
            break
    return rows


def _unreachable(err: BaseException | None) -> bool:
    """The error says Binance cannot serve candles here now (no base answers, or retries
    ran out), not something about this one pair."""
    if err is None:
        return False
    from v3_binance_client import ApiUnavailableError  # lazy: loaded by the download already
    return isinstance(err, (ApiUnavailableError, RetryableDownloadError))


def _predict_row(args: argparse.Namespace, symbol: str, interval: str
                 ) -> tuple[dict, V3Error | None]:
    """One pair's forecast, or {'symbol', 'interval', 'error', 'note'} and the error when it
    fails alone."""
    try:
        candles = None
        if args.data_dir:
            from v3_market_data import find_csv, read_klines  # lazy: pandas (see the top)
            candles = read_klines(find_csv(args.data_dir, symbol, interval))
        return predict_next(symbol, interval, model=args.model_dir or args.hub_repo,
                            candles=candles, folder=args.hf_folder), None
    except V3Error as e:
        log.warning("%s %s: %s", symbol, interval, e)
        text = str(e).removeprefix(f"{symbol} {interval}: ")  # the table names the pair
        note = ("no candles from Binance: use --data-dir DIR" if _unreachable(e)
                else f"{type(e).__name__}: {text}")
        return {"symbol": symbol, "interval": interval, "error": f"{type(e).__name__}: {e}",
                "note": note}, e


if __name__ == "__main__":
    sys.exit(main())
