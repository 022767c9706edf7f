import contextlib
import dataclasses
import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_FEATURES, TINY_MODEL, TINY_TRAIN, assert_same_state, without_time
from v3_common import CheckpointError, ConfigError
from v3_data_processor import prepare_dataset
from v3_interval_scores import pinball_loss
from v3_market_data import synthetic_klines
import v3_checkpoint
import v3_trainer
from v3_checkpoint import load_checkpoint, load_resume_state
from v3_trainer import TrainConfig, amp_dtype, check_train_config, predict_standardized, train_model
from v3_lstm_model import V3LSTMModel
from v3_train_state import RunRecord


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


def val_losses(model_cfg, state, data):
    """(point MSE, mean pinball in the head's unit) on the validation split, recomputed."""
    model = V3LSTMModel(model_cfg)
    model.load_state_dict(state)
    va = data.split("val")
    y = data.target[va].astype(np.float64)
    mse = float(np.mean((predict_standardized(model, data, va) - y) ** 2))
    if not model.has_quantiles:
        return mse, None
    unit = data.unit(model_cfg.quantile_scale)[va].astype(np.float64)
    q = v3_trainer.predict_quantiles_standardized(model, data, va) / unit[:, None]
    return mse, float(pinball_loss(y / unit, q, model_cfg.quantiles).mean())


@pytest.mark.parametrize("stop_on", ["loss", "pinball", "mse"])
def test_early_stopping_on_the_chosen_loss_restores_the_best_weights(data, stop_on):
    """Early stopping compares `val_stop`: the trained loss MSE + quantile_weight x pinball
    (the default), the pinball alone, or the point MSE alone; the best epoch's weights come
    back, and recomputing their validation losses gives best_val_loss."""
    cfg = dataclasses.replace(TINY_TRAIN, epochs=30, patience=2, learning_rate=0.02,
                              stop_on=stop_on)
    model_cfg = dataclasses.replace(TINY_MODEL, quantile_weight=0.5)
    out = train_model(data, model_cfg, cfg, show_progress=False)
    vals = [h["val_stop"] for h in out.history]
    expected = {"loss": [h["val_loss"] + 0.5 * h["val_pinball"] for h in out.history],
                "pinball": [h["val_pinball"] for h in out.history],
                "mse": [h["val_loss"] for h in out.history]}[stop_on]
    assert vals == pytest.approx(expected, rel=1e-12)
    assert out.best_val_loss == min(vals)
    assert out.best_epoch == 1 + int(np.argmin(vals))
    assert out.stopped_early and out.epochs_done == out.best_epoch + cfg.patience < 30
    mse, pin = val_losses(model_cfg, out.best_state, data)   # really the best epoch's weights
    again = {"loss": mse + 0.5 * pin, "pinball": pin, "mse": mse}[stop_on]
    assert again == pytest.approx(out.best_val_loss, rel=1e-5)


def test_without_a_quantile_head_every_stopping_loss_is_the_mse(data):
    no_head = dataclasses.replace(TINY_MODEL, quantiles=())
    out = train_model(data, no_head, dataclasses.replace(TINY_TRAIN, stop_on="pinball"),
                      show_progress=False)
    assert [h["val_stop"] for h in out.history] == [h["val_loss"] for h in out.history]


def test_a_bad_stop_on_is_a_config_error():
    with pytest.raises(ConfigError, match="stop_on must be one of 'loss', 'pinball', 'mse'"):
        v3_trainer.check_train_config(dataclasses.replace(TINY_TRAIN, stop_on="val"))


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
    from v3_checkpoint import save_resume_state
    save_resume_state(saved[-1], tmp_path / "r.pt")
    st = load_resume_state(tmp_path / "r.pt")  # weights_only=True inside
    assert st["epoch"] == out.epochs_done
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert load_resume_state(tmp_path / "bad.pt") is None
    assert load_resume_state(tmp_path / "none.pt") is None


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


# -- config checks and precision choice (engines: test_engine.py, test_fast_train.py) --------


@pytest.fixture(scope="module")
def data15():
    return prepare_dataset(synthetic_klines("BTCUSDT", "15m", 700), TINY_FEATURES, interval="15m")


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


def test_checkpoints_load_with_weights_only(tmp_path, data15):
    outcome = v3_trainer.train_model(data15, TINY_MODEL, dataclasses.replace(TINY_TRAIN, epochs=1),
                                     show_progress=False)
    path = tmp_path / "m.pt"
    v3_checkpoint.save_checkpoint(path, model_state=outcome.best_state, model_config=TINY_MODEL,
                               data=data15, feature_config=TINY_FEATURES.to_dict(), meta={})
    ckpt = load_checkpoint(path)                     # torch.load(weights_only=True) inside
    assert type(ckpt["torch_version"]) is str
    model = v3_checkpoint.model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, TINY_FEATURES.seq_len, TINY_MODEL.input_size)).shape == (2,)


# -- threads, training time over resumes, the mean-forecast reference, truncated files -----


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_threads_must_be_a_positive_integer_or_none(bad):
    with pytest.raises(ConfigError, match="threads must be an integer >= 1 or None"):
        check_train_config(TrainConfig(threads=bad))
    check_train_config(TrainConfig(threads=None))
    check_train_config(TrainConfig(threads=3))


def test_resolve_threads_explicit_then_env_then_measured_default(monkeypatch):
    monkeypatch.setenv("V3_THREADS", "3")
    assert v3_trainer.resolve_threads(2) == 2                 # the explicit value wins
    assert v3_trainer.resolve_threads(None) == 3              # then V3_THREADS
    for bad in ("0", "two", "1.5", "-2"):
        monkeypatch.setenv("V3_THREADS", bad)
        with pytest.raises(ConfigError, match=f"V3_THREADS='{bad}' is not a thread count"):
            v3_trainer.resolve_threads(None)
    monkeypatch.delenv("V3_THREADS")
    assert v3_trainer.resolve_threads(None) == v3_trainer.default_threads()
    # bench/README.md: on 2 cores one thread (busy cores make 2 threads 3-11x slower)
    assert [v3_trainer.default_threads(c) for c in (1, 2, 4, 8, 64)] == [1, 1, 2, 4, 4]


def test_train_seconds_add_up_over_a_resumed_training(data, monkeypatch):
    clock = {"t": 1000.0}

    def tick():                 # every clock read is 0.5 s later: deterministic run times
        clock["t"] += 0.5
        return clock["t"]

    monkeypatch.setattr(v3_trainer.time, "monotonic", tick)
    cfg = dataclasses.replace(TINY_TRAIN, epochs=2, early_stopping=False)
    first = train_model(data, TINY_MODEL, dataclasses.replace(cfg, epochs=1), show_progress=False)
    assert first.seconds > 0 and first.resume_state["train_seconds"] == first.seconds
    second = train_model(data, TINY_MODEL, cfg, resume=first.resume_state, show_progress=False)
    fresh = train_model(data, TINY_MODEL, dataclasses.replace(cfg, epochs=1), show_progress=False)
    resumed_part = fresh.seconds           # an epoch's worth of clock reads, as in `second`
    assert second.epochs_done == 2
    assert second.seconds == pytest.approx(first.seconds + resumed_part)
    assert second.resume_state["train_seconds"] == second.seconds


def test_mean_forecast_val_loss_is_the_trainers_loss_of_the_constant_forecast(data):
    mean = float(np.float32(data.target[data.split("train")].mean()))
    model = V3LSTMModel(TINY_MODEL)          # a real model whose output is that constant
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.fill_(mean)
    va = data.split("val")
    offsets = torch.arange(-(data.seq_len - 1), 1)
    trainer_loss = v3_trainer._mse(model, torch.as_tensor(data.features),
                                   torch.as_tensor(data.ends[va]), torch.as_tensor(data.target[va]),
                                   offsets, TINY_TRAIN.eval_batch_size, contextlib.nullcontext)
    ref = v3_trainer.mean_forecast_val_loss(data)
    assert ref == trainer_loss
    y = data.target[va].astype(np.float64)
    assert ref == pytest.approx(float(np.mean((y - mean) ** 2)), rel=1e-5)
    assert ref != pytest.approx(1.0, abs=1e-3)  # not the "1.0 = training mean" line


def test_a_truncated_model_file_raises_checkpoint_error(tmp_path, data):
    path = tmp_path / "v3_model_BTCUSDT_1h.pt"
    v3_checkpoint.save_checkpoint(path, model_state=V3LSTMModel(TINY_MODEL).state_dict(),
                               model_config=TINY_MODEL, data=data,
                               feature_config=TINY_FEATURES.to_dict(),
                               meta={"symbol": "BTCUSDT", "interval": "1h"})
    assert v3_checkpoint.load_model_file(path).symbol == "BTCUSDT"   # the whole file loads
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable V3 checkpoint"):
        v3_checkpoint.load_model_file(path)


# -- the quantile head: loss, history, predictions, checkpoint format ------------------------


def test_checkpoint_and_resume_formats_are_version_4():
    assert v3_checkpoint.CHECKPOINT_FORMAT == "v3-checkpoint-4"
    assert v3_checkpoint.RESUME_FORMAT == "v3-resume-4"


def test_a_format_3_checkpoint_loads_as_trained(tmp_path, data):
    """Format 3 (the 'ewma' unit, before the HAR's coefficients were stored) loads with its
    own quantile_scale and predicts exactly as a format-4 file of the same weights."""
    path = tmp_path / "v3_model_BTCUSDT_1h.pt"
    ewma = dataclasses.replace(TINY_MODEL, quantile_scale="ewma")   # format 3's default
    state = V3LSTMModel(ewma).state_dict()
    v3_checkpoint.save_checkpoint(path, model_state=state, model_config=ewma, data=data,
                                  feature_config=TINY_FEATURES.to_dict(),
                                  meta={"symbol": "BTCUSDT", "interval": "1h"})
    new = v3_checkpoint.load_model_file(path)
    assert new.checkpoint["har"]["beta"] == list(data.har.beta)
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = "v3-checkpoint-3"
    del ckpt["har"], ckpt["har_history_candles"]
    torch.save(ckpt, path)
    old = v3_checkpoint.load_model_file(path)
    assert old.model.config == ewma and old.model.config.quantile_scale == "ewma"
    te = data.split("test")
    np.testing.assert_array_equal(v3_trainer.predict_quantiles_standardized(old.model, data, te),
                                  v3_trainer.predict_quantiles_standardized(new.model, data, te))


def test_a_format_2_checkpoint_loads_as_trained_with_unscaled_quantiles(tmp_path, data):
    """Format 2 (the quantile head before quantile_scale) had the head's outputs on the
    standardised target: it loads with quantile_scale 'none', not today's default."""
    path = tmp_path / "v3_model_BTCUSDT_1h.pt"
    v3_checkpoint.save_checkpoint(path, model_state=V3LSTMModel(TINY_MODEL).state_dict(),
                                  model_config=TINY_MODEL, data=data,
                                  feature_config=TINY_FEATURES.to_dict(),
                                  meta={"symbol": "BTCUSDT", "interval": "1h"})
    assert v3_checkpoint.load_model_file(path).model.config.quantile_scale == "har"
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = "v3-checkpoint-2"
    del ckpt["model_config"]["quantile_scale"]
    torch.save(ckpt, path)
    loaded = v3_checkpoint.load_model_file(path)
    assert loaded.model.config == dataclasses.replace(TINY_MODEL, quantile_scale="none")


def test_an_old_checkpoint_says_it_was_written_by_an_older_v3_and_to_retrain(tmp_path, data):
    path = tmp_path / "v3_model_BTCUSDT_1h.pt"
    no_head = dataclasses.replace(TINY_MODEL, quantiles=())
    v3_checkpoint.save_checkpoint(path, model_state=V3LSTMModel(no_head).state_dict(),
                               model_config=no_head, data=data,
                               feature_config=TINY_FEATURES.to_dict(),
                               meta={"symbol": "BTCUSDT", "interval": "1h"})
    ckpt = torch.load(path, weights_only=True)
    ckpt["format"] = "v3-checkpoint-1"                   # what V3 wrote before the head
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"has format 'v3-checkpoint-1': it was written by an "
                                              r"older V3.*Re-train the pair \(--retrain"):
        v3_checkpoint.load_model_file(path)
    ckpt["format"] = "v3-checkpoint-9"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="written by a newer V3"):
        load_checkpoint(path)


def test_an_old_resume_state_means_a_fresh_start(tmp_path, caplog):
    torch.save({"format": "v3-resume-3", "epoch": 3}, tmp_path / "r.pt")
    with caplog.at_level(logging.INFO, logger="v3"):
        assert load_resume_state(tmp_path / "r.pt") is None
    assert "has format 'v3-resume-3', this V3 resumes 'v3-resume-4'; training that pair from " \
           "scratch" in caplog.text


def test_training_records_the_pinball_loss_and_keeps_val_loss_the_point_mse(data):
    out = train_model(data, TINY_MODEL, TINY_TRAIN, show_progress=False)
    assert set(out.history[-1]) == {"epoch", "train_loss", "val_loss", "lr", "train_pinball",
                                    "val_pinball", "val_stop"}
    model = V3LSTMModel(TINY_MODEL)
    model.load_state_dict(out.best_state)
    va = data.split("val")
    y = data.target[va].astype(np.float64)
    q = v3_trainer.predict_quantiles_standardized(model, data, va)
    assert q.shape == (len(y), 7) and q.dtype == np.float32
    assert (np.diff(q, axis=1) >= 0).all()
    # the head learns, and the history records, in units of the recent volatility
    unit = data.unit(TINY_MODEL.quantile_scale)[va].astype(np.float64)[:, None]
    best = out.history[out.best_epoch - 1]
    assert best["val_pinball"] == pytest.approx(float(pinball_loss(y / unit[:, 0], q / unit)
                                                      .mean()), rel=1e-5)
    mse = float(np.mean((predict_standardized(model, data, va) - y) ** 2))
    assert best["val_loss"] == pytest.approx(mse, rel=1e-5)
    assert out.best_val_loss == best["val_stop"] == pytest.approx(best["val_loss"]
                                                                 + best["val_pinball"], rel=1e-12)
    no_head = dataclasses.replace(TINY_MODEL, quantiles=())
    plain = train_model(data, no_head, TINY_TRAIN, show_progress=False)
    assert set(plain.history[-1]) == {"epoch", "train_loss", "val_loss", "lr", "val_stop"}
    assert v3_trainer.predict_quantiles_standardized(V3LSTMModel(no_head), data, va) is None


def test_with_quantile_scale_none_the_head_learns_the_standardised_target(data):
    cfg = dataclasses.replace(TINY_MODEL, quantile_scale="none")
    out = train_model(data, cfg, TINY_TRAIN, show_progress=False)
    model = V3LSTMModel(cfg)
    model.load_state_dict(out.best_state)
    va = data.split("val")
    q = v3_trainer.predict_quantiles_standardized(model, data, va)
    raw = model.forward_with_quantiles(torch.as_tensor(data.windows(va)))[1].detach().numpy()
    np.testing.assert_allclose(q, raw, rtol=1e-5, atol=1e-6)        # no unit applied
    best = out.history[out.best_epoch - 1]
    y = data.target[va].astype(np.float64)
    assert best["val_pinball"] == pytest.approx(float(pinball_loss(y, q).mean()), rel=1e-5)
    # the default scale multiplies the same head outputs by each sample's unit
    same = V3LSTMModel(TINY_MODEL)
    same.load_state_dict(out.best_state)
    np.testing.assert_allclose(v3_trainer.predict_quantiles_standardized(same, data, va),
                               raw * data.unit(TINY_MODEL.quantile_scale)[va][:, None],
                               rtol=1e-5, atol=1e-6)


def test_the_quantile_weight_is_the_pinball_share_of_the_loss(data):
    """Weight 0: the head learns nothing, so the trunk and point head train exactly as the
    model without a head; weight 1: the pinball loss trains the trunk too, and the
    quantiles get better than where they started."""
    cfg = dataclasses.replace(TINY_TRAIN, epochs=3, early_stopping=False)
    none = train_model(data, dataclasses.replace(TINY_MODEL, quantiles=()), cfg, show_progress=False)
    zero = train_model(data, dataclasses.replace(TINY_MODEL, quantile_weight=0.0), cfg,
                       show_progress=False)
    one = train_model(data, TINY_MODEL, cfg, show_progress=False)
    # The same arithmetic for the trunk and point head, except that weight 0 adds zero
    # gradients through the head and its pinball sums: float32 summation order (which depends
    # on torch's thread count and the machine) moves the last bits, ~1e-9 after 3 epochs of
    # AdamW here. 1e-6 relative (plus 1e-7 for weights near 0) is far below what one real
    # update changes (weight 1 moves the same weights by > 1e-3, checked below).
    for k, v in none.best_state.items():
        torch.testing.assert_close(zero.best_state[k], v, rtol=1e-6, atol=1e-7)
    assert [h["val_loss"] for h in zero.history] == pytest.approx(
        [h["val_loss"] for h in none.history], rel=1e-6)
    moved = (one.best_state["lstm.weight_hh_l0"] - none.best_state["lstm.weight_hh_l0"]).abs().max()
    assert moved > 1e-3
    assert one.history[-1]["val_pinball"] < zero.history[-1]["val_pinball"]


def test_a_checkpoint_rebuilds_the_quantile_head(tmp_path, data):
    outcome = train_model(data, TINY_MODEL, dataclasses.replace(TINY_TRAIN, epochs=1),
                          show_progress=False)
    path = tmp_path / "v3_model_BTCUSDT_1h.pt"
    v3_checkpoint.save_checkpoint(path, model_state=outcome.best_state, model_config=TINY_MODEL,
                               data=data, feature_config=TINY_FEATURES.to_dict(),
                               meta={"symbol": "BTCUSDT", "interval": "1h"})
    loaded = v3_checkpoint.load_model_file(path)
    assert loaded.checkpoint["format"] == "v3-checkpoint-4"
    assert loaded.quantiles == TINY_MODEL.quantiles and loaded.model.has_quantiles
    assert loaded.model.config == TINY_MODEL
    ref = V3LSTMModel(TINY_MODEL)
    ref.load_state_dict(outcome.best_state)
    te = data.split("test")
    np.testing.assert_array_equal(v3_trainer.predict_quantiles_standardized(loaded.model, data, te),
                                  v3_trainer.predict_quantiles_standardized(ref, data, te))


# ---------------------------------------------------------------------------------------
# Ctrl-C anywhere, then resume: exactly the uninterrupted run (issue 21)

# two layers and dropout, so the random generator's state matters too; 9 batches an epoch
INTERRUPT_MODEL = dataclasses.replace(TINY_MODEL, num_layers=2, dropout=0.3)
INTERRUPT_TRAIN = dataclasses.replace(TINY_TRAIN, epochs=3, batch_size=32, early_stopping=False)


@pytest.fixture(scope="module")
def uninterrupted(data):
    """The run without interrupt, and its state after every epoch (checkpoint_every_s=0)."""
    states: list = []
    out = train_model(data, INTERRUPT_MODEL, INTERRUPT_TRAIN, show_progress=False,
                      checkpoint_fn=states.append)
    return out, states


def interrupt_at(monkeypatch, where: str, epoch: int, batch: int):
    """Raise KeyboardInterrupt in epoch `epoch` (1-based): before the forward of training
    batch `batch`, in the validation pass, or in the checkpoint_fn call after the epoch.
    Returns the checkpoint_fn, which keeps what it is given."""
    calls = {"batch": 0, "val": 0, "ckpt": 0}
    n_batches, saved = -(-268 // INTERRUPT_TRAIN.batch_size), []
    real_loss, real_mse = v3_trainer._batch_loss, v3_trainer._mse

    def batch_loss(*a, **k):
        calls["batch"] += 1
        if where == "batch" and calls["batch"] == (epoch - 1) * n_batches + batch + 1:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    def mse(*a, **k):
        calls["val"] += 1
        if where == "validation" and calls["val"] == epoch:
            raise KeyboardInterrupt
        return real_mse(*a, **k)

    def checkpoint_fn(state):
        calls["ckpt"] += 1
        if where == "checkpoint" and calls["ckpt"] == epoch:
            raise KeyboardInterrupt
        saved.append(state)

    monkeypatch.setattr(v3_trainer, "_batch_loss", batch_loss)
    monkeypatch.setattr(v3_trainer, "_mse", mse)
    return checkpoint_fn, saved


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["batch", "validation", "checkpoint"]), epoch=st.integers(1, 3),
       batch=st.integers(0, 8))
def test_an_interrupt_anywhere_resumes_to_exactly_the_uninterrupted_run(
        data, uninterrupted, caplog, where, epoch, batch):
    """Ctrl-C at a random batch (or in validation, or while saving) saves the state after the
    last finished epoch, never the half-trained one, and the resumed run ends with every
    tensor (weights, best weights, AdamW moments and steps, scheduler) and every history
    value equal to the uninterrupted run's. Exact: same code, same inputs, one thread."""
    assert data.n_train == 268                            # 9 batches of 32 (the last of 12)
    whole, per_epoch = uninterrupted
    caplog.clear()                                        # one test call, many examples
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, logger="v3"):
        checkpoint_fn, saved = interrupt_at(mp, where, epoch, batch)
        with pytest.raises(KeyboardInterrupt):
            train_model(data, INTERRUPT_MODEL, INTERRUPT_TRAIN, show_progress=False,
                        checkpoint_fn=checkpoint_fn)
    last_done = epoch if where == "checkpoint" else epoch - 1   # finished before the interrupt
    if last_done == 0:
        assert saved == [] and "interrupted" not in caplog.text
    else:
        assert saved[-1]["epoch"] == last_done
        assert_same_state(without_time(saved[-1]), without_time(per_epoch[last_done - 1]))
        assert (f"train: interrupted after epoch {last_done}; its state is saved, re-run to "
                f"resume (from the start of epoch {last_done + 1})") in caplog.text
    resumed = train_model(data, INTERRUPT_MODEL, INTERRUPT_TRAIN, show_progress=False,
                          resume=saved[-1] if saved else None)
    assert_same_state(without_time(resumed.resume_state), without_time(whole.resume_state))
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch


def test_run_record_stops_on_val_stop_and_round_trips_through_a_resume_state(caplog):
    """v3_train_state.RunRecord, the bookkeeping both engines share: min_delta and patience
    on val_stop (here the pinball, stop_on='pinball'), and from_resume(resume_dict()) gives
    the same record back (one that stopped early stays stopped)."""
    cfg = dataclasses.replace(TINY_TRAIN, epochs=9, patience=2, min_delta=0.01, stop_on="pinball")
    rec = RunRecord()
    got = [rec.end_epoch(cfg, train_loss=1.0, val_loss=9.0, lr=1e-3, q_weight=0.5,
                         with_quantiles=True, train_pinball=0.5, val_pinball=p, desc="X")
           for p in (0.50, 0.495, 0.40)]
    assert got == [True, False, True]          # 0.495 is better by less than min_delta
    assert (rec.epoch, rec.best_epoch, rec.best_val, rec.bad) == (3, 3, 0.40, 0)
    assert [h["val_stop"] for h in rec.history] == [0.50, 0.495, 0.40]
    state = rec.resume_dict(cfg, model_state={}, optimizer_state={}, scheduler_state={},
                            best_state={})
    back = RunRecord.from_resume(state, t_start=rec.t_start)
    assert dataclasses.replace(back, seconds_before=0.0) == dataclasses.replace(rec, start_epoch=3)
    with caplog.at_level(logging.INFO, logger="v3"):
        for _ in range(2):
            rec.update(0.45, cfg, desc="X")
    assert rec.stopped_early and rec.finished(cfg.epochs) and not RunRecord().finished(1)
    assert "X: early stop at epoch 3 (best 0.40000 at epoch 3)" in caplog.text
    stopped = RunRecord.from_resume(rec.resume_dict(cfg, model_state={}, optimizer_state={},
                                                    scheduler_state={}, best_state={}))
    assert stopped.stopped_early and stopped.bad == 2 and stopped.finished(cfg.epochs)
    assert RunRecord.epoch_seed(42, 3) == 42 * 100_003 + 3
