"""v3_predict: the next-candle forecast agrees with training, locally, from the Hub and live."""
from __future__ import annotations

import json
import os
import shutil
import types

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pandas as pd
import pytest
import torch

import v3_predict
from conftest import TINY_MODEL, tiny_config
from v3_colab_training import V3CoLabPipeline
from v3_common import (INTERVAL_MS, CheckpointError, DownloadError, InsufficientDataError,
                       StaleDataError)
from v3_market_data import read_klines
from v3_predict import available_models, format_table, load_model, main, predict_next

PAIRS = [("BTCUSDT", "15m"), ("BTCUSDT", "1h")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("trained") / "out"
    p = V3CoLabPipeline(base, config=tiny_config(), coins=["BTCUSDT"], timeframes=["15m", "1h"])
    p.run_full_pipeline(epochs=2, batch_size=64, upload=False)
    return base


def history_before(base, symbol, interval, open_time):
    """The candles a live user would have had just before `open_time` opened."""
    df = read_klines(base / "data" / f"{symbol}_{interval}.csv")
    return df[df.open_time < open_time]


@pytest.mark.slow
@pytest.mark.parametrize("symbol,interval", PAIRS)
def test_last_test_sample_matches_the_saved_prediction(trained, symbol, interval):
    saved = pd.read_csv(trained / "results" / "predictions" / f"{symbol}_{interval}.csv")
    last = saved.iloc[-1]
    t = int(last.open_time)
    p = predict_next(symbol, interval, model=trained, now_ms=t,
                     candles=history_before(trained, symbol, interval, t))
    assert p["open_time"] == t
    assert p["last_open_time"] == t - INTERVAL_MS[interval]
    assert p["last_close"] == pytest.approx(last.last_close, rel=1e-12)
    assert p["predicted_close"] == pytest.approx(last.predicted_close, rel=1e-5)
    assert p["direction"] == ("up" if p["predicted_close"] > p["last_close"] else "down")
    assert p["predicted_return"] == pytest.approx(p["predicted_close"] / p["last_close"] - 1)
    ckpt = torch.load(trained / "all_models" / f"v3_model_{symbol}_{interval}.pt", weights_only=True)
    assert p["test"] == ckpt["test"] and p["baseline"]["persistence"]["n"] == ckpt["test"]["n"]
    assert p["trained_on"]["synthetic"] is True
    # the quantile head: the saved closes at each quantile, and the central intervals
    cols = ["p05", "p10", "p25", "p50", "p75", "p90", "p95"]
    got = list(p["quantiles"].values())
    np.testing.assert_allclose(got, last[cols].to_numpy(float), rtol=1e-5)
    assert got == sorted(got)
    assert p["interval_80"] == [p["quantiles"]["0.10"], p["quantiles"]["0.90"]]
    assert p["interval_90"] == [p["quantiles"]["0.05"], p["quantiles"]["0.95"]]


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["15m", "1h"])
def test_the_har_unit_is_reproduced_exactly_by_predict_next(tmp_path, interval):
    """With quantile_scale 'har' the head's unit is the HAR forecast from the last candles'
    ranges (a week of them) and the next candle's clock, its coefficients from the
    checkpoint: predict_next gives the saved test quantiles, for the last and an earlier
    test sample, from only the history a live user would have had."""
    import dataclasses
    cfg = tiny_config(model=dataclasses.replace(TINY_MODEL, quantile_scale="har"), candles=1200)
    base = tmp_path / "out"
    V3CoLabPipeline(base, config=cfg, coins=["BTCUSDT"], timeframes=[interval]).run_full_pipeline(
        epochs=2, batch_size=64, upload=False)
    ckpt = torch.load(base / "all_models" / f"v3_model_BTCUSDT_{interval}.pt", weights_only=True)
    assert ckpt["model_config"]["quantile_scale"] == "har" and len(ckpt["har"]["beta"]) == 29
    saved = pd.read_csv(base / "results" / "predictions" / f"BTCUSDT_{interval}.csv")
    cols = ["p05", "p10", "p25", "p50", "p75", "p90", "p95"]
    for row in (saved.iloc[-1], saved.iloc[len(saved) // 3]):
        t = int(row.open_time)
        p = predict_next("BTCUSDT", interval, model=base, now_ms=t,
                         candles=history_before(base, "BTCUSDT", interval, t))
        np.testing.assert_allclose(list(p["quantiles"].values()), row[cols].to_numpy(float),
                                   rtol=1e-5)


def test_the_table_shows_the_80_percent_range():
    row = {"symbol": "BTCUSDT", "interval": "1h", "last_close": 100.0, "predicted_close": 100.1,
           "predicted_return": 0.001, "direction": "up", "interval_80": [99.0, 101.25]}
    head, line = format_table([row]).splitlines()
    assert "80 % range" in head and "99 .. 101.25" in line
    assert "80 % range" in format_table([dict(row, interval_80=None)])


def test_an_earlier_test_sample_also_matches(trained):
    saved = pd.read_csv(trained / "results" / "predictions" / "BTCUSDT_1h.csv")
    row = saved.iloc[len(saved) // 2]
    t = int(row.open_time)
    # a longer history than needed, and a still-forming candle at the end: both handled
    hist = read_klines(trained / "data" / "BTCUSDT_1h.csv")
    hist = hist[hist.open_time <= t]
    p = predict_next("BTC", "1h", model=trained / "all_models", candles=hist, now_ms=t + 1)
    assert p["open_time"] == t
    assert p["predicted_close"] == pytest.approx(row.predicted_close, rel=1e-5)


# -- errors --------------------------------------------------------------------------------


def test_no_model_for_the_pair(trained):
    with pytest.raises(CheckpointError, match="no model for ETHUSDT 1h in"):
        predict_next("ETHUSDT", "1h", model=trained, candles=pd.DataFrame())


def test_corrupt_and_incompatible_checkpoints(trained, tmp_path):
    bad = tmp_path / "v3_model_BTCUSDT_1h.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable V3 checkpoint"):
        load_model(tmp_path, "BTCUSDT", "1h")
    ckpt = torch.load(trained / "all_models" / "v3_model_BTCUSDT_1h.pt", weights_only=True)
    torch.save(dict(ckpt, feature_set_version=1), bad)
    with pytest.raises(CheckpointError, match="trained on indicator set v1"):
        load_model(tmp_path, "BTCUSDT", "1h")
    torch.save(dict(ckpt, format="v2-model"), bad)
    with pytest.raises(CheckpointError, match="has format 'v2-model'"):
        load_model(tmp_path, "BTCUSDT", "1h")
    torch.save(ckpt, tmp_path / "v3_model_ETHUSDT_1h.pt")  # a file under the wrong name
    with pytest.raises(CheckpointError, match="holds a model for BTCUSDT 1h, not ETHUSDT 1h"):
        load_model(tmp_path, "ETHUSDT", "1h")


def test_too_few_candles(trained):
    hist = read_klines(trained / "data" / "BTCUSDT_1h.csv").iloc[:310]
    with pytest.raises(InsufficientDataError, match=r"310 closed candles, need >= 316"):
        predict_next("BTCUSDT", "1h", model=trained, candles=hist,
                     now_ms=int(hist.open_time.iloc[-1]) + 3_600_000)


def test_stale_market_data(trained):
    hist = read_klines(trained / "data" / "BTCUSDT_1h.csv")
    closed_at = int(hist.open_time.iloc[-1]) + 3_600_000
    p = predict_next("BTCUSDT", "1h", model=trained, candles=hist, now_ms=closed_at + 7_000_000,
                     check_stale=True)  # 1.9 intervals: still fresh
    assert p["open_time"] == closed_at
    with pytest.raises(StaleDataError, match="closed 3.0 intervals ago"):
        predict_next("BTCUSDT", "1h", model=trained, candles=hist,
                     now_ms=closed_at + 3 * 3_600_000, check_stale=True)


# -- live candles through the downloader (fake Binance) -----------------------------------


@pytest.fixture
def fake_binance(monkeypatch):
    import binance.client
    import time
    from fake_binance import FakeBinance
    monkeypatch.setattr(binance.client, "time", types.SimpleNamespace(time=time.time,
                                                                      sleep=lambda s: None))
    with FakeBinance() as fb:
        yield fb


def test_live_candles_come_through_the_step_2_downloader(trained, fake_binance, tmp_path):
    p = predict_next("BTCUSDT", "1h", model=trained, api_urls=[fake_binance.url],
                     candle_dir=tmp_path / "cache")
    now = fake_binance.now_ms()
    step = 3_600_000
    assert p["open_time"] == (now // step) * step  # the candle forming now
    assert fake_binance.unfinished_served >= 1     # it was served, and dropped
    assert (tmp_path / "cache" / "BTCUSDT_1h.csv").exists()
    before = fake_binance.count("klines")
    predict_next("BTCUSDT", "1h", model=trained, api_urls=[fake_binance.url],
                 candle_dir=tmp_path / "cache")
    assert fake_binance.count("klines") - before <= 1  # the second call only tops up


def test_delisted_pair_is_refused_by_the_downloader(trained, fake_binance, tmp_path):
    shutil.copy(trained / "all_models" / "v3_model_BTCUSDT_1h.pt", tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save(dict(ckpt, symbol="STALEUSDT"), tmp_path / "v3_model_STALEUSDT_1h.pt")
    with pytest.raises(DownloadError, match="delisted or halted"):
        predict_next("STALEUSDT", "1h", model=tmp_path, api_urls=[fake_binance.url],
                     candle_dir=tmp_path / "cache")


# -- from the Hub (fake Hub) -------------------------------------------------------------


@pytest.mark.slow
def test_hub_model_predicts_exactly_like_the_local_one(trained, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from fake_hub import FakeHub, FakeUser
    from v3_hub import upload_to_hub
    token = "hf_fake-PREDICT-test-token-0123456"
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with FakeHub(tokens={token: FakeUser("alice")}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        upload_to_hub(trained, token=token, endpoint=hub.url, show_progress=False, prompt=False)
        assert available_models(hub_repo="alice/cpb-models", token=token, endpoint=hub.url) == PAIRS
        saved = pd.read_csv(trained / "results" / "predictions" / "BTCUSDT_15m.csv")
        t = int(saved.open_time.iloc[-1])
        hist = history_before(trained, "BTCUSDT", "15m", t)
        remote = predict_next("BTCUSDT", "15m", model="alice/cpb-models", candles=hist, now_ms=t,
                              token=token)
        local = predict_next("BTCUSDT", "15m", model=trained, candles=hist, now_ms=t)
    assert remote["predicted_close"] == local["predicted_close"]
    assert remote["model"].startswith("alice/cpb-models@")


# -- command line --------------------------------------------------------------------------


def test_cli_table_and_json(trained, capsys):
    assert main(["--model-dir", str(trained), "--data-dir", str(trained / "data")]) == 0
    out = capsys.readouterr().out
    assert "BTCUSDT_15m" in out and "BTCUSDT_1h" in out and "persist. MAPE %" in out
    assert "SYNTHETIC" in out
    assert main(["--model-dir", str(trained / "all_models"), "--data-dir", str(trained / "data"),
                 "--timeframes", "1h", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["symbol"], r["interval"]) for r in rows] == [("BTCUSDT", "1h")]
    assert {"open_time", "last_close", "predicted_close", "predicted_return", "direction",
            "test", "baseline"} <= set(rows[0])


def test_cli_errors(trained, tmp_path, capsys):
    assert main(["--model-dir", str(tmp_path)]) == 1  # no models
    # a pair without candles fails alone, in the table
    assert main(["--model-dir", str(trained), "--data-dir", str(tmp_path), "--coins", "BTC"]) == 1
    assert "ConfigError: no CSV for BTCUSDT 15m" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([])  # --model-dir or --hub-repo is required


def test_cli_names_the_models_there_when_the_filter_picks_none(trained, tmp_path, caplog):
    """Issue 12 item 7: `--coins SOL` on a folder of other models said 'no models found'."""
    assert main(["--model-dir", str(trained), "--coins", "SOL"]) == 1
    assert "no model for SOLUSDT in" in caplog.text
    assert "it has 2 models: BTCUSDT_15m, BTCUSDT_1h" in caplog.text
    assert "--coins / --timeframes" in caplog.text and "no models found" not in caplog.text
    caplog.clear()
    shutil.copy(trained / "all_models" / "v3_model_BTCUSDT_1h.pt", tmp_path)
    assert main(["--model-dir", str(tmp_path), "--coins", "ETH,SOL", "--timeframes", "4h"]) == 1
    assert "no model for ETHUSDT SOLUSDT 4h in" in caplog.text
    assert "it has 1 model: BTCUSDT_1h." in caplog.text
    caplog.clear()
    assert main(["--model-dir", str(tmp_path / "empty")]) == 2  # not a folder: a named error
    (tmp_path / "empty").mkdir()
    assert main(["--model-dir", str(tmp_path / "empty")]) == 1
    assert "no models in" in caplog.text and "train first" in caplog.text


def test_offline_hints_name_this_commands_options(trained, monkeypatch, caplog, capsys):
    """Issue 12 item 7: offline, the hint named --api-urls and --source, which v3_predict.py
    does not have; it must name --data-dir."""
    import v3_binance_data
    from v3_binance_data import ApiUnavailableError
    from v3_common import RetryableDownloadError
    pipeline_hint = ("Set V3_BINANCE_API_URLS (or --api-urls) to a base that works from this "
                     "machine, or use --source binance-archive or --source csv.")

    def offline(*args, **kw):
        raise ApiUnavailableError(f"klines: no Binance API base can be used (x: blocked). "
                                  f"{pipeline_hint}")
    monkeypatch.setattr(v3_binance_data, "download_klines", offline)
    with pytest.raises(ApiUnavailableError) as e:
        predict_next("BTCUSDT", "1h", model=trained)
    for msg in (str(e.value),):
        assert "--data-dir" in msg and "V3_BINANCE_API_URLS" in msg
        assert "--api-urls" not in msg and "--source" not in msg
    assert main(["--model-dir", str(trained), "--timeframes", "1h"]) == 1
    assert "--data-dir" in caplog.text and "ApiUnavailableError" in capsys.readouterr().out

    def archive_down(*args, **kw):
        raise RetryableDownloadError("BTCUSDT 1h: the archive is busy or unreachable: try "
                                     "again later.")
    monkeypatch.setattr(v3_binance_data, "download_klines", archive_down)
    with pytest.raises(RetryableDownloadError, match=r"try again later\. .*--data-dir"):
        predict_next("BTCUSDT", "1h", model=trained)


def test_table_rows_are_not_padded_and_print_no_negative_zero():
    """Issue 12 item 12: one long error padded every row to ~250 characters; -0.0 printed."""
    ok = {"symbol": "BTCUSDT", "interval": "1h", "open_time_utc": "2025-01-01 00:00 UTC",
          "last_close": 100.0, "predicted_close": 100.0, "predicted_return": -0.0,
          "direction": "flat", "test": {"mape": -0.0, "directional_accuracy": 50.0},
          "baseline": {"persistence": {"mape": 0.1}}}
    failed = {"symbol": "ETHUSDT", "interval": "15m",
              "error": "DownloadError: " + "the market data could not be fetched " * 8}
    lines = v3_predict.format_table([ok, failed]).splitlines()
    assert all(not ln.endswith(" ") for ln in lines)
    # the note (last column) is shortened: no line is wider than the header plus NOTE_WIDTH
    assert len(lines[0]) <= 140 and lines[0].endswith("note")  # one column more: 80 % range
    assert max(len(ln) for ln in lines) <= len(lines[0]) - len("note") + v3_predict.NOTE_WIDTH
    assert lines[2].rstrip().endswith("...") and "DownloadError: the market data could" in lines[2]
    cells = lines[1].split()
    assert "+0.000" in cells and "0.000" in cells and "-0.000" not in lines[1]


def test_help_is_instant_and_imports_no_torch():
    """Issue 12 item 12: --help took ~5 s, importing torch and pandas first."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-X", "importtime", "v3_predict.py", "--help"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--model-dir" in out.stdout and "--data-dir" in out.stdout
    imported = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in out.stderr.splitlines()
                if ln.startswith("import time:")}
    assert "argparse" in imported  # the check sees imports at all
    assert not imported & {"torch", "pandas", "numpy", "huggingface_hub", "v3_trainer", "v3_hub"}
    code = ("import sys, v3_predict; heavy = [m for m in ('torch', 'pandas', 'v3_hub') "
            "if m in sys.modules]; sys.exit(1 if heavy else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0


def test_bench_predict_tiny_run(capsys):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "bench_predict", Path(__file__).resolve().parents[1] / "bench" / "bench_predict.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--pairs", "2", "--hidden", "8", "--candles", "700"])
    out = capsys.readouterr().out
    assert "machine:" in out and "predict_next (warm-up + window)" in out
    assert "features on all candles" in out
