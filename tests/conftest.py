"""Shared fixtures: tiny configs and synthetic candles, so every test runs on CPU in seconds."""
from __future__ import annotations

import dataclasses
import logging

import pytest

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


def tiny_config(**over) -> PipelineConfig:
    cfg = PipelineConfig(candles=700, source="synthetic", model=TINY_MODEL, features=TINY_FEATURES,
                         train=TINY_TRAIN, upload=False, show_progress=False)
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
