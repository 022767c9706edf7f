"""v3_trainer: engine choice, precision choice, config errors, and train_jobs' contract."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import v3_trainer
from v3_common import ConfigError
from v3_data_processor import prepare_dataset
from v3_trainer import (TrainConfig, TrainJob, amp_dtype, check_train_config, load_checkpoint,
                        resolve_engine, train_jobs)

from conftest import TINY_FEATURES, TINY_MODEL, TINY_TRAIN


@pytest.fixture(scope="module")
def data():
    from v3_market_data import synthetic_klines
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


def test_train_jobs_on_cpu_uses_the_plain_loop_and_says_so(data, caplog):
    job = TrainJob(key="BTCUSDT_15m", symbol="BTCUSDT", interval="15m", data=data,
                   model_config=TINY_MODEL)
    with caplog.at_level(logging.INFO, logger="v3"):
        out = train_jobs([job], dataclasses.replace(TINY_TRAIN, epochs=1, device="cpu"),
                         show_progress=False)
    assert out["BTCUSDT_15m"].engine == "plain" and out["BTCUSDT_15m"].epochs_done == 1
    assert "training engine: plain (engine=auto)" in caplog.text


def test_train_jobs_with_no_jobs_does_nothing():
    assert train_jobs([], TrainConfig(engine="turbo")) == {}


def test_a_device_that_is_not_there_fails_every_job_by_name(data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    jobs = [TrainJob(key=k, symbol="BTCUSDT", interval="15m", data=data, model_config=TINY_MODEL)
            for k in ("a", "b")]
    failed = {}
    out = train_jobs(jobs, dataclasses.replace(TINY_TRAIN, device="cuda"), show_progress=False,
                     on_error=lambda job, e: failed.setdefault(job.key, e))
    assert out == {} and set(failed) == {"a", "b"}
    assert all(isinstance(e, ConfigError) and "CUDA is not available here" in str(e)
               for e in failed.values())
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        train_jobs(jobs, dataclasses.replace(TINY_TRAIN, device="cuda"), show_progress=False)


def test_checkpoints_load_with_weights_only(tmp_path, data):
    outcome = v3_trainer.train_model(data, TINY_MODEL, dataclasses.replace(TINY_TRAIN, epochs=1),
                                     show_progress=False)
    path = tmp_path / "m.pt"
    v3_trainer.save_checkpoint(path, model_state=outcome.best_state, model_config=TINY_MODEL,
                               data=data, feature_config=TINY_FEATURES.to_dict(), meta={})
    ckpt = load_checkpoint(path)                     # torch.load(weights_only=True) inside
    assert type(ckpt["torch_version"]) is str
    model = v3_trainer.model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, TINY_FEATURES.seq_len, TINY_MODEL.input_size)).shape == (2,)
