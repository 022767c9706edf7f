"""The pipeline end to end on synthetic data: artifacts, JSON fields, reloads, bad input."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY_MODEL, TINY_TRAIN, tiny_config
from v3_checkpoint import load_checkpoint, model_from_checkpoint
from v3_colab_training import PipelineConfig, V3CoLabPipeline, demo_config, main
from v3_common import (DEFAULT_COINS, KLINE_COLUMNS, ConfigError, DataValidationError,
                       InsufficientDataError, V3Error)
from v3_data_processor import PreparedData
from v3_interval_scores import interval_metrics
from v3_metrics import regression_metrics
from v3_market_data import read_klines, synthetic_klines, write_klines
from v3_trainer import predict_standardized

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full tiny run: 2 coins x 2 timeframes, synthetic, 2 epochs."""
    base = tmp_path_factory.mktemp("run")
    p = V3CoLabPipeline(base, config=tiny_config(), coins=["BTCUSDT", "ETH"],
                        timeframes=["15m", "1h"])
    results = p.run_full_pipeline(epochs=2, batch_size=64, learning_rate=0.001)
    return p, results


PAIRS = ["BTCUSDT_15m", "BTCUSDT_1h", "ETHUSDT_15m", "ETHUSDT_1h"]


def test_defaults_follow_the_guide(tmp_path):
    p = V3CoLabPipeline(tmp_path)
    assert p.COINS == DEFAULT_COINS and len(p.COINS) == 20
    assert p.COINS[0] == "BTCUSDT" and "LUNAUSDT" in p.COINS and "MATICUSDT" in p.COINS
    assert p.TIMEFRAMES == ["15m", "1h"]
    c = PipelineConfig()
    assert (c.model.input_size, c.model.hidden_size, c.model.num_layers, c.model.dropout,
            c.model.bidirectional, c.model.use_attention) == (30, 128, 3, 0.3, True, True)
    assert (c.train.epochs, c.train.batch_size, c.train.learning_rate) == (100, 32, 0.001)
    assert (c.features.seq_len, c.features.n_components, c.candles) == (60, 30, 3000)
    # replacing per instance does not touch the defaults of other instances
    p.COINS = ["BTCUSDT"]
    assert V3CoLabPipeline(tmp_path).COINS == DEFAULT_COINS


def test_base_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("V3_BASE_DIR", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert V3CoLabPipeline().base_dir == Path("v3_output")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101")
    assert V3CoLabPipeline().base_dir == Path("/content")
    monkeypatch.setenv("V3_BASE_DIR", str(tmp_path))
    assert V3CoLabPipeline().base_dir == tmp_path


@pytest.mark.slow
def test_every_artifact_is_written(trained):
    p, results = trained
    base = p.base_dir
    for key in PAIRS:
        assert (base / "data" / f"{key}.csv").exists()
        assert (base / "all_models" / f"v3_model_{key}.pt").exists()
        assert (base / "results" / "predictions" / f"{key}.csv").exists()
    assert (base / "results" / "v3_training_results.json").exists()
    assert (base / "results" / "config.json").exists()
    header = (base / "data" / "BTCUSDT_15m.csv").read_text().splitlines()[0]
    assert header == ",".join(KLINE_COLUMNS)
    on_disk = json.loads((base / "results" / "v3_training_results.json").read_text())
    assert set(on_disk) - {"_summary"} == set(PAIRS) and on_disk == results


@pytest.mark.slow
def test_results_json_fields(trained):
    _, results = trained
    metric_fields = {"mape", "mae", "rmse", "mse", "directional_accuracy", "n", "n_direction"}
    for key in PAIRS:
        r = results[key]
        assert r["status"] == "success"
        for f in ("best_val_loss", "best_epoch", "total_epochs", "val_mape"):
            assert f in r, f
        assert 1 <= r["best_epoch"] <= r["total_epochs"] == 2
        assert r["best_val_loss"] == min(h["val_stop"] for h in r["history"])
        assert r["stop_on"] == "loss" and r["best_val_mse"] == next(
            h["val_loss"] for h in r["history"] if h["epoch"] == r["best_epoch"])
        vi = r["val_interval"]   # the head on validation, next to har on the same samples
        assert vi["n"] == r["features"]["n_val"] and vi["pinball"] > 0
        assert vi["skill_har"] == pytest.approx(1 - vi["pinball"] / vi["pinball_har"])
        assert metric_fields <= set(r["test"])
        assert metric_fields <= set(r["baseline"]["persistence"])
        assert r["test"]["n"] == r["baseline"]["persistence"]["n"] == r["features"]["n_test"] > 0
        assert r["baseline"]["persistence"]["directional_accuracy"] is None
        assert 0 <= r["test"]["directional_accuracy"] <= 100
        assert r["synthetic"] is True and r["data"]["source"] == "synthetic"
        assert r["data"]["rows"] == 700
        assert "reason" not in r


def test_predictions_csv_and_persistence_recomputed(trained):
    p, results = trained
    for key in PAIRS:
        df = pd.read_csv(p.base_dir / "results" / "predictions" / f"{key}.csv")
        assert list(df.columns)[:4] == ["open_time", "last_close", "actual_close", "predicted_close"]
        levels = ("p05", "p10", "p25", "p50", "p75", "p90", "p95")
        for name in ("garch", "har"):   # the baselines' closes at each quantile ...
            cols = [f"{name}_{c}" for c in levels]
            assert set(cols) <= set(df.columns)
            assert (np.diff(df[cols].to_numpy(), axis=1) >= 0).all()
            # ... and their interval numbers recompute from them (and the model's)
            y = np.log(df.actual_close.to_numpy() / df.last_close.to_numpy())
            q = np.log(df[cols].to_numpy() / df.last_close.to_numpy()[:, None])
            block = results[key]["baseline"][name]["interval"]
            assert interval_metrics(y, q)["pinball"] == pytest.approx(block["pinball"], rel=1e-9)
            assert interval_metrics(y, q)["coverage"] == pytest.approx(block["coverage"], rel=1e-9)
        q = np.log(df[list(levels)].to_numpy() / df.last_close.to_numpy()[:, None])
        model_block = results[key]["test"]["interval"]
        assert interval_metrics(y, q)["pinball"] == pytest.approx(model_block["pinball"], rel=1e-9)
        assert set(model_block["mcs_90"]) <= {"model", "rolling", "ewma", "garch", "har"}
        assert len(df) == results[key]["test"]["n"]
        assert df["open_time"].is_monotonic_increasing
        persist = regression_metrics(df.actual_close, df.last_close, df.last_close)
        assert persist.items() <= results[key]["baseline"]["persistence"].items()
        model = regression_metrics(df.actual_close, df.predicted_close, df.last_close)
        for f in ("mape", "mae", "rmse", "mse", "directional_accuracy"):
            assert model[f] == pytest.approx(results[key]["test"][f], rel=1e-9)
        # the predicted candle follows the last one: actual close is that candle's close
        candles = read_klines(p.base_dir / "data" / f"{key}.csv").set_index("open_time")
        assert np.allclose(candles.loc[df.open_time, "close"].to_numpy(), df.actual_close)


def test_checkpoint_reload_reproduces_predictions(trained):
    p, results = trained
    for key in ("BTCUSDT_15m", "ETHUSDT_1h"):
        path = p.base_dir / "all_models" / f"v3_model_{key}.pt"
        raw = torch.load(path, weights_only=True)  # what a user does
        for field in ("model_state", "model_config", "transform", "feature_names", "seq_len",
                      "data_range", "test", "baseline", "target_mean", "target_std"):
            assert field in raw, field
        assert raw["transform"]["components"].shape == (8, len(raw["feature_names"]))
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt)
        data = PreparedData.load(p.base_dir / "processed" / f"{key}.npz")
        te = data.split("test")
        pred = data.to_close(predict_standardized(model, data, te), te)
        saved = pd.read_csv(p.base_dir / "results" / "predictions" / f"{key}.csv")
        np.testing.assert_allclose(pred, saved.predicted_close, rtol=1e-6)
        assert ckpt["test"] == results[key]["test"]


@pytest.mark.slow
def test_rerun_skips_trained_pairs(trained, caplog):
    p, _ = trained
    before = {k: (p.base_dir / "all_models" / f"v3_model_{k}.pt").stat().st_mtime_ns for k in PAIRS}
    results = p.step_4_train_models(epochs=2)
    assert all(results[k]["status"] == "skipped" for k in PAIRS)
    assert "already trained" in results["BTCUSDT_15m"]["skip_reason"]
    assert "skipped, already trained" in caplog.text
    after = {k: (p.base_dir / "all_models" / f"v3_model_{k}.pt").stat().st_mtime_ns for k in PAIRS}
    assert before == after
    assert results["BTCUSDT_15m"]["test"]["n"] > 0  # the earlier metrics stay


@pytest.mark.slow
def test_an_unchanged_rerun_leaves_results_config_and_models_as_they_are(trained):
    """No rewrite for a new time stamp alone: re-running a finished job (a Colab cell run
    again) gives step 5 nothing new to commit."""
    p, _ = trained
    p.step_4_train_models(epochs=2)  # every pair skipped
    files = [p.results_path, p.results_dir / "config.json"] + sorted(p.models_dir.glob("*.pt"))
    before = [f.read_bytes() for f in files]
    p.step_4_train_models(epochs=2)
    assert [f.read_bytes() for f in files] == before


@pytest.mark.slow
def test_resume_training_continues_from_checkpoint(tmp_path, caplog):
    """The guide's pipeline.step_3_train_models(epochs=N) continues instead of restarting,
    and 2 + 2 epochs give the same model as 4 epochs straight."""
    cfg = tiny_config(train=dataclasses.replace(tiny_config().train, early_stopping=False))
    a = V3CoLabPipeline(tmp_path / "a", config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    a.step_1_setup_environment()
    a.step_2_download_binance_data()
    # no explicit step 3: the resume call preprocesses what is missing
    r = a.step_3_train_models(epochs=2)
    assert r["BTCUSDT_1h"]["total_epochs"] == 2
    r = a.step_3_train_models(epochs=4)
    assert "resuming from epoch 2" in caplog.text
    assert r["BTCUSDT_1h"]["status"] == "success" and r["BTCUSDT_1h"]["total_epochs"] == 4
    assert [h["epoch"] for h in r["BTCUSDT_1h"]["history"]] == [1, 2, 3, 4]

    b = V3CoLabPipeline(tmp_path / "b", config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    rb = b.run_full_pipeline(epochs=4, batch_size=cfg.train.batch_size, upload=False)
    ha = [h["val_loss"] for h in r["BTCUSDT_1h"]["history"]]
    hb = [h["val_loss"] for h in rb["BTCUSDT_1h"]["history"]]
    np.testing.assert_allclose(ha, hb, rtol=1e-5)


@pytest.mark.slow
def test_interrupted_training_resumes(tmp_path, monkeypatch, caplog):
    """Ctrl-C mid-run keeps the finished epochs; the next call picks up from there."""
    import v3_trainer
    cfg = tiny_config(train=dataclasses.replace(tiny_config().train, epochs=3, early_stopping=False))
    p = V3CoLabPipeline(tmp_path, config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    p.step_2_download_binance_data()
    p.step_3_preprocess_features()
    real = v3_trainer._mse
    calls = {"n": 0}

    def interrupt_on_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(v3_trainer, "_mse", interrupt_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        p.step_4_train_models()
    monkeypatch.setattr(v3_trainer, "_mse", real)
    assert p.layout.resume_path("BTCUSDT", "1h").exists()
    assert not p.model_path("BTCUSDT", "1h").exists()
    r = p.step_4_train_models()
    assert "resuming from epoch 1" in caplog.text
    assert r["BTCUSDT_1h"]["total_epochs"] == 3


@pytest.mark.slow
def test_retrain_and_changed_data_train_from_scratch(trained, caplog):
    p, _ = trained
    r = p.step_4_train_models(epochs=2, retrain=True)
    assert r["BTCUSDT_15m"]["status"] == "success"
    assert [h["epoch"] for h in r["BTCUSDT_15m"]["history"]] == [1, 2]


@pytest.mark.slow
def test_one_bad_pair_does_not_stop_the_others(tmp_path):
    src = tmp_path / "csv"
    src.mkdir()
    write_klines(synthetic_klines("BTCUSDT", "1h", 700), src / "BTCUSDT_1h.csv")
    bad = synthetic_klines("ETHUSDT", "1h", 700)
    bad.loc[10, "high"] = bad.loc[10, "low"] / 2  # high < low
    write_klines(bad, src / "ETHUSDT_1h.csv")
    write_klines(synthetic_klines("SOLUSDT", "1h", 200), src / "SOLUSDT_1h.csv")  # too short
    (src / "XRPUSDT_1h.csv").write_text("not,a,kline,file\n1,2,3,4\n")
    p = V3CoLabPipeline(tmp_path / "out", config=tiny_config(source="csv", data_dir=str(src)),
                        coins=["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"],
                        timeframes=["1h"])
    r = p.run_full_pipeline(epochs=1, batch_size=64)
    assert r["BTCUSDT_1h"]["status"] == "success"
    assert r["ETHUSDT_1h"]["status"] == "failed" and "high < low" in r["ETHUSDT_1h"]["reason"]
    assert r["SOLUSDT_1h"]["status"] == "failed" and "200 candles" in r["SOLUSDT_1h"]["reason"]
    assert r["XRPUSDT_1h"]["status"] == "failed" and "lacks the column" in r["XRPUSDT_1h"]["reason"]
    assert r["ADAUSDT_1h"]["status"] == "failed" and "no CSV for ADAUSDT 1h" in r["ADAUSDT_1h"]["reason"]
    assert r["ADAUSDT_1h"]["failed_step"] == "download"
    assert "\n" not in r["ETHUSDT_1h"]["reason"]


@pytest.mark.parametrize("coins,timeframes,over,err,text", [
    (["btc-usd"], ["1h"], {}, ConfigError, "not a Binance symbol"),
    (["BTCUSDT"], ["2m"], {}, ConfigError, "timeframe '2m' is not supported"),
    ([], ["1h"], {}, ConfigError, "COINS must be a non-empty list"),
    ("BTCUSDT", ["1h"], {}, ConfigError, "COINS must be a non-empty list"),
    (["BTCUSDT"], ["1h"], {"candles": 100}, ConfigError, "candles=100 is too few: need >= "),
    (["BTCUSDT"], ["1h"], {"source": "csv"}, ConfigError, "--data-dir"),
    (["BTCUSDT"], ["1h"], {"source": "kraken"}, ConfigError, "source 'kraken'"),
    (["BTCUSDT"], ["1h"], {"model": dataclasses.replace(TINY_MODEL, hidden_size=0)}, ConfigError,
     "model hidden_size=0"),
    (["BTCUSDT"], ["1h"], {"train": dataclasses.replace(TINY_TRAIN, device="gpu0")}, ConfigError,
     "device 'gpu0' is not a device torch knows"),
    (["BTCUSDT"], ["1h"], {"source": "binance-archive", "archive_url": "data.binance.vision"},
     ConfigError, "archive URL 'data.binance.vision' is not an http"),
    (["BTCUSDT"], ["1h"], {"upload": True, "hf_folder": "../up"}, ConfigError,
     "Hub folder '../up' is not a plain relative path"),
])
def test_bad_input_fails_before_heavy_work(tmp_path, coins, timeframes, over, err, text):
    p = V3CoLabPipeline(tmp_path, config=tiny_config(**over), coins=coins, timeframes=timeframes)
    with pytest.raises(err, match=text.replace("(", r"\(")):
        p.run_full_pipeline(epochs=1)
    assert not (tmp_path / "data").exists()  # nothing ran


@pytest.mark.parametrize("epochs", [0, -3])
def test_epochs_below_one(tmp_path, epochs):
    p = V3CoLabPipeline(tmp_path, config=tiny_config(), coins=["BTCUSDT"], timeframes=["1h"])
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        p.run_full_pipeline(epochs=epochs)
    assert not (tmp_path / "data").exists()


def test_bare_coin_is_completed(tmp_path):
    p = V3CoLabPipeline(tmp_path, coins=["BTC", "ETHUSDT", "LUNC"], timeframes=["1h"])
    assert [s for s, _ in p.pairs()] == ["BTCUSDT", "ETHUSDT", "LUNCUSDT"]


def test_malformed_csv_errors_are_named(tmp_path):
    (tmp_path / "a.csv").write_text("open_time,open,high\n1,2,3\n")
    with pytest.raises(DataValidationError, match=r"lacks the column\(s\) \['low', 'close', 'volume'\]"):
        read_klines(tmp_path / "a.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        read_klines(tmp_path / "missing.csv")
    (tmp_path / "b.csv.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataValidationError, match="not a readable kline CSV"):
        read_klines(tmp_path / "b.csv.gz")


def test_too_few_candles_in_a_file(tmp_path):
    from v3_data_processor import FeatureConfig, prepare_dataset
    with pytest.raises(InsufficientDataError, match=r"300 candles, need >= \d+ \(warm-up"):
        prepare_dataset(synthetic_klines("BTCUSDT", "1h", 300), FeatureConfig(), interval="1h")


def test_errors_are_v3_errors():
    for e in (ConfigError, DataValidationError, InsufficientDataError):
        assert issubclass(e, V3Error)


# -- command line ----------------------------------------------------------------------


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, "v3_colab_training.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for opt in ("--coins", "--timeframes", "--epochs", "--batch-size", "--learning-rate",
                "--candles", "--source", "--data-dir", "--base-dir", "--steps", "--no-upload",
                "--hf-repo", "--demo", "binance", "csv", "synthetic"):
        assert opt in out, opt


@pytest.mark.slow
def test_cli_demo_subset_and_steps(tmp_path, caplog):
    rc = main(["--demo", "--base-dir", str(tmp_path), "--coins", "SOL", "--timeframes", "1h",
               "--epochs", "1", "--no-progress", "--steps", "setup", "download"])
    assert rc == 0
    assert (tmp_path / "data" / "SOLUSDT_1h.csv").exists()
    assert not (tmp_path / "all_models").exists() or not any((tmp_path / "all_models").iterdir())
    rc = main(["--demo", "--base-dir", str(tmp_path), "--coins", "SOL", "--timeframes", "1h",
               "--epochs", "1", "--no-progress", "--steps", "preprocess", "train"])
    assert rc == 0
    assert (tmp_path / "all_models" / "v3_model_SOLUSDT_1h.pt").exists()
    assert "SYNTHETIC" in caplog.text


def test_cli_bad_input_exit_codes(tmp_path, caplog):
    assert main(["--demo", "--base-dir", str(tmp_path), "--coins", "btc/usdt"]) == 2
    assert "ConfigError" in caplog.text and "not a Binance symbol" in caplog.text
    assert main(["--demo", "--base-dir", str(tmp_path), "--epochs", "0"]) == 2
    # nothing usable: every pair fails -> exit code 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--source", "csv", "--data-dir", str(empty), "--base-dir", str(tmp_path / "o"),
                 "--coins", "BTCUSDT", "--timeframes", "1h", "--no-upload", "--no-progress",
                 "--epochs", "1"]) == 1


def test_cli_quiet_shows_only_warnings(tmp_path, caplog):
    import logging
    v3_log = logging.getLogger("v3")
    level = v3_log.level
    try:
        rc = main(["--demo", "--base-dir", str(tmp_path), "--quiet", "--no-progress",
                   "--steps", "setup"])
        assert v3_log.level == logging.WARNING  # not reset to INFO by the pipeline
    finally:
        v3_log.setLevel(level)
    assert rc == 0
    assert "STEP 1/5" not in caplog.text and "demo preset" not in caplog.text


def test_cli_device_typo_is_a_named_error_before_any_work(tmp_path, caplog):
    assert main(["--demo", "--base-dir", str(tmp_path), "--device", "gpu0", "--no-progress"]) == 2
    assert "ConfigError: device 'gpu0' is not a device torch knows" in caplog.text
    assert not (tmp_path / "data").exists()


def test_nothing_trained_exits_1_and_skips_the_upload(tmp_path, caplog, monkeypatch):
    """Every pair failing is exit code 1 (README), not an UploadError ('no models') from
    step 5, with or without a token."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_used")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--source", "csv", "--data-dir", str(empty), "--base-dir", str(tmp_path / "o"),
                 "--coins", "BTCUSDT", "--timeframes", "1h", "--no-progress", "--epochs", "1",
                 "--hf-repo", "alice/cpb-models"]) == 1
    assert "nothing to upload" in caplog.text and "UploadError" not in caplog.text
    p = V3CoLabPipeline(tmp_path / "o2", config=tiny_config(source="csv", data_dir=str(empty),
                                                            upload=True),
                        coins=["BTCUSDT"], timeframes=["1h"])
    results = p.run_full_pipeline(epochs=1)
    assert results["BTCUSDT_1h"]["status"] == "failed"


def test_demo_preset_is_small_and_offline():
    c = demo_config()
    assert c.source == "synthetic" and c.upload is False
    assert c.model.hidden_size < PipelineConfig().model.hidden_size


@pytest.mark.slow
def test_newer_candles_do_not_retrain_finished_or_interrupted_pairs(tmp_path, caplog):
    """A Colab re-run fetches newer candles: finished pairs stay skipped, and a longer
    training resumes on the candles it started with; retrain=True uses the new ones."""
    from v3_market_data import data_path
    cfg = tiny_config(train=dataclasses.replace(tiny_config().train, early_stopping=False))
    p = V3CoLabPipeline(tmp_path, config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    full = synthetic_klines("BTCUSDT", "1h", 760)
    path = data_path(p.data_dir, "BTCUSDT", "1h")
    write_klines(full.iloc[:700], path)
    first = p.step_4_train_models(epochs=2)["BTCUSDT_1h"]
    assert first["status"] == "success"
    write_klines(full, path)  # 60 newer candles arrived
    r = p.step_4_train_models(epochs=2)["BTCUSDT_1h"]
    assert r["status"] == "skipped"
    assert "keeps the candles it was trained on" in caplog.text
    r = p.step_3_train_models(epochs=3)["BTCUSDT_1h"]
    assert r["status"] == "success" and r["total_epochs"] == 3
    assert r["features"]["n_samples"] == first["features"]["n_samples"]  # same candles
    assert "resuming from epoch 2" in caplog.text
    preds = pd.read_csv(p.predictions_path("BTCUSDT", "1h"))
    assert preds.open_time.iloc[-1] == full.open_time.iloc[699]
    r = p.step_4_train_models(epochs=3, retrain=True)["BTCUSDT_1h"]
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
    preds = pd.read_csv(p.predictions_path("BTCUSDT", "1h"))
    assert preds.open_time.iloc[-1] == full.open_time.iloc[-1]  # the latest 700 candles


# ---------------------------------------------------------------------------------------
# One config that flows, and what a new user tripped over


def _no_token(monkeypatch, tmp_path):
    from huggingface_hub import constants
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))


@pytest.mark.slow
def test_the_config_is_frozen_and_run_full_pipeline_keeps_what_was_not_passed(tmp_path):
    """V3CoLabPipeline(config=demo_config()).run_full_pipeline() used to train 100 epochs:
    the defaults of run_full_pipeline replaced the preset's."""
    cfg = tiny_config(train=dataclasses.replace(TINY_TRAIN, epochs=3, early_stopping=False))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.candles = 10
    p = V3CoLabPipeline(tmp_path, config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    r = p.run_full_pipeline()["BTCUSDT_1h"]
    assert r["total_epochs"] == 3 and r["train_config"]["batch_size"] == TINY_TRAIN.batch_size \
        if "train_config" in r else r["total_epochs"] == 3
    assert p.config is cfg  # the caller's config is never changed
    assert json.loads((tmp_path / "results" / "config.json").read_text())["train"]["epochs"] == 3
    assert demo_config().train.epochs == 5 and demo_config().coins == ("BTCUSDT", "ETHUSDT")


def test_lower_case_coins_are_normalised(tmp_path):
    p = V3CoLabPipeline(tmp_path, config=tiny_config(), coins=["btc", "ethusdt"], timeframes=["1h"])
    assert p.pairs() == [("BTCUSDT", "1h"), ("ETHUSDT", "1h")]
    assert p.checked_config().coins == ("BTCUSDT", "ETHUSDT")


@pytest.mark.parametrize("token", [False, True])
def test_a_bad_hf_repo_fails_before_any_work_token_or_not(tmp_path, caplog, monkeypatch, token):
    _no_token(monkeypatch, tmp_path)
    if token:
        monkeypatch.setenv("HF_TOKEN", "hf_not_used")
    rc = main(["--demo", "--base-dir", str(tmp_path / "o"), "--hf-repo", "bad repo name",
               "--no-progress"])
    assert rc == 2 and "ConfigError" in caplog.text and "bad repo name" in caplog.text
    assert not (tmp_path / "o" / "data").exists()  # nothing downloaded or trained


def test_steps_take_comma_lists_and_unknown_steps_are_usage_errors(tmp_path, capsys):
    from v3_colab_training import build_parser, pipeline_from_args
    args = build_parser().parse_args(["--demo", "--steps", "train,upload", "setup"])
    assert pipeline_from_args(args)[1] == ["setup", "train", "upload"]  # in pipeline order
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--steps", "train,uplod"])
    assert e.value.code == 2 and "unknown step 'uplod'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_pair_that_stopped_early_is_finished_and_one_at_the_limit_continues(tmp_path, caplog):
    """Re-run with more epochs, a pair that stopped early used to get a fresh patience window
    and different results; now it is skipped with the reason, and only pairs that hit the
    epoch limit continue."""
    import torch as _torch
    cfg = tiny_config(train=dataclasses.replace(TINY_TRAIN, patience=1, epochs=30))
    p = V3CoLabPipeline(tmp_path, config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    p.step_2_download_binance_data()
    first = p.step_4_train_models()["BTCUSDT_1h"]
    assert first["stopped_early"] and first["total_epochs"] < 30
    caplog.clear()
    again = p.step_4_train_models(epochs=60)["BTCUSDT_1h"]
    assert again["status"] == "skipped" and again["history"] == first["history"]
    assert (f"stopped early at epoch {first['total_epochs']} (best {first['best_epoch']}); "
            f"--retrain") in again["skip_reason"]
    state = _torch.load(p.layout.resume_path("BTCUSDT", "1h"), weights_only=True)
    assert state["epochs_requested"] == 30  # untouched by the skipped re-run


@pytest.mark.slow
def test_a_truncated_model_file_is_retrained_not_skipped(trained, tmp_path, caplog):
    import shutil
    p0, _ = trained
    base = tmp_path / "copy"
    shutil.copytree(p0.base_dir, base)
    p = V3CoLabPipeline(base, config=p0.config, coins=["BTCUSDT"], timeframes=["1h"])
    path = p.model_path("BTCUSDT", "1h")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    from v3_common import CheckpointError, shorten
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    r = p.step_4_train_models(epochs=2)["BTCUSDT_1h"]
    assert r["status"] == "success"  # trained again, not "skipped, already trained"
    # issue 21 item 7: the reason was cut mid-word at 200 characters; now at a word, with '...'
    assert len(str(err.value)) > 200
    assert (f"BTCUSDT_1h: its model file cannot be read ({shorten(str(err.value), 200)}); "
            f"training it again") in caplog.text
    assert shorten(str(err.value), 200).endswith("...")
    load_checkpoint(path)  # whole again


@pytest.mark.slow
def test_report_only_marks_pairs_it_could_not_rescore_and_exits_1(trained, tmp_path, caplog):
    import shutil
    p0, _ = trained
    base = tmp_path / "copy"
    shutil.copytree(p0.base_dir, base)
    path = base / "all_models" / "v3_model_BTCUSDT_1h.pt"
    path.write_bytes(path.read_bytes()[:100])
    rc = main(["--base-dir", str(base), "--coins", "BTCUSDT", "ETHUSDT", "--report-only",
               "--source", "synthetic", "--candles", "700", "--no-progress"])
    assert rc == 1 and "could not re-score 1 pair (BTCUSDT_1h)" in caplog.text
    results = json.loads((base / "results" / "v3_training_results.json").read_text())
    assert "CheckpointError" not in results["BTCUSDT_1h"]["rescore_error"]
    assert "not a readable V3 checkpoint" in results["BTCUSDT_1h"]["rescore_error"]
    assert "rescore_error" not in results["ETHUSDT_1h"]
    report = (base / "results" / "report.md").read_text()
    assert "## Pairs that could not be re-scored" in report
    assert "| BTCUSDT_1h |" in report.split("could not be re-scored")[1].split("##")[0]


def test_every_pair_failing_says_so(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["--source", "csv", "--data-dir", str(empty), "--base-dir", str(tmp_path / "o"),
               "--coins", "BTCUSDT", "ETHUSDT", "--timeframes", "1h", "--no-progress",
               "--no-upload"])
    assert rc == 1
    assert "all 2 pairs failed (download)" in caplog.text
    assert "v3_training_results.json" in caplog.text


def test_an_upload_asked_for_without_a_token_exits_1_even_quiet(trained, tmp_path, monkeypatch,
                                                                 caplog):
    _no_token(monkeypatch, tmp_path)
    p0, _ = trained
    rc = main(["--base-dir", str(p0.base_dir), "--coins", "BTCUSDT", "ETH", "--source",
               "synthetic", "--candles", "700", "--steps", "upload", "--quiet"])
    assert rc == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("the upload you asked for was skipped: no Hugging Face token" in m for m in errors)
    # issue 21 item 7: it went on with "nothing usable was produced", with 4 models there
    assert errors[-1] == ("STEP 5/5: the upload you asked for was skipped: no Hugging Face token "
                          "(set HF_TOKEN or run `hf auth login`; --no-upload to skip); 4 models "
                          f"ready in {p0.models_dir}")
    assert "nothing usable was produced" not in caplog.text


def test_quiet_hides_progress_bars(tmp_path):
    from v3_colab_training import build_parser, pipeline_from_args
    pipe, _ = pipeline_from_args(build_parser().parse_args(["--demo", "--quiet"]))
    assert pipe.config.show_progress is False


def test_download_workers_0_is_refused_for_every_source(tmp_path, caplog):
    assert main(["--demo", "--base-dir", str(tmp_path), "--download-workers", "0"]) == 2
    assert "download_workers=0" in caplog.text and not (tmp_path / "data").exists()


def test_help_is_instant_it_does_not_import_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "v3_colab_training.py"),
                          "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and "--threads" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert "torch" not in imported and "pandas" not in imported


def test_results_store_the_real_mean_forecast_reference(trained):
    p, results = trained
    r = results["BTCUSDT_1h"]
    data = PreparedData.load(p.processed_path("BTCUSDT", "1h"))
    va = data.split("val")
    # predicting the training mean = 0 in standardised units: the loss is the mean square
    assert r["val_loss_mean_forecast"] == pytest.approx(float(np.mean(data.target[va] ** 2)),
                                                        rel=1e-5)


def test_a_rerun_on_unchanged_data_rewrites_nothing_and_says_so(tmp_path, caplog):
    """Every re-run on the synthetic source used to print '+2000 new' and rewrite data/ and
    processed/ although the bytes were identical."""
    p = V3CoLabPipeline(tmp_path, config=tiny_config(), coins=["BTCUSDT"], timeframes=["1h"])
    p.step_2_download_binance_data()
    p.step_3_preprocess_features()
    files = [p.data_dir / "BTCUSDT_1h.csv", p.processed_path("BTCUSDT", "1h"),
             p.data_dir / "symbol_renames.json"]
    before = [f.stat().st_mtime_ns for f in files]
    caplog.clear()
    p.step_2_download_binance_data()
    p.step_3_preprocess_features()
    assert [f.stat().st_mtime_ns for f in files] == before
    assert "ok, unchanged" in caplog.text and "+700 new" not in caplog.text


def test_threads_flag_reaches_the_training_config(tmp_path):
    from v3_colab_training import build_parser, pipeline_from_args
    pipe, _ = pipeline_from_args(build_parser().parse_args(["--demo", "--threads", "2"]))
    assert pipe.checked_config().train.threads == 2
    assert main(["--demo", "--base-dir", str(tmp_path), "--threads", "0"]) == 2


# -- issue 21: found by a new user ------------------------------------------------------


def test_a_bare_usd_coin_is_refused_with_the_usdt_pair(tmp_path, caplog):
    """`--coins BTCUSD` became BTCUSDUSDT, which then failed as a symbol nobody typed."""
    assert main(["--demo", "--base-dir", str(tmp_path), "--coins", "BTCUSD"]) == 2
    assert ("ConfigError: coin 'BTCUSD' ends in 'USD', but Binance has no USD spot pairs (as a "
            "bare base it would become 'BTCUSDUSDT', which Binance does not list). Did you mean "
            "'BTCUSDT'?") in caplog.text
    assert not (tmp_path / "data").exists()


def _base_dir_error(base) -> str:
    return (f"BaseDirError: base_dir {base}: {{}}. V3 writes its candles, models and results "
            f"there: pass a folder you can write to (--base-dir DIR, V3_BASE_DIR or base_dir=).")


def test_a_base_dir_that_is_a_file_is_a_named_error_before_any_work(tmp_path, caplog):
    """It was a raw NotADirectoryError with exit code 1."""
    base = tmp_path / "out"
    base.write_text("not a folder")
    assert main(["--demo", "--base-dir", str(base), "--no-progress"]) == 2
    assert _base_dir_error(base).format("it is a file, not a folder") in caplog.text
    with pytest.raises(ConfigError, match="it is a file, not a folder"):
        V3CoLabPipeline(base, config=tiny_config()).run_full_pipeline()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_base_dir_under_proc_is_a_named_error(caplog):
    """It was a raw FileNotFoundError with exit code 1."""
    assert main(["--demo", "--base-dir", "/proc/v3_output", "--no-progress"]) == 2
    assert _base_dir_error("/proc/v3_output").format(
        "cannot create it: No such file or directory (ENOENT)") in caplog.text


def test_a_read_only_base_dir_is_refused_before_step_1(tmp_path, caplog, monkeypatch):
    """On a read-only mount it was a raw OSError 30, only after step 2 had started."""
    import errno
    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".v3_write_probe"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert main(["--demo", "--base-dir", str(tmp_path), "--no-progress"]) == 2
    assert _base_dir_error(tmp_path).format(
        "cannot write a file in it: Read-only file system (EROFS)") in caplog.text
    assert "STEP 1/5" not in caplog.text and not (tmp_path / "data").exists()


@pytest.fixture(scope="module")
def trained_from_csv(tmp_path_factory):
    """BTCUSDT 1h trained from a folder of CSVs (source csv), 2 epochs."""
    root = tmp_path_factory.mktemp("csvrun")
    csv_dir = root / "csv"
    write_klines(synthetic_klines("BTCUSDT", "1h", 700), csv_dir / "BTCUSDT_1h.csv")
    p = V3CoLabPipeline(root / "out", config=tiny_config(source="csv", data_dir=str(csv_dir)),
                        coins=["BTCUSDT"], timeframes=["1h"])
    assert p.run_full_pipeline(epochs=2)["BTCUSDT_1h"]["status"] == "success"
    return root


def _break_csv(path: Path, how: str) -> str:
    df = pd.read_csv(path)
    if how == "nan":
        df.loc[500, "close"] = float("nan")
    elif how == "duplicate":
        df.loc[500, "open_time"] = df.loc[499, "open_time"]
    else:
        df = df.drop(columns=["volume"])
    df.to_csv(path, index=False)
    return {"nan": ": NaN or inf in", "duplicate": ": duplicate open_time in 1 row: line 502",
            "missing": " lacks the column(s) ['volume']"}[how]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nan", "duplicate", "missing"])
def test_a_refused_csv_for_a_trained_pair_says_so_and_keeps_the_model(trained_from_csv, tmp_path,
                                                                      caplog, how):
    """Issue 21 item 1: the pair was recorded as 'skipped, already trained', with no reason
    and no failed step; the final table and the report hid the refusal."""
    import shutil
    shutil.copytree(trained_from_csv, tmp_path / "run")
    base, csv = tmp_path / "run" / "out", tmp_path / "run" / "csv"
    model = (base / "all_models" / "v3_model_BTCUSDT_1h.pt").read_bytes()
    text = _break_csv(csv / "BTCUSDT_1h.csv", how)
    p = V3CoLabPipeline(base, config=tiny_config(source="csv", data_dir=str(csv)),
                        coins=["BTCUSDT"], timeframes=["1h"])
    r = p.run_full_pipeline(epochs=2)["BTCUSDT_1h"]
    assert r["status"] == "skipped" and r["data_rejected"]["step"] == "download"
    assert text in r["data_rejected"]["reason"] and "failed_step" not in r
    assert (base / "all_models" / "v3_model_BTCUSDT_1h.pt").read_bytes() == model
    errors = [m.getMessage() for m in caplog.records if m.levelname == "ERROR"]
    assert any(m.startswith(f"BTCUSDT 1h: download failed: {csv / 'BTCUSDT_1h.csv'}{text}")
               and m.endswith(". Kept the model trained on the earlier candles.") for m in errors)
    row = [ln for ln in caplog.text.splitlines() if ln.startswith("BTCUSDT_1h ")][-1]
    assert row.split()[:2] == ["BTCUSDT_1h", "skipped"]
    assert "earlier model kept; new candles failed download: BTCUSDT_1h.csv" + text[:12] in row
    report = (base / "results" / "report.md").read_text()
    assert ("1 pair (BTCUSDT_1h) kept the model from earlier candles: the new ones were refused "
            "(see \"Pairs whose new candles were refused\").") in report
    section = report.split("## Pairs whose new candles were refused")[1].split("\n## ")[0]
    assert f"| BTCUSDT_1h | download | {csv / 'BTCUSDT_1h.csv'}{text}" in section
    # a good file again: the refusal is gone from the results, the table and the report
    write_klines(synthetic_klines("BTCUSDT", "1h", 700), csv / "BTCUSDT_1h.csv")
    caplog.clear()
    r = p.run_full_pipeline(epochs=2)["BTCUSDT_1h"]
    assert "data_rejected" not in r and r["status"] == "skipped"
    assert "earlier model kept" not in caplog.text
    assert "refused" not in (base / "results" / "report.md").read_text()


def test_the_log_sums_up_the_intervals(trained, caplog):
    """Issue 21 item 7: the demo's log never mentioned the intervals."""
    p, _ = trained
    p.write_report()
    line = next(r.getMessage() for r in caplog.records
                if r.getMessage().startswith("intervals (test split, 4 pairs): the 80 % range "
                                             "held on "))
    assert "median pinball skill vs GARCH " in line and ", vs HAR " in line


def test_a_training_setting_given_to_the_pipeline_says_where_it_goes(tmp_path):
    """Issue 21 item 7: V3CoLabPipeline(epochs=5) was a TypeError about PipelineConfig."""
    with pytest.raises(ConfigError) as e:
        V3CoLabPipeline(tmp_path, epochs=5)
    assert str(e.value) == ("V3CoLabPipeline(epochs=5): training settings are not pipeline "
                            "settings: pass them to run_full_pipeline(epochs=5) (or "
                            "step_4_train_models), or the config: "
                            "config=PipelineConfig(train=TrainConfig(epochs=5)).")
    with pytest.raises(ConfigError, match=r"^V3CoLabPipeline\(\) got 'epoch': not a setting"):
        V3CoLabPipeline(tmp_path, epoch=5)


def test_an_upload_asked_for_by_name_and_switched_off_is_shown_even_quiet(tmp_path, caplog):
    """Issue 21 item 7: `--quiet --steps upload` printed nothing, though a skipped step you
    asked for is always shown."""
    assert main(["--demo", "--base-dir", str(tmp_path), "--quiet", "--steps", "upload"]) == 0
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "STEP 5/5: upload switched off (--no-upload, or --demo without --hf-repo)")]


def test_the_demo_preset_names_the_source_it_was_given(tmp_path, caplog):
    """Issue 21 item 7: `--demo --source csv` logged 'demo preset: SYNTHETIC candles'."""
    assert main(["--demo", "--source", "csv", "--data-dir", str(tmp_path), "--base-dir",
                 str(tmp_path / "out"), "--steps", "setup", "--no-progress"]) == 0
    assert ("demo preset: candles from csv, small model (hidden 32, 2 layers), 5 epochs"
            in caplog.text) and "SYNTHETIC" not in caplog.text
    caplog.clear()
    assert main(["--demo", "--base-dir", str(tmp_path / "out"), "--steps", "setup"]) == 0
    assert "demo preset: SYNTHETIC candles, small model (hidden 32, 2 layers)" in caplog.text


def test_walk_forward_folds_that_cannot_fit_are_refused_before_any_work(tmp_path, caplog):
    """Issue 21 item 7: `--walk-forward 50` ran, and every pair failed with 'leaves the first
    fold -10660 samples'."""
    assert main(["--demo", "--base-dir", str(tmp_path), "--walk-forward", "50"]) == 2
    assert ("ConfigError: walk_forward=50 does not fit: each fold tests 246 samples (the test "
            "split of the 1640 that 2000 candles give after the warm-up 300 and the window 60), "
            "so 50 folds leave the first fold nothing to train and validate on. Use "
            "--walk-forward 5 or fewer.") in caplog.text
    assert not (tmp_path / "data").exists()
    with pytest.raises(ConfigError, match="so 6 folds leave the first fold 164 samples"):
        V3CoLabPipeline(tmp_path, config=dataclasses.replace(demo_config(), walk_forward=6)
                        ).checked_config()
    V3CoLabPipeline(tmp_path, config=dataclasses.replace(demo_config(), walk_forward=5)
                    ).checked_config()   # 5 fit


@pytest.mark.slow
def test_a_failed_walk_forward_leaves_the_report_after_a_later_valid_run(trained, tmp_path,
                                                                         caplog):
    """Issue 21 item 7: a failed walk-forward stayed in the report after later valid runs."""
    import shutil
    p0, _ = trained
    shutil.copytree(p0.base_dir, tmp_path / "copy")
    p = V3CoLabPipeline(tmp_path / "copy", config=p0.config, coins=["BTCUSDT"],
                        timeframes=["1h"])
    reason = ("BTCUSDT 1h: walk-forward with 50 folds of 59 test samples leaves the first fold "
              "-2566 samples of 384 for training + validation")
    p.store.update("BTCUSDT_1h", walk_forward={"k": 50, "status": "failed", "reason": reason})
    p.write_report()
    assert "| BTCUSDT_1h | failed: " + reason in (p.results_dir / "report.md").read_text()
    p.step_4_train_models(epochs=2)   # a valid run: the pair is skipped, no walk-forward asked
    assert ("BTCUSDT_1h: dropped an earlier run's failed walk-forward (50 folds: BTCUSDT 1h: "
            "walk-forward with 50 folds of 59 test samples leaves the first fold -2566 "
            "samples of 384 for training +...)") in caplog.text
    assert "walk_forward" not in p.store.entry("BTCUSDT_1h")
    assert "failed: " + reason not in (p.results_dir / "report.md").read_text()


def test_too_many_candles_are_refused_with_the_cap_and_why(tmp_path, caplog):
    """Issue 21 item 7: `--candles 1000000` on synthetic data started in 1910 with no word,
    and `--candles 1000000000` died with a raw MemoryError."""
    assert main(["--demo", "--base-dir", str(tmp_path), "--candles", "1000000"]) == 2
    assert ("ConfigError: candles=1000000 synthetic 1h candles would start in 1910: synthetic "
            "series end at 2025-01-01 00:00 UTC and start no earlier than 2017-01-01 00:00 UTC, "
            "which is 70129 1h candles. Use --candles 70129 or fewer.") in caplog.text
    assert main(["--base-dir", str(tmp_path), "--candles", "1000000000", "--no-upload"]) == 2
    assert ("ConfigError: candles=1,000,000,000 is more than V3 takes (5,000,000 per pair): no "
            "Binance pair has that many (1m candles since 2017 are under 5 million), and one "
            "pair's indicators alone would need 400 GB of memory. Use --candles 5000000 or "
            "fewer (the guide uses 3000).") in caplog.text
    assert not (tmp_path / "data").exists()
    # 70129 hourly candles end at 2025-01-01 and start on 2017-01-01: allowed
    cfg = dataclasses.replace(demo_config(), candles=70129, timeframes=("15m", "1h"))
    V3CoLabPipeline(tmp_path, config=cfg).checked_config()


@pytest.mark.slow
def test_a_run_with_other_settings_says_it_replaces_a_finished_model(tmp_path, caplog):
    """Issue 21 item 7: a --demo run after a non-demo run retrained its finished pair and
    overwrote its training state without a word (so resuming the first run retrained it
    again). Now it says what changed and what it replaces."""
    p = V3CoLabPipeline(tmp_path, config=tiny_config(), coins=["BTCUSDT"], timeframes=["1h"])
    assert p.run_full_pipeline(epochs=2)["BTCUSDT_1h"]["status"] == "success"
    other = tiny_config(model=dataclasses.replace(TINY_MODEL, hidden_size=12, num_layers=2))
    caplog.clear()
    q = V3CoLabPipeline(tmp_path, config=other, coins=["BTCUSDT"], timeframes=["1h"])
    assert q.run_full_pipeline(epochs=2)["BTCUSDT_1h"]["status"] == "success"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert ("BTCUSDT_1h: its finished model was trained with other settings (model hidden_size "
            "8 -> 12, model num_layers 1 -> 2); this run trains it from scratch with its own, "
            "replacing all_models/v3_model_BTCUSDT_1h.pt and its training state. Use another "
            "--base-dir to keep both.") in warnings


@pytest.mark.slow
def test_a_refused_download_whose_earlier_candles_moved_aside_still_says_why(trained_from_csv,
                                                                            tmp_path, caplog):
    """A delisted pair's old candles are moved to data/stale/: its model (and features) are
    still kept by step 4, and the refusal, not 'no data file: run step 2', is the note."""
    import shutil
    shutil.copytree(trained_from_csv, tmp_path / "run")
    base, csv = tmp_path / "run" / "out", tmp_path / "run" / "csv"
    _break_csv(csv / "BTCUSDT_1h.csv", "nan")
    (base / "data" / "BTCUSDT_1h.csv").unlink()
    p = V3CoLabPipeline(base, config=tiny_config(source="csv", data_dir=str(csv)),
                        coins=["BTCUSDT"], timeframes=["1h"])
    r = p.run_full_pipeline(epochs=2)["BTCUSDT_1h"]
    assert r["status"] == "skipped" and r["data_rejected"]["step"] == "download"
    assert "no data file" not in caplog.text and "preprocess failed" not in caplog.text
