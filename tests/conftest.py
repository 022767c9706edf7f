"""Shared fixtures: tiny configs and synthetic candles, so every test runs on CPU in seconds."""
from __future__ import annotations

import dataclasses
import logging
import os
import random

import numpy as np
import pytest
import torch

from v3_colab_training import PipelineConfig, V3CoLabPipeline
from v3_data_processor import FeatureConfig
from v3_lstm_model import ModelConfig
from v3_market_data import synthetic_klines
from v3_trainer import TrainConfig

TINY_MODEL = ModelConfig(input_size=8, hidden_size=8, num_layers=1, dropout=0.0)
TINY_FEATURES = FeatureConfig(seq_len=16, n_components=8)
# device "cpu": the suite is about logic and must give the same numbers on a GPU machine too
# (bench/run_gpu_check.sh runs tests/test_trainer.py there; the CUDA tests set their own).
TINY_TRAIN = TrainConfig(epochs=2, batch_size=64, patience=5, checkpoint_every_s=0.0, device="cpu")


def assert_same_state(a, b, where: str = "state") -> None:
    """Two training states (nested dicts and lists of tensors, numbers and strings) are the
    same: the same keys, every tensor equal in dtype, shape and every value (torch.equal),
    every other value ==. Exact on purpose: for a resumed run against an uninterrupted one
    (the same code on the same inputs, one thread), where any difference is a bug."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), \
            f"{where}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: differ by up to {float((a - b).abs().max())}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def without_time(state: dict) -> dict:
    """A resume state without its training time (a clock reading, not a result)."""
    return {k: v for k, v in state.items() if k != "train_seconds"}


def tiny_config(**over) -> PipelineConfig:
    """The suite's run: synthetic candles, a tiny model, no upload, no bars, and the report
    without its plots (drawing them is most of a tiny run's time); tests about the plots
    pass plots=True."""
    cfg = PipelineConfig(candles=700, source="synthetic", model=TINY_MODEL, features=TINY_FEATURES,
                         train=TINY_TRAIN, upload=False, show_progress=False, plots=False)
    return dataclasses.replace(cfg, **over)


@pytest.fixture
def tiny_pipeline(tmp_path):
    """A pipeline on 1 coin x 2 timeframes of synthetic data with a tiny model."""
    return V3CoLabPipeline(tmp_path / "out", config=tiny_config(), coins=["BTCUSDT"],
                           timeframes=["15m", "1h"])


@pytest.fixture
def klines():
    return synthetic_klines("BTCUSDT", "15m", 1200)


@pytest.fixture(autouse=True, scope="session")
def _v3_logs_to_caplog():
    """Route the 'v3' logger to pytest's caplog: a marked handler stops setup_logging from
    adding its stdout handler and turning propagation off."""
    log = logging.getLogger("v3")
    h = logging.NullHandler()
    h._v3 = True
    log.addHandler(h)
    log.propagate = True
    yield
    log.removeHandler(h)


TEST_THREADS_ENV = "V3_TEST_THREADS"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """The suite runs torch on one CPU thread (V3_TEST_THREADS=N for another count): the same
    count on every machine, whatever its cores, and the tiny models here are several times
    faster on one thread when the 2 cores are shared (bench/bench_threads.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get(TEST_THREADS_ENV, "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_process_state():
    """Every test starts from, and leaves, the same process-wide state, so the suite passes in
    any order and on any machine: torch's thread count and default dtype, the environment
    variables, the 'v3' and root loggers (level, handlers, propagation), and the global random
    generators of torch, numpy and random. The code under test changes some of these on
    purpose (training seeds torch's generator, the CLI sets the log level); tests change the
    rest. Whatever a test leaves behind is put back here, after its own fixtures are done."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    env = dict(os.environ)
    loggers = {name: (lg, lg.level, list(lg.handlers), lg.propagate)
               for name, lg in (("v3", logging.getLogger("v3")), ("", logging.getLogger()))}
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    for lg, level, handlers, propagate in loggers.values():
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate
    torch.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
