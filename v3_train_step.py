"""Step 4's bookkeeping per pair: train, resume or skip it, and the files a trained pair leaves.

    plan = plan_pair(layout, cfg, "BTCUSDT", "15m", retrain=False, label="[1/40] BTCUSDT_15m")
    # plan.job: a v3_trainer.TrainJob to train (fresh or resumed), or None: plan.skip_reason
    fields = finalize_pair(layout, cfg, job, outcome, prior=results_entry)

A model keeps training on the candles it started with: when step 2 has fetched newer candles
since (a re-run in Colab always does), the pair's data is cut back to the range recorded in
its training state, so a finished pair is skipped and an interrupted one resumes. A pair that
stopped early is finished; one that hit the epoch limit continues when more epochs are asked
for. `retrain=True` trains from scratch on the newest candles.

What a damaged folder costs: a model file that does not load or fails its content hash is
trained again; a truncated predictions CSV of a skipped pair is rewritten from its model; a
results entry that does not match its model file (a results write interrupted after the model
was saved) is rebuilt from the entry the file carries (`results`, with `content_sha256`); a
candle file that lost candles and gained none keeps the model (`kept_features`, with a warning
that says how to retrain on purpose).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from v3_checkpoint import (content_sha256, load_checkpoint, load_model_file, load_resume_state,
                           save_checkpoint, save_resume_state)
from v3_common import (DISK_FULL, CheckpointError, DamagedFileError, DataValidationError,
                       StorageError, V3Error, fmt_bytes, json_default, log, pair_key, plural,
                       shorten, utc_minute)
from v3_data_processor import FEATURE_SET_VERSION, WARMUP_CANDLES, PreparedData, prepare_dataset
from v3_metrics import regression_metrics
from v3_layout import RunLayout
from v3_lstm_model import V3LSTMModel
from v3_market_data import read_klines
from v3_evaluation import (best_model, evaluation_fields, fingerprint, model_test_forecast,
                            predictions_problem, score_model, validation_interval,
                            write_predictions)
from v3_results import SKIPPED, now_iso
from v3_trainer import TrainJob, TrainOutcome, mean_forecast_val_loss, resolve_device


@dataclass
class PairPlan:
    job: TrainJob | None            # None: nothing to train
    skip_reason: str | None = None  # why not, for the results and the log
    fields: dict = dataclasses.field(default_factory=dict)  # results fields of a skipped pair


def plan_pair(layout: RunLayout, cfg, symbol: str, interval: str, *, retrain: bool,
              label: str, prior: dict | None = None) -> PairPlan:
    """What step 4 does with one preprocessed pair: a fresh or resumed TrainJob, or a skip.
    `prior` is the pair's results entry: a skipped pair whose entry does not match its model
    file (lost, or left incomplete by an interrupted write) gets its fields back from the
    file. DamagedFileError when the features (processed/*.npz) are damaged."""
    key = f"{symbol}_{interval}"
    data = PreparedData.load(layout.processed_path(symbol, interval))
    resume = None if retrain else load_resume_state(layout.resume_path(symbol, interval))
    changed = settings_changed(resume, cfg) if resume is not None else []
    if changed and resume.get("completed"):  # another run's finished model: say what goes
        log.warning("%s: its finished model was trained with other settings (%s); this run "
                    "trains it from scratch with its own, replacing %s and its training "
                    "state. Use another --base-dir to keep both.", key, ", ".join(changed),
                    layout.relative(layout.model_path(symbol, interval)))
        resume = None
    elif changed:
        log.info("%s: the model or feature settings changed since the last training (%s); "
                 "training from scratch", key, ", ".join(changed))
        resume = None
    as_trained = True
    if resume is not None and resume.get("data_fingerprint") != fingerprint(data):
        older = data_as_trained(layout, cfg, symbol, interval, resume)
        if older is not None:
            log.info("%s: keeps the candles it was trained on (up to %s); newer ones are "
                     "used with retrain=True (--retrain)", key, utc_minute(older.last_open_time))
            data = older
        elif data.last_open_time < resume.get("data_last_open_time", data.last_open_time):
            log.warning("%s: %s", key, shrank_message(layout, symbol, interval, data,
                                                      resume["data_last_open_time"]))
            if not resume.get("completed"):
                raise DamagedFileError(f"the candle file shrank, so its unfinished training "
                                       f"cannot resume: {shrank_fix(layout, symbol, interval)}")
            as_trained = False
        else:
            log.info("%s: the candles it was trained on are gone; training from scratch", key)
            resume = None
    reason = finished_reason(resume, cfg.train.epochs) if resume and resume.get("completed") else None
    if reason is not None:
        skip = _skip_plan(layout, cfg, symbol, interval, reason, data if as_trained else None,
                          prior or {})
        if skip is not None:
            return skip
        resume = None  # its model file is missing or damaged: train it again
    if resume is not None:
        log.info("%s: resuming from epoch %d", key, resume["epoch"])
    resume_path, stamp = layout.resume_path(symbol, interval), resume_stamp(cfg, data)

    def save_state(state: dict) -> None:
        state.update(stamp, completed=False)
        save_resume_state(state, resume_path)

    model_cfg = dataclasses.replace(cfg.model, input_size=data.transform.n_components)
    return PairPlan(TrainJob(key=key, symbol=symbol, interval=interval, data=data,
                             model_config=model_cfg, resume=resume, checkpoint_fn=save_state,
                             desc=label))


def settings_changed(resume: dict, cfg) -> list[str]:
    """What differs between a training state's model and feature settings and `cfg`'s:
    ['model hidden_size 128 -> 32', ...]; [] when it can be resumed."""
    out = [f"feature set v{resume.get('feature_set_version')} -> v{FEATURE_SET_VERSION}"] \
        if resume.get("feature_set_version") != FEATURE_SET_VERSION else []
    for part, now in (("model", cfg.model.to_dict()), ("feature", cfg.features.to_dict())):
        old = resume.get(f"{part}_config") or {}
        out += [f"{part} {k} {old.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(old) | set(now))
                if old.get(k) != now.get(k)]
    return out


def _skip_plan(layout: RunLayout, cfg, symbol: str, interval: str, reason: str,
               data: PreparedData | None, prior: dict) -> PairPlan | None:
    """The skip of a finished pair, or None when its model file is missing or damaged.
    Rewrites a damaged predictions CSV from the model (`data`: the candles it was trained
    on; None when they are gone)."""
    key = pair_key(symbol, interval)
    try:
        loaded = load_model_file(layout.model_path(symbol, interval))
    except CheckpointError as e:
        log.warning("%s: its model file cannot be read (%s); training it again",
                    key, shorten(str(e), 200))
        return None
    ppath = layout.predictions_path(symbol, interval)
    problem = predictions_problem(ppath, data) if data is not None else None
    if problem is not None:
        scored = score_model(loaded.model, data, interval, fee_per_side=cfg.fee_per_side,
                             patience=cfg.train.patience)
        write_predictions(ppath, data, scored)
        log.warning("%s: %s; rewritten from its model", key, problem)
    log.info("%s: skipped, %s", key, reason)
    return PairPlan(None, reason, fields=skip_fields(layout, loaded.checkpoint, prior))


def skip_fields(layout: RunLayout, ckpt: dict, prior: dict) -> dict:
    """The results fields a skipped pair's entry needs: none when the entry is the model
    file's (same content_sha256), else the entry rebuilt from the file's own metadata."""
    rebuilt = results_from_checkpoint(layout, ckpt)
    sha = rebuilt["content_sha256"]
    if prior.get("content_sha256") == sha:
        return {}
    if prior.get("content_sha256") is None and "model_path" in prior and all(
            prior.get(k) == rebuilt.get(k) for k in ("best_epoch", "total_epochs")):
        return {"content_sha256": sha}  # an entry of before the hash: the same training
    log.warning("%s: its results entry does not match its model file (a results write was "
                "interrupted?); rebuilt from the file", pair_key(ckpt["symbol"], ckpt["interval"]))
    if prior.get("data"):
        rebuilt.pop("data", None)  # step 2's account of the candle file as it is now
    return rebuilt


def results_from_checkpoint(layout: RunLayout, ckpt: dict) -> dict:
    """A pair's results fields rebuilt from its model file: the entry finalize_pair stored in
    it (`results`), with the test numbers re-scoring keeps up to date in the file; a file of
    an older V3 gives what its metadata holds."""
    symbol, interval = str(ckpt["symbol"]), str(ckpt["interval"])
    fields = dict(ckpt.get("results") or {})
    if not fields:
        rng = ckpt.get("data_range") or {}
        fields = {k: ckpt[k] for k in ("best_val_loss", "best_epoch", "total_epochs", "splits",
                                       "synthetic", "requested_symbol") if k in ckpt}
        fields["data"] = {"source": ckpt.get("source"), "synthetic": bool(ckpt.get("synthetic")),
                          **rng, "first": utc_minute(rng.get("first_open_time")),
                          "last": utc_minute(rng.get("last_open_time"))}
    for k in ("test", "baseline"):
        if k in ckpt:
            fields[k] = ckpt[k]
    return dict(fields, symbol=symbol, interval=interval,
                model_path=layout.relative(layout.model_path(symbol, interval)),
                predictions_path=layout.relative(layout.predictions_path(symbol, interval)),
                content_sha256=ckpt.get("content_sha256") or content_sha256(ckpt))


def rebuild_results(layout: RunLayout) -> dict:
    """Entries for every pair with a model file that loads (a damaged results file's
    replacement): status 'skipped', rebuilt from the file."""
    out = {}
    for path in layout.model_files():
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            log.warning("%s is not rebuilt into the results: %s", path.name, shorten(str(e), 200))
            continue
        fields = results_from_checkpoint(layout, ckpt)
        out[pair_key(fields["symbol"], fields["interval"])] = dict(
            fields, status=SKIPPED, skip_reason=f"rebuilt from {path.name}", updated_at=now_iso())
    return out


def shrank_message(layout: RunLayout, symbol: str, interval: str, data: PreparedData,
                   trained_last: int) -> str:
    """A trained pair's candle file that lost candles and gained none: what, and the fix."""
    name = layout.data_path(symbol, interval).name
    return (f"data/{name} shrank: its candles end at {utc_minute(data.last_open_time)}, but the "
            f"model was trained on candles up to {utc_minute(trained_last)} and none is newer "
            f"(a truncated or replaced file?). Keeping the model; "
            f"{shrank_fix(layout, symbol, interval)}")


def shrank_fix(layout: RunLayout, symbol: str, interval: str) -> str:
    return (f"re-download the candles (step 2; --refresh) to repair "
            f"{layout.data_path(symbol, interval).name}, or train on what it holds on purpose "
            f"with --retrain (retrain=True).")


def kept_features(layout: RunLayout, symbol: str, interval: str,
                  data: PreparedData) -> PreparedData | None:
    """Step 3's guard for a trained pair: the features it was trained on, kept (with a
    warning) when the candle file lost candles and gained none; None when `data` replaces
    them (new candles, no model yet, or no readable features)."""
    path = layout.processed_path(symbol, interval)
    if not (layout.model_path(symbol, interval).exists() and path.exists()):
        return None
    try:
        old = PreparedData.load(path)
    except (DamagedFileError, DataValidationError):
        return None
    if data.last_open_time >= old.last_open_time:
        return None
    log.warning("%s: %s", pair_key(symbol, interval),
                shrank_message(layout, symbol, interval, data, old.last_open_time))
    return old


def with_disk_need(e: V3Error, left: list[TrainJob]) -> V3Error:
    """A full disk's StorageError, with about how much more the `left` pairs (not saved yet)
    need; any other error as it is."""
    if not (isinstance(e, StorageError) and e.errno in DISK_FULL):
        return e
    need = sum(pair_disk_bytes(j) for j in left)
    out = StorageError(f"{e} This run needs about {fmt_bytes(need)} more for the "
                       f"{plural(len(left), 'pair')} not saved yet (model file, training state "
                       f"and predictions).")
    out.errno = e.errno
    return out


def pair_disk_bytes(job: TrainJob) -> int:
    """About what step 4 writes for one pair: the model file (weights, scaler, PCA), the
    training state (weights, best weights, Adam's two moments) and the predictions CSV."""
    n_params = sum(p.numel() for p in V3LSTMModel(job.model_config).parameters())
    return 6 * 4 * n_params + 400 * job.data.n_test + 256_000


def finished_reason(resume: dict, epochs: int) -> str | None:
    """Why a completed training needs no more epochs, or None when it should continue."""
    epoch, best = int(resume.get("epoch", 0)), resume.get("best_epoch")
    if resume.get("stopped_early"):
        return (f"stopped early at epoch {epoch} (best {best}); --retrain (retrain=True) to "
                f"train again")
    if int(resume.get("epochs_requested", 0)) >= epochs:
        return (f"already trained: all {epoch} epochs (best {best}); --retrain "
                f"(retrain=True) to train again")
    return None


def resume_stamp(cfg, data: PreparedData) -> dict:
    """What a training state must match to be resumed: data range and settings."""
    return {"data_fingerprint": fingerprint(data), "model_config": cfg.model.to_dict(),
            "feature_config": cfg.features.to_dict(), "feature_set_version": FEATURE_SET_VERSION,
            "data_first_open_time": data.first_open_time,
            "data_last_open_time": data.last_open_time}


def data_as_trained(layout: RunLayout, cfg, symbol: str, interval: str,
                    resume: dict) -> PreparedData | None:
    """The pair's dataset rebuilt on the candle range its training state recorded."""
    first, last = resume.get("data_first_open_time"), resume.get("data_last_open_time")
    path = layout.data_path(symbol, interval)
    if first is None or last is None or not path.exists():
        return None
    df = read_klines(path)
    df = df[(df["open_time"] >= first) & (df["open_time"] <= last)]
    try:
        data = prepare_dataset(df, cfg.features, interval=interval, name=f"{symbol} {interval}")
    except V3Error:
        return None
    return data if fingerprint(data) == resume.get("data_fingerprint") else None


def features_info(data: PreparedData) -> dict:
    return {"n_features": len(data.feature_names), "n_components": data.transform.n_components,
            "explained_variance": float(data.transform.explained_variance_ratio.sum()),
            "n_samples": len(data.ends), "n_train": data.n_train, "n_val": data.n_val,
            "n_test": data.n_test, "seq_len": data.seq_len, "warmup_candles": WARMUP_CANDLES,
            "gap_windows_dropped": data.gap_windows_dropped}


def finalize_pair(layout: RunLayout, cfg, job: TrainJob, outcome: TrainOutcome, *,
                  prior: dict, created_at: str) -> dict:
    """Predict the test split with the best weights, score it, save the model file, the
    predictions and the finished training state. Returns the pair's results fields."""
    data, symbol, interval = job.data, job.symbol, job.interval
    model = best_model(job.model_config, outcome.best_state)
    scored = score_model(model, data, interval, fee_per_side=cfg.fee_per_side,
                         patience=cfg.train.patience)
    va = data.split("val")
    val = regression_metrics(data.actual_close[va], model_test_forecast(model, data, "val"),
                             data.last_close[va])
    val["interval"] = validation_interval(model, data)
    prior_data = prior.get("data", {})
    synthetic = bool(prior_data.get("synthetic", cfg.source == "synthetic"))
    fields = evaluation_fields(data, scored)
    meta = {"symbol": symbol, "interval": interval,
            "requested_symbol": prior.get("requested_symbol", symbol),
            "source": prior_data.get("source", cfg.source), "synthetic": synthetic,
            "data_range": {"first_open_time": data.first_open_time,
                           "last_open_time": data.last_open_time},
            "splits": fields["splits"], "train_config": cfg.train.to_dict(),
            "best_val_loss": outcome.best_val_loss, "best_epoch": outcome.best_epoch,
            "total_epochs": outcome.epochs_done, "test": scored["test"],
            "baseline": scored["baseline"], "val": val, "created_at": created_at}
    mpath, ppath = layout.model_path(symbol, interval), layout.predictions_path(symbol, interval)
    fields = dict(fields, symbol=symbol, interval=interval,
                  best_val_loss=outcome.best_val_loss, best_epoch=outcome.best_epoch,
                  stop_on=cfg.train.stop_on,
                  best_val_mse=next((h["val_loss"] for h in outcome.history
                                     if h["epoch"] == outcome.best_epoch), None),
                  val_loss_mean_forecast=mean_forecast_val_loss(data),
                  total_epochs=outcome.epochs_done, val_mape=val["mape"],
                  val_interval=val["interval"],
                  stopped_early=outcome.stopped_early, features=features_info(data),
                  synthetic=synthetic, train_seconds=round(outcome.seconds, 2),
                  device=str(resolve_device(cfg.train.device)), engine=outcome.engine,
                  **({"engine_fallback_reason": outcome.engine_fallback_reason}
                     if outcome.engine_fallback_reason else {}),
                  model_path=layout.relative(mpath), predictions_path=layout.relative(ppath),
                  history=outcome.history)
    # the entry travels in the model file, so that a results write that never happened
    # (interrupted, no permission) is rebuilt from the file (results_from_checkpoint)
    kept = dict(fields, requested_symbol=meta["requested_symbol"])
    if prior_data:
        kept["data"] = prior_data
    meta["results"] = json.loads(json.dumps(kept, default=json_default))
    sha = save_checkpoint(mpath, model_state=outcome.best_state, model_config=job.model_config,
                          data=data, feature_config=cfg.features.to_dict(), meta=meta)
    write_predictions(ppath, data, scored)
    save_resume_state(dict(outcome.resume_state, **resume_stamp(cfg, data), completed=True),
                      layout.resume_path(symbol, interval))
    return dict(fields, content_sha256=sha)
