"""Model files and resume files: save and load them, and rebuild a ready model from one.

A model file (save_checkpoint) is what a user keeps: the best weights, the model config, the
fitted PCA transform and everything else needed to predict; `LoadedModel` is one read back
(load_model_file for a local file, v3_hub for one from the Hub). A resume file
(save_resume_state) is v3_trainer.train_model's training state, so an interrupted run
continues where it stopped.

Checkpoints hold only tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads them. A model file carries `content_sha256`, the
sha256 of its tensors (weights, scaler and PCA), and load_checkpoint checks it and that every
tensor is finite: garbage written inside a file, which torch would load, is a CheckpointError.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from v3_common import INTERVAL_MS, CheckpointError, atomic_write_bytes, log
from v3_data_processor import FEATURE_SET_VERSION, WARMUP_CANDLES, FittedTransform, PreparedData
from v3_har import history_candles
from v3_lstm_model import ModelConfig, V3LSTMModel

# 2: the quantile head (quantile_head.* weights, ModelConfig.quantiles / quantile_weight,
# train_pinball / val_pinball in the history). Files of format 1 are refused: re-train.
# 3: ModelConfig.quantile_scale (the head's quantiles in units of the recent volatility).
# A format-2 file is read as it was trained: quantile_scale "none".
# 4: the HAR's coefficients (`har`, v3_har.HarFit.to_dict) and `har_history_candles`, for the
# unit quantile_scale "har"; `stop_on` in the training config. A format-3 file reads as it
# was trained (its quantile_scale is 'ewma' or 'none').
CHECKPOINT_FORMAT = "v3-checkpoint-4"
READABLE_FORMATS = {"v3-checkpoint-2": {"quantile_scale": "none"}, "v3-checkpoint-3": {},
                    CHECKPOINT_FORMAT: {}}
# 4: early stopping on the loss the model is trained on (TrainConfig.stop_on): a state of
# format 3 stopped on the point MSE, so it is not resumed (a fresh start)
RESUME_FORMAT = "v3-resume-4"


def _save(obj: dict, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(path: str | Path, *, model_state: dict, model_config: ModelConfig,
                    data: PreparedData, feature_config: dict, meta: dict) -> str:
    """The model file a user keeps: best weights + everything needed to predict. Returns its
    content_sha256."""
    obj = {
        "format": CHECKPOINT_FORMAT,
        "model_state": model_state,
        "model_config": model_config.to_dict(),
        "feature_config": dict(feature_config),
        "transform": {k: torch.as_tensor(v, dtype=torch.float64)
                      for k, v in data.transform.to_arrays().items()},
        "feature_names": list(data.feature_names),
        "seq_len": int(data.seq_len),
        "warmup_candles": int(WARMUP_CANDLES),
        "feature_set_version": int(FEATURE_SET_VERSION),
        "target_mean": float(data.target_mean),
        "target_std": float(data.target_std),
        "har": data.har.to_dict(),          # the quantile head's 'har' unit, as trained
        "har_history_candles": (history_candles(INTERVAL_MS[meta["interval"]])
                                if meta.get("interval") in INTERVAL_MS else None),
        "torch_version": str(torch.__version__),  # a plain str: weights_only refuses TorchVersion
        **meta,
    }
    obj["content_sha256"] = content_sha256(obj)
    _save(obj, path)
    return obj["content_sha256"]


TENSOR_GROUPS = ("model_state", "transform")  # what content_sha256 covers


def content_sha256(ckpt: dict) -> str:
    """sha256 of a checkpoint's tensors (the weights, the scaler and PCA), by name, dtype,
    shape and bytes: what a model file must still hold when it is loaded again."""
    h = hashlib.sha256()
    for group in TENSOR_GROUPS:
        tensors = ckpt.get(group) or {}
        for name in sorted(tensors):
            t = torch.as_tensor(tensors[name]).detach().cpu().contiguous()
            h.update(f"{group}.{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_tensors(ckpt: dict, path: Path) -> None:
    """CheckpointError when the tensors do not match the file's content_sha256 (files from
    before the hash have none) or one holds NaN/inf."""
    stored = ckpt.get("content_sha256")
    if stored is not None and stored != content_sha256(ckpt):
        raise CheckpointError(
            f"{path} is damaged: its tensors do not match the sha256 stored in it (garbage "
            f"written inside the file?). Re-train the pair (step 4 does it by itself) or "
            f"re-download the file.")
    for group in TENSOR_GROUPS:
        for name, t in (ckpt.get(group) or {}).items():
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise CheckpointError(
                        f"{path} is damaged: {group} {name} holds {bad} NaN/inf "
                        f"value{'s' if bad > 1 else ''}. Re-train the pair (step 4 does it by "
                        f"itself) or re-download the file.")


def load_checkpoint(path: str | Path) -> dict:
    """Read a model checkpoint with weights_only=True; CheckpointError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train that pair first (step 4).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file; translate them all
        raise CheckpointError(f"{path} is not a readable V3 checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}). Re-train or re-download it.") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        version = _format_version(fmt, CHECKPOINT_FORMAT)
        if version is not None and version < _format_version(CHECKPOINT_FORMAT, CHECKPOINT_FORMAT):
            raise CheckpointError(
                f"{path} has format {fmt!r}: it was written by an older V3 (before the "
                f"quantile head), and this V3 reads {CHECKPOINT_FORMAT!r}. Re-train the pair "
                f"(--retrain, or retrain=True) to get a model file of this version.")
        if version is not None:
            raise CheckpointError(f"{path} has format {fmt!r}: it was written by a newer V3 "
                                  f"than this one (which reads {CHECKPOINT_FORMAT!r}). "
                                  f"Update V3 to load it.")
        raise CheckpointError(f"{path} has format {fmt!r}, this V3 reads {CHECKPOINT_FORMAT!r}. "
                              f"Re-train the pair with this version.")
    # an older readable format: its model config as it was trained (the fields added
    # since take their values of then, not today's defaults)
    _check_tensors(ckpt, path)
    upgrade = READABLE_FORMATS[ckpt["format"]]
    if isinstance(ckpt.get("model_config"), dict):
        ckpt["model_config"] = {**upgrade, **ckpt["model_config"]}
    return ckpt


def _format_version(fmt, current: str) -> int | None:
    """N of a format string 'v3-checkpoint-N' (the family of `current`), else None."""
    family = current.rsplit("-", 1)[0] + "-"
    if isinstance(fmt, str) and fmt.startswith(family) and fmt[len(family):].isdigit():
        return int(fmt[len(family):])
    return None


def model_from_checkpoint(ckpt: dict) -> V3LSTMModel:
    """A ready model (eval mode, CPU) from a loaded checkpoint."""
    model = V3LSTMModel(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit the stored model config: {e}") from e
    model.lstm.flatten_parameters()
    return model.eval()


def transform_from_checkpoint(ckpt: dict) -> FittedTransform:
    return FittedTransform.from_arrays({k: v.numpy() for k, v in ckpt["transform"].items()})


def save_resume_state(state: dict, path: str | Path) -> None:
    _save(state, path)


def load_resume_state(path: str | Path) -> dict | None:
    """The saved training state, or None when there is none or it is unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt resume file only costs a fresh start
        log.warning("%s is unreadable (%s); training that pair from scratch", path, type(e).__name__)
        return None
    if not isinstance(st, dict) or st.get("format") != RESUME_FORMAT:
        fmt = st.get("format") if isinstance(st, dict) else type(st).__name__
        log.info("%s has format %r, this V3 resumes %r; training that pair from scratch",
                 path, fmt, RESUME_FORMAT)
        return None
    return st


@dataclass
class LoadedModel:
    """One pair's saved model (a local file or one from the Hub), ready to predict.

    `model` takes windows (batch, seq_len, n_components) of PCA scores and returns the next
    candle's standardised log return; `transform` maps raw indicator rows (in `feature_names`
    order) to those scores; predicted close = last_close * exp(target_mean + target_std * out).
    `model.forward_with_quantiles(windows)` also gives the standardised quantiles at
    `quantiles` (empty without a head), mapped to closes the same way.
    """
    model: V3LSTMModel             # eval mode, CPU
    transform: FittedTransform     # fitted on the training rows only
    symbol: str
    interval: str
    feature_names: list[str]
    seq_len: int
    warmup_candles: int
    target_mean: float
    target_std: float
    checkpoint: dict               # everything in the file: configs, data range, metrics
    path: Path                     # the file (a Hub download lives in the huggingface_hub cache)
    repo_id: str | None            # None for a local file
    revision: str | None           # the commit the file came from

    @property
    def quantiles(self) -> tuple[float, ...]:
        """The levels of the model's quantile head; () when it has none."""
        return tuple(self.model.config.quantiles)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, *, path: Path, repo_id: str | None = None,
                        revision: str | None = None) -> "LoadedModel":
        """Rebuild the model and its preprocessing from a checkpoint read by load_checkpoint."""
        return cls(model=model_from_checkpoint(ckpt), transform=transform_from_checkpoint(ckpt),
                   symbol=str(ckpt["symbol"]), interval=str(ckpt["interval"]),
                   feature_names=list(ckpt["feature_names"]), seq_len=int(ckpt["seq_len"]),
                   warmup_candles=int(ckpt["warmup_candles"]),
                   target_mean=float(ckpt["target_mean"]), target_std=float(ckpt["target_std"]),
                   checkpoint=ckpt, path=Path(path), repo_id=repo_id, revision=revision)


def load_model_file(path: str | Path) -> LoadedModel:
    """A saved model file, checked (weights_only=True, weights fit the config) and rebuilt.
    Raises CheckpointError for a missing, truncated or foreign file."""
    return LoadedModel.from_checkpoint(load_checkpoint(path), path=Path(path))
