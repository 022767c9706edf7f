"""Scoring a trained pair honestly: the LSTM's test forecast through the same loop as every
baseline, re-scoring a saved model without training, and the walk-forward evaluation.

    scored = score_model(model, data, "15m", fee_per_side=0.001, patience=15)
    fields = rescore_pair(layout, entry, fee_per_side=0.001, patience=15)

Every metric is computed on exactly the samples the LSTM is scored on (the test split of a
`PreparedData`); the metrics are v3_metrics', the baselines v3_baselines'. Baselines are
fitted on the training split only (and tuned on validation).
"""
from __future__ import annotations

import dataclasses
import io
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from v3_baselines import LinearBaseline, baseline_models
from v3_checkpoint import load_model_file
from v3_common import CheckpointError, ConfigError, V3Error, atomic_write_bytes, log
from v3_data_processor import PreparedData, prepare_dataset
from v3_interval_scores import (INTERVAL_BASELINES, QUANTILE_COLUMNS, QUANTILES,
                                add_confidence_set, interval_hits, interval_metrics,
                                per_sample_pinball)
from v3_intervals import HarBaseline, evaluate_intervals, sample_returns, standardized_to_returns
from v3_layout import RunLayout
from v3_lstm_model import V3LSTMModel
from v3_metrics import backtest_direction, forecast_metrics, naive_mae
from v3_trainer import predict_quantiles_standardized, predict_standardized, train_model


def evaluate_pair(data, predicted_test: np.ndarray, *, baselines: list | None = None) -> dict:
    """Score the model's test forecast and every baseline on the same test samples of `data`.

    Baselines are fitted on the training split (and tuned on validation) here. Returns
    {"test": metrics, "baseline": {name: metrics}, "predictions": {name: closes},
    "mase_scale": float, "tuning": {...}}. tuning["linear"] records the chosen `alpha`,
    `at_largest_alpha` (the ridge is then in effect drift) and `at_grid_edge` (the chosen
    alpha is the smallest or the largest of the grid, so the grid did not bracket the best).
    """
    idx = data.split("test")
    tr = data.split("train")
    scale = naive_mae(data.last_close[tr], data.actual_close[tr])
    actual, last = data.actual_close[idx], data.last_close[idx]
    out = {"test": forecast_metrics(actual, predicted_test, last, mase_scale=scale),
           "baseline": {}, "predictions": {}, "mase_scale": scale, "tuning": {}}
    for model in baselines if baselines is not None else baseline_models():
        model.fit(data)
        pred = model.predict(data, idx)
        out["predictions"][model.name] = pred
        out["baseline"][model.name] = forecast_metrics(actual, pred, last, mase_scale=scale)
        if isinstance(model, LinearBaseline):
            out["tuning"]["linear"] = {
                "alpha": model.alpha, "chosen_on": "validation MSE of the standardised return",
                # the largest penalty shrinks the ridge to the training mean, i.e. to drift
                "at_largest_alpha": model.alpha == max(model.alphas),
                # at either end of the grid the grid did not bracket the best penalty
                "at_grid_edge": model.alpha in (min(model.alphas), max(model.alphas)),
                "val_mse_by_alpha": {f"{a:g}": v for a, v in model.val_mse.items()},
                "input": model.describe(data)}
    return out


def score_pair(data: PreparedData, pred_test: np.ndarray, interval: str, *, fee_per_side: float,
               patience: int, quantiles_test: np.ndarray | None = None) -> dict:
    """The model's test forecast next to every baseline on the same samples, with the
    significance tests and the fee-aware backtest; and the model's test quantiles of the next
    log return (`quantiles_test`, (n_test, 7), or None without a quantile head) next to the
    interval baselines (rolling, ewma, garch: v3_intervals)."""
    te = data.split("test")
    scored = evaluate_pair(data, pred_test)
    scored["predictions"]["model"] = np.asarray(pred_test, np.float64)
    intervals = evaluate_intervals(data, quantiles_test)
    scored["baseline"].update(intervals["baseline"])  # rolling/ewma/garch: {"interval": block}
    if intervals["model"] is not None:  # `interval` beside the point metrics (the pair's own
        scored["test"]["interval"] = intervals["model"]  # `interval` is its timeframe)
    scored["quantile_predictions"] = intervals["predictions"]  # closes, (n_test, 7) per name
    scored["tuning"]["intervals"] = intervals["tuning"]
    scored["backtest"] = backtest_direction(pred_test, data.last_close[te], data.actual_close[te],
                                            interval=interval, fee_per_side=fee_per_side)
    scored["tuning"]["lstm"] = ("the stopping epoch, by early stopping on the validation loss "
                                f"(patience {patience}); nothing on test")
    return scored


def evaluation_fields(data: PreparedData, scored: dict) -> dict:
    """What scoring adds to a pair's results entry."""
    te = data.split("test")
    return {"test": scored["test"], "baseline": scored["baseline"],
            "backtest": scored["backtest"], "mase_scale": scored["mase_scale"],
            "tuning": scored["tuning"],
            "splits": {"train": data.n_train, "val": data.n_val, "test": data.n_test,
                       "test_first_open_time": int(data.target_open_time[te][0]),
                       "test_last_open_time": int(data.target_open_time[te][-1])}}


def score_model(model, data: PreparedData, interval: str, *, fee_per_side: float,
                patience: int) -> dict:
    """score_pair for a trained model: its test closes and, with a quantile head, its test
    quantiles of the next log return."""
    return score_pair(data, model_test_forecast(model, data), interval, fee_per_side=fee_per_side,
                      patience=patience, quantiles_test=model_test_quantiles(model, data))


def model_test_quantiles(model, data: PreparedData, split: str = "test") -> np.ndarray | None:
    """The quantile head's forecast for one split as log-return quantiles (n, 7), or None for
    a model without a head or with other levels than the ones V3 scores (v3_intervals)."""
    if tuple(getattr(model.config, "quantiles", ())) != QUANTILES:
        return None
    z = predict_quantiles_standardized(model, data, data.split(split))
    return None if z is None else standardized_to_returns(data, z)


def validation_interval(model, data: PreparedData) -> dict | None:
    """The quantile head on the validation split, in the units every forecast is scored in
    (pinball on 100 x log return), next to the `har` baseline on the same samples: what
    choices made on validation read (the head's unit, tuning), never the test split.
    {"pinball", "pinball_har", "skill_har", "coverage_80", "n"}; None without a head."""
    q = model_test_quantiles(model, data, "val")
    if q is None:
        return None
    va = data.split("val")
    y = sample_returns(data)[va]
    har = HarBaseline().fit(data).predict_returns(data, va)
    pin, pin_har = per_sample_pinball(y, q).mean(), per_sample_pinball(y, har).mean()
    return {"pinball": float(pin), "pinball_har": float(pin_har),
            "skill_har": float(1.0 - pin / pin_har) if pin_har > 0 else None,
            "coverage_80": float(interval_hits(y, q, "80").mean()), "n": int(len(y))}


def model_test_forecast(model, data: PreparedData, split: str = "test") -> np.ndarray:
    """A trained model's next-close forecast for the samples of one split."""
    idx = data.split(split)
    return data.to_close(predict_standardized(model, data, idx), idx)


def write_predictions(path, data: PreparedData, scored: dict, *, baselines: bool = False) -> None:
    """The per-sample test predictions as CSV (results/predictions/*.csv): the model's close,
    its close at each quantile (p05..p95, with a quantile head), garch's (garch_p05..) and
    har's (har_p05..);
    walk-forward folds also carry the drift and linear closes and every interval baseline's."""
    te = data.split("test")
    p, q = scored["predictions"], scored.get("quantile_predictions") or {}
    cols = {"open_time": data.target_open_time[te], "last_close": data.last_close[te],
            "actual_close": data.actual_close[te], "predicted_close": p["model"]}
    if "model" in q:
        cols.update(zip(QUANTILE_COLUMNS, q["model"].T))
    for name in INTERVAL_BASELINES if baselines else ("garch", "har"):
        if name in q:
            cols.update(zip((f"{name}_{c}" for c in QUANTILE_COLUMNS), q[name].T))
    if baselines:
        cols.update(drift_close=p["drift"], linear_close=p["linear"])
    atomic_write_bytes(path, pd.DataFrame(cols).to_csv(index=False).encode())


def predictions_problem(path, data: PreparedData) -> str | None:
    """What is wrong with a predictions CSV that write_predictions wrote for `data` (missing,
    unreadable, truncated: not one whole row per test sample), or None when it is whole."""
    te = data.split("test")
    if not path.exists():
        return f"{path.name} is missing"
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        return f"{path.name} is unreadable ({type(e).__name__})"
    need = ["open_time", "last_close", "actual_close", "predicted_close"]
    if any(c not in df.columns for c in need):
        return f"{path.name} lacks the column(s) {[c for c in need if c not in df.columns]}"
    whole = df[need].notna().all(axis=1)
    if len(df) != data.n_test or not whole.all():
        return (f"{path.name} holds {int(whole.sum())} whole rows of the {data.n_test} test "
                f"samples (truncated?)")
    if not np.array_equal(df["open_time"].to_numpy(), data.target_open_time[te]):
        return f"{path.name} is for other candles than the model's test split"
    return None


# ---------------------------------------------------------------------------------------
# Re-scoring a saved model


def rescore_pair(layout: RunLayout, entry: dict, *, fee_per_side: float, patience: int) -> dict:
    """Score a trained pair again from its saved model and features, with no training (for
    results of an older V3, or another fee). Rewrites its predictions CSV, and its model file
    only when the model's numbers change (a re-save differs in bytes, and step 5 would upload
    it again). Returns the results fields; CheckpointError when the files do not fit."""
    symbol, interval = entry["symbol"], entry["interval"]
    mpath, ppath = layout.model_path(symbol, interval), layout.processed_path(symbol, interval)
    if not ppath.exists():
        raise CheckpointError(f"no saved features {layout.relative(ppath)}")
    loaded = load_model_file(mpath)  # CheckpointError for a missing or unreadable model
    try:
        data = PreparedData.load(ppath)
    except (V3Error, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{layout.relative(ppath)} is unreadable ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from e
    ckpt = loaded.checkpoint
    if ckpt.get("data_range", {}).get("last_open_time") != data.last_open_time:
        raise CheckpointError("the features changed since the model was trained")
    scored = score_model(loaded.model, data, interval, fee_per_side=fee_per_side,
                         patience=patience)
    path = layout.predictions_path(symbol, interval)
    write_predictions(path, data, scored)
    if (ckpt.get("test"), ckpt.get("baseline")) != (scored["test"], scored["baseline"]):
        ckpt.update(test=scored["test"], baseline=scored["baseline"],
                    torch_version=str(ckpt.get("torch_version", torch.__version__)))
        buf = io.BytesIO()
        torch.save(ckpt, buf)  # torch_version stays a plain str for weights_only
        atomic_write_bytes(mpath, buf.getvalue())
    return dict(evaluation_fields(data, scored), predictions_path=layout.relative(path))


# ---------------------------------------------------------------------------------------
# Walk-forward: K successive origins, an expanding training window, preprocessing refitted

# ---------------------------------------------------------------------------------------
# Walk-forward: K successive origins, an expanding training window, preprocessing refitted


@dataclass(frozen=True)
class Fold:
    index: int          # 0-based, in time order
    n_candles: int      # the fold sees candles[:n_candles] only (its last test target included)
    n_train: int        # samples, counted from the first sample of the full series
    n_val: int
    n_test: int

    @property
    def n_samples(self) -> int:
        return self.n_train + self.n_val + self.n_test


def walk_forward_folds(ends: np.ndarray, k: int, *, test_size: int, train_frac: float,
                       val_frac: float, min_samples: int) -> list[Fold]:
    """K folds whose test blocks of `test_size` samples tile the end of the series.

    `ends` are the sample ends (candle rows) of the full series. Fold j tests samples
    [N - (K - j) * test_size, N - (K - j - 1) * test_size); everything before them is its
    training + validation data (validation = the last val_frac / (train_frac + val_frac) of
    it), so the training window grows fold by fold and every fold's test block comes after
    its own training and validation samples. Raises ConfigError when the first fold would
    have too little to train on.
    """
    n = len(ends)
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"--walk-forward needs a number of folds >= 1, got {k!r}.")
    first_fit = n - k * test_size
    val_share = val_frac / (train_frac + val_frac)
    n_val0 = int(first_fit * val_share)
    if first_fit - n_val0 < max(min_samples, test_size) or n_val0 < min_samples:
        raise ConfigError(
            f"walk-forward with {k} folds of {test_size} test samples leaves the first fold "
            f"{first_fit} samples of {n} for training + validation; it needs >= "
            f"{int(np.ceil(max(min_samples, test_size) / (1 - val_share)))}. Use fewer folds "
            f"or more candles (--candles).")
    folds = []
    for j in range(k):
        fit = n - (k - j) * test_size
        n_val = int(fit * val_share)
        last_sample = fit + test_size - 1
        folds.append(Fold(index=j, n_candles=int(ends[last_sample]) + 2, n_train=fit - n_val,
                          n_val=n_val, n_test=test_size))
    return folds


def fold_fractions(fold: Fold) -> tuple[float, float]:
    """(train_frac, val_frac) that make prepare_dataset split the fold's samples exactly as
    planned (it takes int(n * frac); the half sample keeps float rounding away)."""
    n = fold.n_samples
    return (fold.n_train + 0.5) / n, (fold.n_val + 0.5) / n


def walk_forward_pair(klines: pd.DataFrame, symbol: str, interval: str, cfg, *,
                      layout: RunLayout, prior: dict, retrain: bool,
                      on_fold: Callable[[list[dict]], None] | None = None) -> dict:
    """Retrain a pair on `cfg.walk_forward` successive origins (indicators, scaling, PCA and
    the target's mean/std refitted on each fold's own training rows) and score each fold's
    next block of test samples. `prior` is the pair's earlier `walk_forward` entry: a fold
    with the same data and settings is kept unless `retrain`. `on_fold(entries)` after each
    new fold. Returns the new `walk_forward` entry (per-fold and pooled metrics)."""
    k, name = cfg.walk_forward, f"{symbol} {interval}"
    full = prepare_dataset(klines, cfg.features, interval=interval, name=name,
                           hint=cfg.short_data_hint())
    folds = walk_forward_folds(full.ends, k, test_size=full.n_test,
                               train_frac=cfg.features.train_frac, val_frac=cfg.features.val_frac,
                               min_samples=cfg.features.min_split_samples)
    prior_folds = {f["fold"]: f for f in prior.get("folds", []) if isinstance(f, dict)}
    settings = {"train": cfg.train.to_dict(), "model": cfg.model.to_dict(),
                "features": cfg.features.to_dict(), "fee_per_side": cfg.fee_per_side}
    entries = []
    for fold in folds:
        data = _fold_data(klines, full, fold, cfg, interval, name)
        fp = f"{fingerprint(data)}-{data.n_train}-{data.n_val}"
        old = prior_folds.get(fold.index + 1)
        csv = layout.walk_forward_path(symbol, interval, fold.index)
        if (not retrain and old and old.get("fingerprint") == fp and csv.exists()
                and old.get("settings") == settings):
            log.info("%s_%s: walk-forward fold %d/%d already done", symbol, interval,
                     fold.index + 1, k)
            entries.append(old)
            continue
        entries.append(_train_fold(data, fold, cfg, interval, csv, layout,
                                   desc=f"{symbol}_{interval} fold {fold.index + 1}/{k}",
                                   fingerprint=fp, settings=settings))
        if on_fold:
            on_fold(entries)
    return {"k": k, "status": "success", "folds": entries,
            "pooled": pool_folds(entries, interval, layout=layout, fee_per_side=cfg.fee_per_side)}


def _fold_data(klines, full: PreparedData, fold, cfg, interval: str, name: str) -> PreparedData:
    tf, vf = fold_fractions(fold)
    fcfg = dataclasses.replace(cfg.features, train_frac=tf, val_frac=vf)
    data = prepare_dataset(klines.iloc[:fold.n_candles], fcfg, interval=interval, name=name)
    if (data.n_train, data.n_val, data.n_test) != (fold.n_train, fold.n_val, fold.n_test) \
            or not np.array_equal(data.ends, full.ends[:fold.n_samples]):
        raise V3Error(f"{name}: walk-forward fold {fold.index + 1} split into "
                      f"{data.n_train}/{data.n_val}/{data.n_test} samples, planned "
                      f"{fold.n_train}/{fold.n_val}/{fold.n_test}; please report this.")
    return data


def _train_fold(data: PreparedData, fold, cfg, interval: str, csv, layout: RunLayout, *,
                desc: str, fingerprint: str, settings: dict) -> dict:
    model_cfg = dataclasses.replace(cfg.model, input_size=data.transform.n_components)
    outcome = train_model(data, model_cfg, cfg.train, desc=desc, show_progress=cfg.show_progress)
    scored = score_model(best_model(model_cfg, outcome.best_state), data, interval,
                         fee_per_side=cfg.fee_per_side, patience=cfg.train.patience)
    write_predictions(csv, data, scored, baselines=True)
    tr, te = data.split("train"), data.split("test")
    entry = {"fold": fold.index + 1, "fingerprint": fingerprint, "settings": settings,
             "n_candles": fold.n_candles, "n_train": data.n_train, "n_val": data.n_val,
             "n_test": data.n_test,
             "train_first_open_time": int(data.target_open_time[tr][0]),
             "train_last_open_time": int(data.target_open_time[tr][-1]),
             "test_first_open_time": int(data.target_open_time[te][0]),
             "test_last_open_time": int(data.target_open_time[te][-1]),
             "best_epoch": outcome.best_epoch, "total_epochs": outcome.epochs_done,
             "mase_scale": scored["mase_scale"], "test": scored["test"],
             "baseline": scored["baseline"], "backtest": scored["backtest"],
             "linear_alpha": scored["tuning"]["linear"]["alpha"],
             "predictions_path": layout.relative(csv)}
    skill, acc = entry["test"]["skill"], entry["test"]["directional_accuracy"]
    log.info("%s: skill %s, direction %s%%", desc, "-" if skill is None else f"{skill:+.4f}",
             "-" if acc is None else f"{acc:.1f}")
    return entry


def pool_folds(entries: list[dict], interval: str, *, layout: RunLayout,
               fee_per_side: float) -> dict:
    """Metrics over the test samples of all folds together (each scaled by its own fold's
    naive MAE for MASE), with the baselines and the backtest on the same samples."""
    df = pd.concat([pd.read_csv(layout.base_dir / e["predictions_path"]) for e in entries])
    scale = np.concatenate([np.full(e["n_test"], e["mase_scale"]) for e in entries])
    last, actual = df["last_close"].to_numpy(), df["actual_close"].to_numpy()
    m = lambda col: forecast_metrics(actual, df[col].to_numpy(), last, mase_scale=scale)  # noqa: E731
    model_interval, interval_baselines = pooled_intervals(df)
    test = m("predicted_close")
    if model_interval is not None:
        test["interval"] = model_interval
    return {"n_folds": len(entries), "test": test,
            "baseline": {"persistence": m("last_close"), "drift": m("drift_close"),
                         "linear": m("linear_close"), **interval_baselines},
            "backtest": backtest_direction(df["predicted_close"].to_numpy(), last, actual,
                                           interval=interval, fee_per_side=fee_per_side)}


def pooled_intervals(df: pd.DataFrame) -> tuple[dict | None, dict]:
    """Interval metrics over the pooled samples of a predictions frame: (the model's block or
    None, {baseline: {"interval": block}}) for the quantile columns it has."""
    last = df["last_close"].to_numpy()
    y = np.log(df["actual_close"].to_numpy() / last)
    cols = {"model": list(QUANTILE_COLUMNS)}
    cols.update({b: [f"{b}_{c}" for c in QUANTILE_COLUMNS] for b in INTERVAL_BASELINES})
    q = {name: np.log(df[c].to_numpy() / last[:, None]) for name, c in cols.items()
         if all(x in df.columns for x in c)}
    losses = {name: per_sample_pinball(y, v) for name, v in q.items() if name != "model"}
    blocks = {name: interval_metrics(y, v, baseline_losses=losses) for name, v in q.items()}
    if "model" in blocks:
        add_confidence_set(blocks["model"], {"model": per_sample_pinball(y, q["model"]), **losses})
    return blocks.pop("model", None), {name: {"interval": b} for name, b in blocks.items()}


# ---------------------------------------------------------------------------------------
# Small shared pieces


def fingerprint(data: PreparedData) -> str:
    """What identifies the samples a model was trained on."""
    return f"{data.first_open_time}-{data.last_open_time}-{len(data.ends)}-{data.seq_len}"


def best_model(model_cfg, state: dict):
    """The model with the given (best) weights, in eval mode."""
    m = V3LSTMModel(model_cfg)
    m.load_state_dict(state)
    return m.eval()
