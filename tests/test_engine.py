"""v3_engine: the engine choice (plain / fast / fallback) and torch's CPU threads, in one place."""
import dataclasses
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import v3_fast_group

from tests.conftest import TINY_FEATURES, TINY_MODEL, TINY_TRAIN
from v3_common import ConfigError, InsufficientDataError
from v3_data_processor import prepare_dataset
from v3_engine import resolve_engine, train_jobs
from v3_market_data import synthetic_klines
from v3_trainer import TrainConfig, TrainJob

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return prepare_dataset(synthetic_klines("BTCUSDT", "1h", 700), TINY_FEATURES, interval="1h")


@pytest.fixture(scope="module")
def data15():
    return prepare_dataset(synthetic_klines("BTCUSDT", "15m", 700), TINY_FEATURES, interval="15m")


def test_train_jobs_isolates_failures(data):
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


def test_engine_auto_is_plain_on_cpu_fast_on_cuda_and_plain_for_mixed_precision(caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine(TrainConfig(), cpu) == "plain"
    assert resolve_engine(TrainConfig(), cuda) == "fast"
    assert resolve_engine(TrainConfig(engine="plain"), cuda) == "plain"
    assert resolve_engine(TrainConfig(engine="fast"), cpu) == "fast"
    with caplog.at_level(logging.INFO, logger="v3"):
        assert resolve_engine(TrainConfig(amp="bf16"), cuda) == "plain"
    assert "engine auto: amp='bf16' asked for, so the plain loop" in caplog.text


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



@pytest.mark.slow
def test_the_trainer_does_not_import_the_fast_engine():
    """No import cycle: v3_trainer is below both engines, v3_engine above them."""
    code = ("import sys, v3_trainer; assert 'v3_fast_train' not in sys.modules, 'cycle'; "
            "import v3_fast_train, v3_engine; assert not hasattr(v3_trainer, 'train_jobs')")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_training_on_cpu_sets_torch_threads_while_it_trains_and_puts_them_back(
        data15, engine, monkeypatch, caplog):
    calls, during = [], []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    monkeypatch.delenv("V3_THREADS", raising=False)
    before = torch.get_num_threads()
    jobs = [TrainJob(key=k, symbol="BTCUSDT", interval="15m", data=data15, model_config=TINY_MODEL)
            for k in ("a", "b")]
    other = 2 if before == 1 else 1
    with caplog.at_level(logging.INFO, logger="v3"):
        out = train_jobs(jobs, dataclasses.replace(TINY_TRAIN, epochs=1, engine=engine,
                                                   threads=other), show_progress=False,
                         on_done=lambda job, o: during.append(torch.get_num_threads()))
    assert during == [other, other]          # each pair trained and was scored with `other`
    assert calls == [other, before]          # set once, and put back once
    assert torch.get_num_threads() == before
    assert f"torch CPU threads: {other} (TrainConfig.threads)" in caplog.text
    assert len(out) == 2


def test_a_bad_V3_THREADS_fails_every_job_naming_the_variable(data15, monkeypatch):
    monkeypatch.setenv("V3_THREADS", "lots")
    job = TrainJob(key="a", symbol="BTCUSDT", interval="15m", data=data15, model_config=TINY_MODEL)
    failed = {}
    assert train_jobs([job], TINY_TRAIN, show_progress=False,
                      on_error=lambda j, e: failed.setdefault(j.key, e)) == {}
    assert isinstance(failed["a"], ConfigError) and "V3_THREADS='lots'" in str(failed["a"])


def test_quantile_head_benchmark_tiny_run_times_both_engines(tmp_path, capsys):
    """bench/bench_quantile_head.py keeps working: both engines, with and without the head."""
    path = ROOT / "bench" / "bench_quantile_head.py"
    spec = importlib.util.spec_from_file_location("bench_quantile_head", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n = torch.get_num_threads()
    try:
        assert bench.main(["--tiny", "--reps", "1", "--epochs", "2", "--train-batches", "2",
                           "--json", str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(n)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["plain", "fast"]
    assert all(r["ms_per_step_with"] > 0 and r["ms_per_step_without"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| model | engine | ms/step without head (best / median) |" in out
    assert "command: python bench/bench_quantile_head.py --tiny" in out


def test_a_group_that_fails_inside_torch_leaves_its_reason_on_the_plain_outcomes(data15, monkeypatch):
    """What the results record (engine, engine_fallback_reason) when the fast engine hands
    a group over after a RuntimeError such as CUDA out of memory."""
    def oom(self):
        raise RuntimeError("CUDA out of memory (test)")

    monkeypatch.setattr(v3_fast_group.TrainGroup, "run_epoch", oom)
    jobs = [TrainJob(key=k, symbol="BTCUSDT", interval="15m", data=data15, model_config=TINY_MODEL)
            for k in ("a", "b")]
    out = train_jobs(jobs, dataclasses.replace(TINY_TRAIN, epochs=1, engine="fast"), show_progress=False)
    assert {(o.engine, o.engine_fallback_reason) for o in out.values()} == {
        ("plain", "fast engine failed (RuntimeError: CUDA out of memory (test))")}
    plain = train_jobs(jobs, dataclasses.replace(TINY_TRAIN, epochs=1, engine="plain"), show_progress=False)
    assert {(o.engine, o.engine_fallback_reason) for o in plain.values()} == {("plain", None)}
