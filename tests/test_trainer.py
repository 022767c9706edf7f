import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import TINY_FEATURES, TINY_MODEL, TINY_TRAIN
from v3_common import CheckpointError, ConfigError
from v3_data_processor import prepare_dataset
from v3_market_data import synthetic_klines
from v3_trainer import (TrainConfig, TrainJob, amp_dtype, check_train_config,
                        load_checkpoint, load_resume_state, predict_standardized, train_jobs,
                        train_model)
from v3_lstm_model import V3LSTMModel


@pytest.fixture(scope="module")
def data():
    return prepare_dataset(synthetic_klines("BTCUSDT", "1h", 700), TINY_FEATURES, interval="1h")


def test_training_is_deterministic(data):
    a = train_model(data, TINY_MODEL, TINY_TRAIN, show_progress=False)
    b = train_model(data, TINY_MODEL, TINY_TRAIN, show_progress=False)
    assert a.history == b.history or all(
        x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-6) for x, y in zip(a.history, b.history))
    for k in a.best_state:
        torch.testing.assert_close(a.best_state[k], b.best_state[k])


def test_early_stopping_restores_the_best_weights(data):
    cfg = dataclasses.replace(TINY_TRAIN, epochs=30, patience=2, learning_rate=0.02)
    out = train_model(data, TINY_MODEL, cfg, show_progress=False)
    vals = [h["val_loss"] for h in out.history]
    assert out.best_val_loss == min(vals)
    assert out.best_epoch == 1 + int(np.argmin(vals))
    assert out.stopped_early and out.epochs_done == out.best_epoch + cfg.patience < 30
    # the returned weights really are the best epoch's: recompute their validation loss
    model = V3LSTMModel(TINY_MODEL)
    model.load_state_dict(out.best_state)
    va = data.split("val")
    pred = predict_standardized(model, data, va)
    assert float(np.mean((pred - data.target[va]) ** 2)) == pytest.approx(out.best_val_loss, rel=1e-5)


def test_gradients_are_clipped_and_accumulated(data, monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        calls.append(max_norm)
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = dataclasses.replace(TINY_TRAIN, epochs=1, batch_size=16, grad_accum_steps=3)
    train_model(data, TINY_MODEL, cfg, show_progress=False)
    n_batches = -(-data.n_train // 16)
    assert calls == [1.0] * -(-n_batches // 3)  # one optimizer step per 3 batches


def test_checkpoint_fn_gets_a_resumable_state(data, tmp_path):
    saved = []
    out = train_model(data, TINY_MODEL, TINY_TRAIN, show_progress=False, checkpoint_fn=saved.append)
    assert saved and saved[-1]["epoch"] == out.epochs_done
    for key in ("model_state", "optimizer_state", "scheduler_state", "best_state", "history"):
        assert key in saved[-1]
    from v3_trainer import save_resume_state
    save_resume_state(saved[-1], tmp_path / "r.pt")
    st = load_resume_state(tmp_path / "r.pt")  # weights_only=True inside
    assert st["epoch"] == out.epochs_done
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert load_resume_state(tmp_path / "bad.pt") is None
    assert load_resume_state(tmp_path / "none.pt") is None


def test_train_jobs_isolates_failures(data):
    from v3_common import InsufficientDataError
    done, failed = [], []

    def on_done(job, outcome):
        if job.key == "B":
            raise InsufficientDataError("boom")
        done.append(job.key)

    jobs = [TrainJob(key=k, symbol=k, interval="1h", data=data, model_config=TINY_MODEL)
            for k in ("A", "B", "C")]
    cfg = dataclasses.replace(TINY_TRAIN, epochs=1)
    train_jobs(jobs, cfg, show_progress=False, on_done=on_done,
               on_error=lambda job, e: failed.append((job.key, str(e))))
    assert done == ["A", "C"] and failed == [("B", "boom")]


@pytest.mark.parametrize("over,text", [
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"epochs": 2.5}, "epochs must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": 0}, "learning_rate must be > 0"),
    ({"amp": "fp8"}, "amp must be"),
])
def test_bad_train_config(over, text):
    with pytest.raises(ConfigError, match=text):
        check_train_config(dataclasses.replace(TrainConfig(), **over))


def test_cpu_trains_in_fp32():
    assert amp_dtype(TrainConfig(amp="fp16"), torch.device("cpu")) is None


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable V3 checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"format": "v2", "model_state": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="has format 'v2'"):
        load_checkpoint(tmp_path / "old.pt")
