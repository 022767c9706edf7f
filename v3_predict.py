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
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from v3_common import (INTERVAL_MS, CheckpointError, DownloadError, StaleDataError, V3Error,
                       check_interval, json_default, log, normalize_symbol, pair_key,
                       setup_logging, utc_minute)
from v3_data_processor import FEATURE_SET_VERSION, feature_names, latest_window
from v3_hub import DEFAULT_FOLDER
from v3_trainer import LoadedModel

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
STALE_AFTER_INTERVALS = 2  # market data older than this many intervals is refused


def model_file(model: str | Path, symbol: str, interval: str) -> Path | None:
    """The local checkpoint for a pair under `model` (file, models folder or base_dir)."""
    p = Path(model)
    name = f"v3_model_{pair_key(symbol, interval)}.pt"
    if p.is_file():
        return p
    for candidate in (p / name, p / "all_models" / name):
        if candidate.is_file():
            return candidate
    return None


def load_model(model: str | Path, symbol: str, interval: str, *, folder: str = DEFAULT_FOLDER,
               token: str | None = None, **hub_kw) -> LoadedModel:
    """Load one pair's model from a local file/folder or a Hub repo id (weights_only=True).

    Raises CheckpointError when there is no model for the pair, the file is corrupt, or it
    was trained by an incompatible version of V3.
    """
    from v3_trainer import load_checkpoint
    symbol, interval = normalize_symbol(symbol), check_interval(interval)
    path = model_file(model, symbol, interval)
    if path is not None:
        loaded = LoadedModel.from_checkpoint(load_checkpoint(path), path=path)
    elif Path(model).exists() or not _REPO_ID.match(str(model)):
        raise CheckpointError(f"no model for {symbol} {interval} in {model}: expected "
                              f"v3_model_{pair_key(symbol, interval)}.pt there (train that pair "
                              f"first, or pass a Hub repo id such as 'me/cpb-models').")
    else:
        from v3_hub import load_model_from_hub
        loaded = load_model_from_hub(str(model), symbol, interval, folder=folder, token=token,
                                     **hub_kw)
    _check_compatible(loaded, symbol, interval)
    return loaded


def _check_compatible(m: LoadedModel, symbol: str, interval: str) -> None:
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
    import os
    env = os.environ.get("V3_CANDLE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "v3" / "candles"


def fetch_candles(symbol: str, interval: str, n_candles: int, *, data_dir: str | Path | None = None,
                  api_urls: list[str] | str | None = None) -> pd.DataFrame:
    """The latest closed candles, through the same download code as step 2 (base URL
    fallbacks, rate limits, renames, 'delisted or halted' checks, incremental updates)."""
    from v3_binance_data import download_klines
    df = download_klines(symbol, interval, n_candles, api_urls=api_urls,
                         data_dir=data_dir or candle_cache_dir())
    return df.tail(n_candles)


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
    +0.1 %), predicted_log_return, direction ('up', 'down' or 'flat'), test and baseline (the
    model's stored test metrics and the persistence baseline on the same samples), model
    (where it came from), trained_on (data range, source, synthetic).
    """
    symbol, interval = normalize_symbol(symbol), check_interval(interval)
    m = model if isinstance(model, LoadedModel) else load_model(model, symbol, interval,
                                                                folder=folder, token=token)
    step = INTERVAL_MS[interval]
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    need = m.warmup_candles + m.seq_len
    if candles is None:
        candles = fetch_candles(symbol, interval, need + 2, data_dir=candle_dir, api_urls=api_urls)
        check_stale = True if check_stale is None else check_stale
    # the warm-up makes a short history give the training values; skip the rest of it
    candles = candles.iloc[-(need + 2):] if len(candles) > need + 2 else candles
    window, last_open, last_close = latest_window(
        candles, m.transform, seq_len=m.seq_len, interval=interval, now_ms=now_ms,
        name=f"{symbol} {interval}")
    age = now_ms - (last_open + step)
    if check_stale and age > STALE_AFTER_INTERVALS * step:
        raise StaleDataError(
            f"{symbol} {interval}: the newest closed candle closed {age / step:.1f} intervals "
            f"ago ({utc_minute(last_open + step)}); market data older than {STALE_AFTER_INTERVALS} "
            f"intervals is stale (delisted or halted pair, or a stuck feed). Fetch fresh "
            f"candles.")
    with torch.inference_mode():
        out = float(m.model(torch.from_numpy(window)).reshape(-1)[0])
    log_ret = m.target_mean + m.target_std * out
    predicted = last_close * math.exp(log_ret)
    ck = m.checkpoint
    return {
        "symbol": symbol, "interval": interval,
        "open_time": last_open + step, "open_time_utc": utc_minute(last_open + step),
        "last_open_time": last_open, "last_close": last_close,
        "predicted_close": predicted, "predicted_return": math.expm1(log_ret),
        "predicted_log_return": log_ret,
        "direction": "up" if predicted > last_close else "down" if predicted < last_close else "flat",
        "test": ck.get("test"), "baseline": ck.get("baseline"),
        "model": f"{m.repo_id}@{m.revision}" if m.repo_id else str(m.path),
        "trained_on": {"data_range": ck.get("data_range"), "source": ck.get("source"),
                       "synthetic": bool(ck.get("synthetic"))},
    }



# ---------------------------------------------------------------------------------------
# Every model in a folder or a repo


def available_models(*, model_dir: str | Path | None = None, hub_repo: str | None = None,
                     folder: str = DEFAULT_FOLDER, token: str | None = None,
                     endpoint: str | None = None) -> list[tuple[str, str]]:
    """(symbol, interval) of every model in a local folder (or base_dir) or a Hub repo."""
    pat = re.compile(r"v3_model_([A-Z0-9]+)_(\w+)\.pt$")
    if model_dir is not None:
        d = Path(model_dir)
        if (d / "all_models").is_dir():
            d = d / "all_models"
        if not d.is_dir():
            raise CheckpointError(f"{model_dir} is not a folder of models: pass --model-dir with "
                                  f"a folder of v3_model_*.pt files or a base_dir holding "
                                  f"all_models/ (or --hub-repo for a Hub repo).")
        names = [p.name for p in d.glob("v3_model_*.pt")]
    else:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        from v3_hub import _endpoint, _transport_errors
        try:  # the repo's file list comes with its info ('siblings')
            info = HfApi(endpoint=_endpoint(endpoint), token=token).model_info(hub_repo)
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            raise CheckpointError(f"cannot list the models in {hub_repo} (HTTP {status}): check "
                                  f"the repo id; a private repo needs a token (HF_TOKEN).") from None
        except _transport_errors() as e:
            raise DownloadError(f"the Hub did not answer while listing {hub_repo} "
                                f"({type(e).__name__}); check the connection and HF_ENDPOINT.") from None
        names = [f.rfilename.split("/")[-1] for f in (info.siblings or [])
                 if f.rfilename.startswith(f"{folder}/v3_model_")]
    pairs = [(mt.group(1), mt.group(2)) for n in names if (mt := pat.search(n))]
    return sorted(p for p in pairs if p[1] in INTERVAL_MS)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = ("pair", "next candle (UTC)", "last close", "predicted", "return %", "dir",
            "test MAPE %", "persist. MAPE %", "test dir %", "note")
    lines = []
    for r in rows:
        t = r.get("test") or {}
        b = (r.get("baseline") or {}).get("persistence") or {}
        lines.append((pair_key(r["symbol"], r["interval"]), r.get("open_time_utc", "-"),
                      _fmt(r.get("last_close"), ".6g"), _fmt(r.get("predicted_close"), ".6g"),
                      _fmt(None if "predicted_return" not in r else 100 * r["predicted_return"], "+.3f"),
                      r.get("direction", "-"), _fmt(t.get("mape"), ".3f"), _fmt(b.get("mape"), ".3f"),
                      _fmt(t.get("directional_accuracy"), ".1f"),
                      r.get("error") or ("SYNTHETIC" if (r.get("trained_on") or {}).get("synthetic") else "")))
    widths = [max(len(str(x[i])) for x in lines + [head]) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(x, widths)) for x in [head] + lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="v3_predict.py", description=(
        "Forecast the next candle for every trained V3 model in a folder or a Hub repo, next "
        "to each model's test metrics and the persistence baseline."))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a folder of v3_model_*.pt files (or a base_dir)")
    src.add_argument("--hub-repo", help="a Hub model repo id, e.g. me/cpb-models")
    ap.add_argument("--hf-folder", default=DEFAULT_FOLDER, help="folder in the Hub repo (default v3)")
    ap.add_argument("--coins", nargs="+", metavar="SYMBOL", help="only these symbols")
    ap.add_argument("--timeframes", nargs="+", metavar="TF", help="only these timeframes")
    ap.add_argument("--data-dir", help="read candles from SYMBOL_INTERVAL.csv[.gz] files here "
                                       "instead of downloading (no staleness check)")
    ap.add_argument("--json", action="store_true", help="machine-readable output (one JSON list)")
    args = ap.parse_args(argv)
    setup_logging("WARNING" if args.json else "INFO")
    try:
        pairs = available_models(model_dir=args.model_dir, hub_repo=args.hub_repo,
                                 folder=args.hf_folder)
        if args.coins:
            want = {normalize_symbol(c) for item in args.coins for c in item.replace(",", " ").split()}
            pairs = [p for p in pairs if p[0] in want]
        if args.timeframes:
            want_tf = {check_interval(t) for item in args.timeframes for t in item.replace(",", " ").split()}
            pairs = [p for p in pairs if p[1] in want_tf]
    except V3Error as e:
        log.error("%s: %s", type(e).__name__, e)
        return 2
    if not pairs:
        log.error("no models found in %s", args.model_dir or args.hub_repo)
        return 1
    rows = []
    for symbol, interval in pairs:
        try:
            candles = None
            if args.data_dir:
                from v3_market_data import find_csv, read_klines
                candles = read_klines(find_csv(args.data_dir, symbol, interval))
            rows.append(predict_next(symbol, interval, model=args.model_dir or args.hub_repo,
                                     candles=candles, folder=args.hf_folder))
        except V3Error as e:
            log.warning("%s %s: %s", symbol, interval, e)
            rows.append({"symbol": symbol, "interval": interval,
                         "error": f"{type(e).__name__}: {e}"})
    if args.json:
        print(json.dumps(rows, indent=2, default=json_default))
    else:
        print(format_table(rows))
        print("Metrics are the model's test split; persistence = 'next close = last close' on "
              "the same samples. Not financial advice.")
    return 0 if any("error" not in r for r in rows) else 1



if __name__ == "__main__":
    sys.exit(main())
