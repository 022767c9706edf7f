import dataclasses
import logging

import numpy as np
import pytest
import torch

from tests.conftest import TINY_FEATURES, TINY_MODEL, TINY_TRAIN
from v3_common import CheckpointError, ConfigError
from v3_data_processor import prepare_dataset
from v3_market_data import synthetic_klines
import v3_trainer
from v3_trainer import (TrainConfig, TrainJob, amp_dtype, check_train_config,
                        load_checkpoint, load_resume_state, predict_standardized, resolve_engine,
                        train_jobs, train_model)
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


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable V3 checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"format": "v2", "model_state": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="has format 'v2'"):
        load_checkpoint(tmp_path / "old.pt")


# -- engine and precision choice (v3_fast_train is tested in test_fast_train.py) -----------


@pytest.fixture(scope="module")
def data15():
    return prepare_dataset(synthetic_klines("BTCUSDT", "15m", 700), TINY_FEATURES, interval="15m")


def test_engine_auto_is_plain_on_cpu_fast_on_cuda_and_plain_for_mixed_precision(caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine(TrainConfig(), cpu) == "plain"
    assert resolve_engine(TrainConfig(), cuda) == "fast"
    assert resolve_engine(TrainConfig(engine="plain"), cuda) == "plain"
    assert resolve_engine(TrainConfig(engine="fast"), cpu) == "fast"
    with caplog.at_level(logging.INFO, logger="v3"):
        assert resolve_engine(TrainConfig(amp="bf16"), cuda) == "plain"
    assert "engine auto: amp='bf16' asked for, so the plain loop" in caplog.text


def test_bad_engine_and_fast_with_mixed_precision_are_config_errors():
    with pytest.raises(ConfigError, match="engine must be one of 'auto', 'fast', 'plain', got 'turbo'"):
        check_train_config(TrainConfig(engine="turbo"))
    with pytest.raises(ConfigError, match=r"engine 'fast' trains in fp32, but amp='fp16'.*--engine plain"):
        check_train_config(TrainConfig(engine="fast", amp="fp16"))
    check_train_config(TrainConfig(engine="fast", amp="off"))


def test_precision_auto_is_fp32_everywhere_and_bf16_needs_ampere(monkeypatch, caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(TrainConfig(amp="fp16"), cpu) is None          # CPU always fp32
    assert amp_dtype(TrainConfig(), cuda) is None                   # 'auto': fp32, launch-bound model
    assert amp_dtype(TrainConfig(amp="off"), cuda) is None
    assert amp_dtype(TrainConfig(amp="fp16"), cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    with caplog.at_level(logging.WARNING, logger="v3"):
        assert amp_dtype(TrainConfig(amp="bf16"), cuda) is torch.float16
    assert "amp='bf16' asked for, but Tesla T4 (compute capability 7.5) has no bf16; using fp16" \
        in caplog.text
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert amp_dtype(TrainConfig(amp="bf16"), cuda) is torch.bfloat16


def test_train_jobs_on_cpu_uses_the_plain_loop_and_says_so(data15, caplog):
    job = TrainJob(key="BTCUSDT_15m", symbol="BTCUSDT", interval="15m", data=data15,
                   model_config=TINY_MODEL)
    with caplog.at_level(logging.INFO, logger="v3"):
        out = train_jobs([job], dataclasses.replace(TINY_TRAIN, epochs=1, device="cpu"),
                         show_progress=False)
    assert out["BTCUSDT_15m"].engine == "plain" and out["BTCUSDT_15m"].epochs_done == 1
    assert "training engine: plain (engine=auto)" in caplog.text


def test_train_jobs_with_no_jobs_does_nothing():
    assert train_jobs([], TrainConfig(engine="turbo")) == {}


def test_a_device_that_is_not_there_fails_every_job_by_name(data15, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    jobs = [TrainJob(key=k, symbol="BTCUSDT", interval="15m", data=data15, model_config=TINY_MODEL)
            for k in ("a", "b")]
    failed = {}
    out = train_jobs(jobs, dataclasses.replace(TINY_TRAIN, device="cuda"), show_progress=False,
                     on_error=lambda job, e: failed.setdefault(job.key, e))
    assert out == {} and set(failed) == {"a", "b"}
    assert all(isinstance(e, ConfigError) and "CUDA is not available here" in str(e)
               for e in failed.values())
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        train_jobs(jobs, dataclasses.replace(TINY_TRAIN, device="cuda"), show_progress=False)


def test_checkpoints_load_with_weights_only(tmp_path, data15):
    outcome = v3_trainer.train_model(data15, TINY_MODEL, dataclasses.replace(TINY_TRAIN, epochs=1),
                                     show_progress=False)
    path = tmp_path / "m.pt"
    v3_trainer.save_checkpoint(path, model_state=outcome.best_state, model_config=TINY_MODEL,
                               data=data15, feature_config=TINY_FEATURES.to_dict(), meta={})
    ckpt = load_checkpoint(path)                     # torch.load(weights_only=True) inside
    assert type(ckpt["torch_version"]) is str
    model = v3_trainer.model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, TINY_FEATURES.seq_len, TINY_MODEL.input_size)).shape == (2,)
