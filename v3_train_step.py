"""Step 4's bookkeeping per pair: train, resume or skip it, and the files a trained pair leaves.

    plan = plan_pair(layout, cfg, "BTCUSDT", "15m", retrain=False, label="[1/40] BTCUSDT_15m")
    # plan.job: a v3_trainer.TrainJob to train (fresh or resumed), or None: plan.skip_reason
    fields = finalize_pair(layout, cfg, job, outcome, prior=results_entry)

A model keeps training on the candles it started with: when step 2 has fetched newer candles
since (a re-run in Colab always does), the pair's data is cut back to the range recorded in
its training state, so a finished pair is skipped and an interrupted one resumes. A pair that
stopped early is finished; one that hit the epoch limit continues when more epochs are asked
for. `retrain=True` trains from scratch on the newest candles.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from v3_checkpoint import load_model_file, load_resume_state, save_checkpoint, save_resume_state
from v3_common import CheckpointError, V3Error, log, utc_minute
from v3_data_processor import FEATURE_SET_VERSION, WARMUP_CANDLES, PreparedData, prepare_dataset
from v3_metrics import regression_metrics
from v3_layout import RunLayout
from v3_market_data import read_klines
from v3_evaluation import (best_model, evaluation_fields, fingerprint, model_test_forecast,
                            score_model, validation_interval, write_predictions)
from v3_trainer import TrainJob, TrainOutcome, mean_forecast_val_loss, resolve_device


@dataclass
class PairPlan:
    job: TrainJob | None            # None: nothing to train
    skip_reason: str | None = None  # why not, for the results and the log


def plan_pair(layout: RunLayout, cfg, symbol: str, interval: str, *, retrain: bool,
              label: str) -> PairPlan:
    """What step 4 does with one preprocessed pair: a fresh or resumed TrainJob, or a skip."""
    key = f"{symbol}_{interval}"
    data = PreparedData.load(layout.processed_path(symbol, interval))
    resume = None if retrain else load_resume_state(layout.resume_path(symbol, interval))
    if resume is not None and (resume.get("model_config") != cfg.model.to_dict() or
                               resume.get("feature_config") != cfg.features.to_dict() or
                               resume.get("feature_set_version") != FEATURE_SET_VERSION):
        log.info("%s: the model or feature settings changed since the last training; "
                 "training from scratch", key)
        resume = None
    if resume is not None and resume.get("data_fingerprint") != fingerprint(data):
        older = data_as_trained(layout, cfg, symbol, interval, resume)
        if older is None:
            log.info("%s: the candles it was trained on are gone; training from scratch", key)
            resume = None
        else:
            log.info("%s: keeps the candles it was trained on (up to %s); newer ones are "
                     "used with retrain=True (--retrain)", key, utc_minute(older.last_open_time))
            data = older
    if resume is not None and resume.get("completed"):
        reason = finished_reason(resume, cfg.train.epochs)
        if reason is not None:
            try:
                load_model_file(layout.model_path(symbol, interval))
            except CheckpointError as e:
                log.warning("%s: its model file cannot be read (%s); training it again",
                            key, " ".join(str(e).split())[:160])
                resume = None
            else:
                log.info("%s: skipped, %s", key, reason)
                return PairPlan(None, reason)
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
    save_checkpoint(mpath, model_state=outcome.best_state, model_config=job.model_config,
                    data=data, feature_config=cfg.features.to_dict(), meta=meta)
    write_predictions(ppath, data, scored)
    save_resume_state(dict(outcome.resume_state, **resume_stamp(cfg, data), completed=True),
                      layout.resume_path(symbol, interval))
    return dict(fields, symbol=symbol, interval=interval,
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
