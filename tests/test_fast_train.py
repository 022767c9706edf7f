"""The fast engine (v3_fast_train, its kernels in v3_fast_kernels) against the plain loop.

On CPU every piece is checked for numerical equivalence with the real thing: the grouped
model against separate V3LSTMModels (float64, forward and gradients), the batched AdamW
against torch.optim.AdamW + clip_grad_norm_, the learning rate against
CosineAnnealingWarmRestarts, and whole multi-epoch trainings (early stopping, re-packing,
resuming across engines) against v3_trainer.train_model, and the CUDA-graph branch with
stand-ins for torch.cuda's graph objects. MODEL has the quantile head (on by default), so
every whole-training comparison covers it too (train_pinball / val_pinball per epoch, the
head's weights); one test trains the model without it. The CUDA-only tests at the end (graph capture, the
fused cell, no host syncs, dropout masks in a graph, a failed capture) run on a GPU machine:
bench/run_gpu_check.sh.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hst

import v3_fast_check as check
import v3_fast_group as fast_group
import v3_fast_kernels as kernels
import v3_fast_train as fast
from v3_common import CheckpointError, ConfigError, StorageError
from v3_data_processor import FeatureConfig, prepare_dataset
from v3_lstm_model import ModelConfig, V3LSTMModel, quantile_pinball
from v3_market_data import synthetic_klines
from v3_engine import train_jobs
from v3_checkpoint import load_checkpoint, model_from_checkpoint
from v3_trainer import (PlainTrial, TrainConfig, TrainJob, predict_quantiles_standardized,
                        predict_standardized)
from tests.conftest import assert_same_state, without_time

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (bench/run_gpu_check.sh)")

MODEL = ModelConfig(input_size=4, hidden_size=4, num_layers=2, dropout=0.0)   # with quantile head
FEATURES = FeatureConfig(seq_len=8, n_components=4)
# lr, patience and T0 chosen so the three pairs stop early at three different epochs (5, 3, 6).
# device='cpu' even on a GPU machine: these are the CPU equivalence tests (the CUDA ones say so).
TRAIN = TrainConfig(epochs=8, batch_size=16, patience=2, scheduler_t0=2, learning_rate=0.003,
                    checkpoint_every_s=0.0, device="cpu")


@pytest.fixture(scope="module")
def pairs():
    """Three pairs with different sample counts (120, 148, 176 training windows)."""
    return {s: prepare_dataset(synthetic_klines(s, "15m", n), FEATURES, interval="15m")
            for s, n in (("BTCUSDT", 480), ("ETHUSDT", 520), ("SOLUSDT", 560))}


def make_jobs(pairs, model=MODEL, **kw):
    return [TrainJob(key=s, symbol=s, interval="15m", data=d, model_config=model, desc=s, **kw)
            for s, d in pairs.items()]


def assert_same_training(a, b, *, rtol=1e-4, atol=1e-4):
    """Two outcomes of the same training: same epochs, stops and losses to float rounding."""
    assert (a.epochs_done, a.stopped_early, a.best_epoch) == (b.epochs_done, b.stopped_early, b.best_epoch)
    assert len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history):
        assert ha.keys() == hb.keys()
        assert ha["epoch"] == hb["epoch"]
        assert ha["lr"] == pytest.approx(hb["lr"], rel=1e-12)
        for k in ("train_loss", "val_loss", "train_pinball", "val_pinball"):
            if k in ha:
                assert ha[k] == pytest.approx(hb[k], rel=rtol), k
    assert a.best_state.keys() == b.best_state.keys()
    for k in a.best_state:
        torch.testing.assert_close(a.best_state[k], b.best_state[k], rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# Pieces


@pytest.mark.parametrize("cfg", [
    ModelConfig(input_size=5, hidden_size=6, num_layers=3, dropout=0.0),
    ModelConfig(input_size=5, hidden_size=6, num_layers=1, dropout=0.0, bidirectional=False,
                use_attention=False),
    ModelConfig(input_size=5, hidden_size=6, num_layers=2, dropout=0.0, quantiles=()),
    ModelConfig(input_size=5, hidden_size=6, num_layers=1, dropout=0.0, quantiles=(0.1, 0.3, 0.9)),
], ids=["bidirectional-attention-3-layers", "unidirectional-last-step-1-layer", "no-quantile-head",
        "three-uneven-quantiles"])
def test_grouped_model_matches_separate_models_forward_and_gradients(cfg):
    torch.manual_seed(0)
    M, B, T = 3, 4, 7
    models = [V3LSTMModel(cfg).double() for _ in range(M)]
    layout = kernels.block_layout(cfg)
    assert ("quantile_head.weight" in layout) == bool(cfg.quantiles)
    p = kernels.pack_states([m.state_dict() for m in models], layout, device="cpu", dtype=torch.float64)
    for t in p.values():
        t.requires_grad_(True)
    x = torch.randn(M, B, T, cfg.input_size, dtype=torch.float64)    # (M, B, T, K)
    y = torch.randn(M, B, dtype=torch.float64)
    ref_pq = [m.forward_with_quantiles(x[i]) for i, m in enumerate(models)]
    ref = torch.stack([pq[0] for pq in ref_pq])
    torch.testing.assert_close(ref, torch.stack([m(x[i]) for i, m in enumerate(models)]), rtol=0, atol=0)
    xt = x.transpose(1, 2).contiguous()
    out, q = kernels.grouped_forward_with_quantiles(p, xt, cfg, train=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(kernels.grouped_forward(p, xt, cfg, train=True), ref, rtol=0, atol=1e-12)
    loss_ref, loss = ((ref - y) ** 2).sum(), ((out - y) ** 2).sum()
    if cfg.quantiles:
        ref_q = torch.stack([pq[1] for pq in ref_pq])                  # (M, B, Q)
        assert q.shape == ref_q.shape == (M, B, len(cfg.quantiles))
        torch.testing.assert_close(q, ref_q, rtol=0, atol=1e-12)
        levels = torch.tensor(cfg.quantiles, dtype=torch.float64)
        loss_ref = loss_ref + quantile_pinball(ref_q, y, levels).sum()
        loss = loss + quantile_pinball(q, y, levels).sum()
    else:
        assert q is None and all(pq[1] is None for pq in ref_pq)
    loss_ref.backward()
    loss.backward()
    for i, m in enumerate(models):
        grads = kernels.unpack_state({b: t.grad for b, t in p.items()}, layout, i)
        for name, param in m.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, rtol=0, atol=1e-12, msg=name)
    # state_dict round trip: model i of the blocks is exactly V3LSTMModel i
    back = kernels.unpack_state({b: t.detach() for b, t in p.items()}, layout, 1)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in models[1].state_dict().items()}
    assert all(torch.equal(back[k], v) for k, v in models[1].state_dict().items())


def test_reference_cell_backward_is_the_gradient_of_its_forward():
    torch.manual_seed(1)
    gi, gh = (torch.randn(5, 12, dtype=torch.float64, requires_grad=True) for _ in range(2))
    c = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    h2, c2, ws = kernels._cell_reference(gi, gh, c)
    dh, dc = torch.randn_like(h2), torch.randn_like(c2)
    d_gi, d_c = torch.autograd.grad((h2 * dh).sum() + (c2 * dc).sum(), (gi, c))
    dgates, dc_prev = kernels._cell_reference_backward(dh, dc, c.detach(), c2.detach(), ws.detach())
    torch.testing.assert_close(dgates, d_gi, rtol=0, atol=1e-12)
    torch.testing.assert_close(dc_prev, d_c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t_mult", [1, 2])
def test_learning_rate_is_the_schedulers_at_every_fractional_epoch(t_mult):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=t_mult,
                                                                 eta_min=1e-6)
    n = 7  # batches per epoch
    assert kernels.cosine_warm_restarts_lr(0.0, base_lr=1e-3, t0=3, t_mult=t_mult, eta_min=1e-6) \
        == opt.param_groups[0]["lr"]
    for ep in range(12):
        for i in range(n):
            sched.step(ep + (i + 1) / n)
            assert kernels.cosine_warm_restarts_lr(ep + (i + 1) / n, base_lr=1e-3, t0=3, t_mult=t_mult,
                                                eta_min=1e-6) == opt.param_groups[0]["lr"]


def test_grouped_adamw_is_torch_adamw_with_clipping_per_model():
    torch.manual_seed(2)
    shapes = [(3, 4), (5,)]
    M, lrs = 3, [1e-2, 5e-3, 2e-2]
    ref = [[torch.nn.Parameter(torch.randn(*s)) for s in shapes] for _ in range(M)]
    opts = [torch.optim.AdamW(ps, lr=lr, weight_decay=0.1) for ps, lr in zip(ref, lrs)]
    params = [torch.stack([ref[m][k].detach() for m in range(M)]).clone() for k in range(len(shapes))]
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    steps = torch.zeros(M, dtype=torch.float64)
    lr = torch.tensor(lrs, dtype=torch.float64)
    for it in range(4):
        grads = [torch.randn_like(p) * (5.0 if it % 2 else 0.1) for p in params]  # some get clipped
        do = torch.tensor([1.0, float(it == 3), 1.0], dtype=torch.float64)   # model 1 waits
        before = [p[1].clone() for p in params], [a[1].clone() for a in m1]
        kernels.grouped_adamw_(params, grads, m1, m2, steps, lr, do, weight_decay=0.1, max_norm=1.0)
        for m in range(M):
            if do[m] == 0:
                assert all(torch.equal(p[1], b) for p, b in zip(params, before[0]))
                assert all(torch.equal(a[1], b) for a, b in zip(m1, before[1]))
                continue
            for k, p in enumerate(ref[m]):
                p.grad = grads[k][m].clone()
            torch.nn.utils.clip_grad_norm_(ref[m], 1.0)
            opts[m].step()
    for m in range(M):
        for k, p in enumerate(ref[m]):
            torch.testing.assert_close(params[k][m], p.detach(), rtol=1e-6, atol=1e-7)
        assert opts[m].state[ref[m][0]]["step"].item() == steps[m].item()
    assert steps.tolist() == [4.0, 1.0, 4.0]


# ---------------------------------------------------------------------------------------
# Whole trainings against the plain loop


@pytest.mark.slow
def test_fast_engine_trains_like_the_plain_loop_with_early_stopping_and_repacking(pairs, caplog):
    plain = train_jobs(make_jobs(pairs), dataclasses.replace(TRAIN, engine="plain"),
                       show_progress=False)
    with caplog.at_level(logging.INFO, logger="v3"):
        quick = train_jobs(make_jobs(pairs), dataclasses.replace(TRAIN, engine="fast"),
                           show_progress=False)
    assert {o.engine for o in plain.values()} == {"plain"}
    assert {o.engine for o in quick.values()} == {"fast-eager"}  # CPU: no CUDA graph
    stops = sorted(o.epochs_done for o in plain.values())
    assert len(set(stops)) == 3 and all(o.stopped_early for o in plain.values()), stops
    for key in plain:
        assert_same_training(plain[key], quick[key])
    assert "fast engine: 3 models in 1 group(s) on cpu (fp32)" in caplog.text
    assert "fast engine: 2 of 3 models still training; re-packed the group" in caplog.text
    assert "ETHUSDT: early stop at epoch 3 (best" in caplog.text
    # the resume state is the plain loop's: same keys, loadable optimizer and scheduler
    a, b = plain["SOLUSDT"].resume_state, quick["SOLUSDT"].resume_state
    assert a.keys() == b.keys()
    assert a["scheduler_state"] == b["scheduler_state"]
    assert a["optimizer_state"]["param_groups"] == b["optimizer_state"]["param_groups"]
    assert a["optimizer_state"]["state"].keys() == b["optimizer_state"]["state"].keys()
    for i, st in a["optimizer_state"]["state"].items():
        assert st["step"] == b["optimizer_state"]["state"][i]["step"]
        torch.testing.assert_close(st["exp_avg_sq"], b["optimizer_state"]["state"][i]["exp_avg_sq"],
                                   rtol=1e-3, atol=1e-9)


@pytest.mark.slow
def test_fast_engine_trains_the_model_without_quantile_head_like_the_plain_loop(pairs):
    """quantiles=(): the model before the head, in both engines; no pinball in the history."""
    model = dataclasses.replace(MODEL, quantiles=())
    cfg = dataclasses.replace(TRAIN, epochs=3, early_stopping=False)
    two = {k: v for k, v in list(pairs.items())[:2]}
    plain = train_jobs(make_jobs(two, model), dataclasses.replace(cfg, engine="plain"),
                       show_progress=False)
    quick = train_jobs(make_jobs(two, model), dataclasses.replace(cfg, engine="fast"),
                       show_progress=False)
    for key in plain:
        assert_same_training(plain[key], quick[key])
        assert set(plain[key].history[-1]) == {"epoch", "train_loss", "val_loss", "lr",
                                               "val_stop"}
        assert not any(k.startswith("quantile_head") for k in quick[key].best_state)


def test_both_engines_record_the_validation_pinball_of_the_quantile_head(pairs):
    """val_pinball per epoch is the mean pinball loss of the best weights' quantiles on the
    validation split (recomputed here, in the head's unit: the recent volatility), and
    val_loss stays the point forecast's MSE."""
    cfg = dataclasses.replace(TRAIN, epochs=2, early_stopping=False)
    one = dict(list(pairs.items())[:1])
    for engine in ("plain", "fast"):
        out = train_jobs(make_jobs(one, MODEL), dataclasses.replace(cfg, engine=engine),
                         show_progress=False)["BTCUSDT"]
        data = pairs["BTCUSDT"]
        h = {e["epoch"]: e for e in out.history}[out.best_epoch]
        model = V3LSTMModel(MODEL)
        model.load_state_dict(out.best_state)
        va = data.split("val")
        unit = data.unit(MODEL.quantile_scale)[va].astype(np.float64)
        q = predict_quantiles_standardized(model, data, va) / unit[:, None]
        y = data.target[va]
        pin = quantile_pinball(torch.as_tensor(q, dtype=torch.float64),
                               torch.as_tensor(y / unit, dtype=torch.float64),
                               torch.tensor(MODEL.quantiles, dtype=torch.float64)).mean()
        assert h["val_pinball"] == pytest.approx(float(pin), rel=1e-4), engine
        mse = float(((predict_standardized(model, data, va) - y) ** 2).mean())
        assert h["val_loss"] == pytest.approx(mse, rel=1e-4)
        assert out.best_val_loss == h["val_stop"] == pytest.approx(
            mse + MODEL.quantile_weight * float(pin), rel=1e-4)
        assert all(e["train_pinball"] > 0 for e in out.history)


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [("fast", "plain"), ("plain", "fast")])
def test_either_engine_resumes_what_the_other_saved(pairs, first, then):
    cfg = dataclasses.replace(TRAIN, epochs=4, early_stopping=False)
    two = {k: v for k, v in list(pairs.items())[:2]}
    whole = train_jobs(make_jobs(two), dataclasses.replace(cfg, engine="plain"), show_progress=False)
    half = train_jobs(make_jobs(two), dataclasses.replace(cfg, epochs=2, engine=first),
                      show_progress=False)
    # the first run's training time, as if it had taken 1000 s: the total counts it
    jobs = [dataclasses.replace(j, resume={**half[j.key].resume_state, "train_seconds": 1000.0})
            for j in make_jobs(two)]
    rest = train_jobs(jobs, dataclasses.replace(cfg, engine=then), show_progress=False)
    for key in whole:
        assert rest[key].epochs_done == 4
        assert_same_training(whole[key], rest[key])
        assert 1000.0 < rest[key].seconds < 1000.0 + 60
        assert rest[key].resume_state["train_seconds"] == rest[key].seconds
        assert 0 < half[key].seconds == half[key].resume_state["train_seconds"] < 60


@pytest.mark.slow
def test_dropout_runs_and_a_seed_repeats_the_run(pairs):
    model = dataclasses.replace(MODEL, dropout=0.3)
    cfg = dataclasses.replace(TRAIN, epochs=2, engine="fast")
    two = {k: v for k, v in list(pairs.items())[:2]}
    a = train_jobs(make_jobs(two, model), cfg, show_progress=False)
    b = train_jobs(make_jobs(two, model), cfg, show_progress=False)
    c = train_jobs(make_jobs(two, model), dataclasses.replace(cfg, seed=7), show_progress=False)
    for key in a:
        assert a[key].history == b[key].history
        assert a[key].history != c[key].history
        assert all(h["val_loss"] == h["val_loss"] for h in a[key].history)  # not NaN


def test_one_bad_pair_fails_alone_and_on_done_errors_go_to_on_error(pairs, caplog):
    jobs = make_jobs(pairs)
    jobs[0] = dataclasses.replace(jobs[0], model_config=dataclasses.replace(MODEL, input_size=5))
    done, failed = [], {}

    def on_done(job, outcome):
        if job.key == "ETHUSDT":
            raise CheckpointError("disk full (test)")
        done.append(job.key)

    out = train_jobs(jobs, dataclasses.replace(TRAIN, epochs=2, engine="fast"), show_progress=False,
                     on_done=on_done, on_error=lambda job, e: failed.setdefault(job.key, e))
    assert done == ["SOLUSDT"] and list(out) == ["SOLUSDT"]
    assert isinstance(failed["BTCUSDT"], ConfigError)
    assert "BTCUSDT: the data has 4 features per candle, the model expects 5" in str(failed["BTCUSDT"])
    assert isinstance(failed["ETHUSDT"], CheckpointError)


def test_a_training_state_that_cannot_be_saved_fails_its_pair_alone(pairs, caplog):
    """Issue 21 item 5: a StorageError from one model's periodic save stopped the group."""
    def refuse(state):
        raise StorageError("cannot write ETHUSDT_15m_resume.pt: No space left on device (test)")

    jobs = [dataclasses.replace(j, checkpoint_fn=refuse if j.key == "ETHUSDT" else None)
            for j in make_jobs(pairs)]
    failed = {}
    out = train_jobs(jobs, dataclasses.replace(TRAIN, epochs=3, engine="fast"), show_progress=False,
                     on_error=lambda job, e: failed.setdefault(job.key, e))
    assert sorted(out) == ["BTCUSDT", "SOLUSDT"] and list(failed) == ["ETHUSDT"]
    assert isinstance(failed["ETHUSDT"], StorageError)
    assert "ETHUSDT: its training state was not saved: cannot write" in caplog.text


@pytest.mark.slow
def test_checkpoints_during_training_and_on_interrupt(pairs, monkeypatch, caplog):
    saved: dict = {}
    jobs = make_jobs(pairs, checkpoint_fn=None)
    jobs = [dataclasses.replace(j, checkpoint_fn=lambda st, k=j.key: saved.setdefault(k, []).append(st))
            for j in jobs]
    calls = {"n": 0}
    real = fast_group.TrainGroup.run_epoch

    def run_then_interrupt(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(fast_group.TrainGroup, "run_epoch", run_then_interrupt)
    cfg = dataclasses.replace(TRAIN, epochs=6, early_stopping=False, engine="fast")
    with caplog.at_level(logging.WARNING, logger="v3"), pytest.raises(KeyboardInterrupt):
        train_jobs(jobs, cfg, show_progress=False)
    # checkpoint_every_s=0: a state after epochs 1 and 2, then one more on the interrupt
    assert [st["epoch"] for st in saved["BTCUSDT"]] == [1, 2, 2]
    assert "BTCUSDT: interrupted after epoch 2; its state is saved, re-run to resume" in caplog.text
    monkeypatch.setattr(fast_group.TrainGroup, "run_epoch", real)
    resumed = [dataclasses.replace(j, resume=saved[j.key][-1], checkpoint_fn=None) for j in jobs]
    out = train_jobs(resumed, cfg, show_progress=False)
    whole = train_jobs(make_jobs(pairs), cfg, show_progress=False)
    for key in out:
        assert out[key].epochs_done == 6
        assert_same_training(whole[key], out[key])


# dropout, so the group's random masks must repeat too; 8, 10 and 11 batches an epoch
INTERRUPT_MODEL = dataclasses.replace(MODEL, dropout=0.3)
INTERRUPT_TRAIN = dataclasses.replace(TRAIN, epochs=3, early_stopping=False, engine="fast")


@pytest.fixture(scope="module")
def fast_uninterrupted(pairs):
    """The fast run without interrupt, and each job's state after every epoch."""
    states: dict = {}
    jobs = [dataclasses.replace(j, checkpoint_fn=lambda st, k=j.key: states.setdefault(k, []).append(st))
            for j in make_jobs(pairs, INTERRUPT_MODEL)]
    return train_jobs(jobs, INTERRUPT_TRAIN, show_progress=False), states


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=hst.sampled_from(["step", "validation", "checkpoint"]), epoch=hst.integers(1, 3),
       step=hst.integers(0, 10))
@example(where="checkpoint", epoch=3, step=0)     # while the finished models are handed over
def test_fast_engine_interrupted_anywhere_resumes_to_exactly_the_uninterrupted_run(
        pairs, fast_uninterrupted, caplog, where, epoch, step):
    """As the plain loop's test (tests/test_trainer.py): Ctrl-C before the grouped step
    `step` of epoch `epoch`, in its validation pass or while the states after it are saved,
    keeps each job's state after its last finished epoch; the resumed group ends with every
    tensor equal to the uninterrupted run's."""
    whole, per_epoch = fast_uninterrupted
    saved: dict = {}
    calls = {"val": 0, "ckpt": 0}
    real_step, real_val = fast_group.TrainGroup._train_step, fast_group.TrainGroup._validate

    def train_step(self):
        if where == "step" and self.slots[0].record.epoch == epoch - 1 and int(self.step_i) == step:
            raise KeyboardInterrupt
        return real_step(self)

    def validate(self):
        calls["val"] += 1
        if where == "validation" and calls["val"] == epoch:
            raise KeyboardInterrupt
        return real_val(self)

    def checkpoint_fn(state, key):
        calls["ckpt"] += 1
        if where == "checkpoint" and calls["ckpt"] == 3 * (epoch - 1) + 2:   # the second job's
            raise KeyboardInterrupt
        saved.setdefault(key, []).append(state)

    jobs = [dataclasses.replace(j, checkpoint_fn=lambda st, k=j.key: checkpoint_fn(st, k))
            for j in make_jobs(pairs, INTERRUPT_MODEL)]
    caplog.clear()
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, logger="v3"):
        mp.setattr(fast_group.TrainGroup, "_train_step", train_step)
        mp.setattr(fast_group.TrainGroup, "_validate", validate)
        with pytest.raises(KeyboardInterrupt):
            train_jobs(jobs, INTERRUPT_TRAIN, show_progress=False)
    # in the last epoch the interrupted checkpoint is the final one of a finished model that
    # is being handed over (ETHUSDT's): it and SOLUSDT are saved finished, BTCUSDT went before
    last_done = epoch if where == "checkpoint" else epoch - 1
    if last_done == 0:
        assert saved == {} and "interrupted" not in caplog.text
    for key in pairs:
        if last_done:
            assert saved[key][-1]["epoch"] == last_done
            assert_same_state(without_time(saved[key][-1]), without_time(per_epoch[key][last_done - 1]))
            assert (f"{key}: interrupted after epoch {last_done}; its state is saved" in caplog.text) \
                == (key != "BTCUSDT" or last_done < INTERRUPT_TRAIN.epochs)
    with caplog.at_level(logging.WARNING, logger="v3"):
        resumed = train_jobs([dataclasses.replace(j, resume=saved[j.key][-1] if saved else None,
                                                  checkpoint_fn=None) for j in jobs],
                             INTERRUPT_TRAIN, show_progress=False)
    assert "with the plain loop" not in caplog.text      # the fast engine resumed them itself
    assert {o.engine for o in resumed.values()} == {"fast-eager"}
    for key in pairs:
        assert_same_state(without_time(resumed[key].resume_state),
                          without_time(whole[key].resume_state), key)
        assert resumed[key].history == whole[key].history


def test_a_saved_state_comes_back_into_a_group_unchanged(pairs):
    """A resume state (after AdamW steps) packed into a new group and written out again is
    the same state, every tensor exact: the moments go back to the parameters they belong to
    (torch numbers them in named_parameters order, not in the blocks' order)."""
    one, cfg = dict(list(pairs.items())[:1]), dataclasses.replace(TRAIN, epochs=1, engine="fast")
    state = train_jobs(make_jobs(one), cfg, show_progress=False)["BTCUSDT"].resume_state
    assert state["optimizer_state"]["state"][0]["step"] > 0
    group = fast_group.TrainGroup([dataclasses.replace(j, resume=state) for j in make_jobs(one)],
                                  cfg, torch.device("cpu"), use_graph=False, label="t")
    assert_same_state(without_time(group.resume_state(0, group.cpu_blocks([0]))), without_time(state))


@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_a_state_that_stopped_early_resumes_finished(pairs, engine):
    """What an interrupt while a finished model is handed over leaves (its state not yet
    marked complete): resuming it trains nothing more, in either engine."""
    one = {"ETHUSDT": pairs["ETHUSDT"]}                  # stops early at epoch 3 (of 8)
    cfg = dataclasses.replace(TRAIN, engine=engine)
    first = train_jobs(make_jobs(one), cfg, show_progress=False)["ETHUSDT"]
    assert first.stopped_early and first.epochs_done == 3
    again = train_jobs([dataclasses.replace(j, resume=first.resume_state) for j in make_jobs(one)],
                       cfg, show_progress=False)["ETHUSDT"]
    assert again.stopped_early and again.epochs_done == 3 and again.history == first.history
    assert_same_state(without_time(again.resume_state), without_time(first.resume_state))


def test_a_step_on_padded_tables_changes_nothing(pairs):
    """What CUDA-graph warm-up and capture rely on: with the padded tables (zero loss
    weights, no optimizer step) a training step leaves every model exactly as it was."""
    group = fast_group.TrainGroup(make_jobs(pairs, dataclasses.replace(MODEL, dropout=0.3)), TRAIN,
                        torch.device("cpu"), use_graph=False, label="t")
    group._fill_tables([0, 1, 2])
    for _ in range(2):                       # train a little, so moments and steps are not zero
        group._train_step()
    before = [{b: t.detach().clone() for b, t in d.items()}
              for d in (group.params, group.exp_avg, group.exp_avg_sq)]
    steps = group.steps.clone()
    group._pad_tables()
    group.step_i.zero_()
    group._train_step()
    for d, ref in zip((group.params, group.exp_avg, group.exp_avg_sq), before):
        assert all(torch.equal(d[b], ref[b]) for b in ref)
    assert torch.equal(group.steps, steps)


@pytest.mark.slow
def test_failed_graph_capture_falls_back_to_eager_and_says_so(pairs, caplog):
    cfg = dataclasses.replace(TRAIN, epochs=3, early_stopping=False)
    group = fast_group.TrainGroup(make_jobs(pairs), cfg, torch.device("cpu"), use_graph=False,
                                  label="group 1/1")
    group.use_graph = True                   # as on CUDA: on this CPU build capture must fail
    with caplog.at_level(logging.WARNING, logger="v3"):
        for _ in range(cfg.epochs):
            group.run_epoch()
    assert "group 1/1: CUDA graph capture failed (" in caplog.text
    assert "running the fast engine eagerly" in caplog.text
    assert group.graph is None and group.use_graph is False
    plain = train_jobs(make_jobs(pairs), dataclasses.replace(cfg, engine="plain"), show_progress=False)
    for m, s in enumerate(group.slots):
        assert_same_training(plain[s.job.key], group.outcome(m, group.cpu_blocks([m])))


def test_a_failed_capture_is_followed_by_one_that_succeeds_on_the_same_stream(monkeypatch):
    """The recovery, on CPU, with stand-ins for torch.cuda that model the default CUDA
    generator: a capture puts it in capture mode, only a capture that ends cleanly takes it
    out (a failing capture_end skips that, as in torch). After the recovery it must be out,
    and the reset capture must have run on the failed capture's stream."""
    gen = {"capturing": True}                  # as a failed capture leaves it
    captures, events = [], []

    class Stream:
        def __init__(self, device=None):
            self.name = "new"

        def wait_stream(self, other):
            pass

    class Capture:
        def __init__(self, graph, stream=None):
            self.stream = stream

        def __enter__(self):
            gen["capturing"] = True
            captures.append(self.stream)

        def __exit__(self, *exc):
            gen["capturing"] = False           # capture_end succeeded: the epilogue ran

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    side = Stream()
    side.name = "side"
    fast_group.recover_from_failed_capture(torch.device("cpu"), side, None, "t")
    assert gen["capturing"] is False
    assert [s.name for s in captures] == ["side"]
    assert events[0] == "sync"                 # the side stream's work is done first


@pytest.mark.slow
def test_graph_branch_replaying_bindings_frozen_at_capture(pairs, monkeypatch, caplog):
    """run_epoch's CUDA-graph branch on CPU, against the plain loop. torch.cuda's stream and
    graph objects are stood in for by fakes: capture runs nothing and keeps the group's
    bindings as they are then, and a replay runs the step on those, as a real graph replays
    on the addresses it captured. A tensor rebound (re-pack, resume) without a new capture
    would train a stale copy here, as on a GPU, and the comparison with the plain loop would
    fail."""
    real_step, capturing, graphs = fast_group.TrainGroup._train_step, [], []

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    class Graph:
        def replay(self):
            real_step(self.frozen)

    class Capture:
        def __init__(self, graph, stream=None):
            self.graph = graph

        def __enter__(self):
            capturing.append(self.graph)

        def __exit__(self, *exc):
            capturing.clear()

    def step(self):
        if not capturing:
            return real_step(self)
        frozen = copy.copy(self)                  # the attributes as bound at capture ...
        frozen.params, frozen.exp_avg, frozen.exp_avg_sq = (dict(d) for d in (
            self.params, self.exp_avg, self.exp_avg_sq))   # ... and the dicts' entries
        frozen.acc = list(self.acc)
        capturing[0].frozen = frozen
        graphs.append(capturing[0])

    monkeypatch.setattr(fast_group.TrainGroup, "_train_step", step)
    for name, fake in (("Stream", Stream), ("current_stream", lambda device=None: Stream()),
                       ("stream", lambda s: contextlib.nullcontext()), ("CUDAGraph", Graph),
                       ("graph", Capture)):
        monkeypatch.setattr(torch.cuda, name, fake)
    plain = train_jobs(make_jobs(pairs), dataclasses.replace(TRAIN, engine="plain"), show_progress=False)
    group = fast_group.TrainGroup(make_jobs(pairs), TRAIN, torch.device("cpu"), use_graph=False,
                                  label="g")
    group.use_graph = True                        # as on CUDA
    out: dict = {}
    with caplog.at_level(logging.INFO, logger="v3"):
        fast._run_group(group, TRAIN, show_progress=False, on_done=None, on_error=None, out=out)
    assert "CUDA graph capture failed" not in caplog.text
    assert len(graphs) == 1 + caplog.text.count("re-packed the group") == 3
    assert {o.engine for o in out.values()} == {"fast-graph"}
    for key in plain:
        assert_same_training(plain[key], out[key])


@pytest.mark.slow
def test_a_failure_inside_torch_hands_unfinished_models_to_the_plain_loop(pairs, monkeypatch, caplog):
    """What a CUDA out-of-memory does: the group's unfinished jobs are trained by the plain loop."""
    cfg = dataclasses.replace(TRAIN, epochs=3, early_stopping=False, engine="fast")
    real = fast_group.TrainGroup.run_epoch

    def oom_in_epoch_2(self):
        if min(s.record.epoch for s in self.slots) == 1:
            raise RuntimeError("CUDA out of memory (test)")
        return real(self)

    monkeypatch.setattr(fast_group.TrainGroup, "run_epoch", oom_in_epoch_2)
    with caplog.at_level(logging.WARNING, logger="v3"):
        out = train_jobs(make_jobs(pairs), cfg, show_progress=False)
    assert "fast engine failed (RuntimeError: CUDA out of memory (test)); training its 3 " \
           "unfinished models with the plain loop" in caplog.text
    assert {o.engine for o in out.values()} == {"plain"} and sorted(out) == sorted(pairs)
    assert all(o.epochs_done == 3 for o in out.values())


@pytest.mark.parametrize("where", ["on_done", "checkpoint_fn"])
def test_a_runtime_error_from_a_callback_reaches_the_caller(pairs, where, caplog):
    """As from the plain loop. Not a failure inside torch: no fallback that loses the job
    and trains the rest again with the plain loop."""
    def broken(*_):
        raise RuntimeError(f"{where} broke (test)")

    kw = {"on_done": broken} if where == "on_done" else {}
    jobs = make_jobs(pairs, checkpoint_fn=broken if where == "checkpoint_fn" else None)
    for engine in ("plain", "fast"):
        cfg = dataclasses.replace(TRAIN, epochs=2, engine=engine)
        with caplog.at_level(logging.WARNING, logger="v3"), \
                pytest.raises(RuntimeError, match=f"{where} broke \\(test\\)"):
            train_jobs(jobs, cfg, show_progress=False, **kw)
    assert "with the plain loop" not in caplog.text


# ---------------------------------------------------------------------------------------
# The first group's check against the plain loop (v3_fast_check)


def test_the_check_tolerates_float_rounding_and_catches_what_a_bug_does():
    """v3_fast_check.disagreement on made-up numbers: rounding-sized differences pass, and
    so does AdamW's sign-like first step going the other way on a few weights with TF32;
    a loss 1 % off, a NaN, a gradient 5 % off or an update in the wrong direction do not."""
    torch.manual_seed(0)
    lr = 1e-3
    w0 = {"a": torch.randn(1000), "b": torch.randn(10)}
    g = {k: torch.randn_like(v) for k, v in w0.items()}
    w1 = {k: w0[k] - lr * g[k].sign() for k in w0}               # AdamW's first step
    m1 = {k: 0.1 * v for k, v in g.items()}
    losses = {"train_mse_sum": 10.0, "train_pinball_sum": 4.0, "val_mse": 1.0, "val_pinball": 0.3}
    plain = PlainTrial(train_mse_sum=10.0, train_pinball_sum=4.0, val_mse=1.0, val_pinball=0.3,
                       model_state=w1, exp_avg=m1)
    fp32, tf32 = check.TOLERANCES[False], check.TOLERANCES[True]

    def dis(tol, losses=losses, w=w1, m=m1):
        return check.disagreement(losses, w, m, plain, w0, tol)

    assert dis(fp32) is None
    assert dis(fp32, {k: v * (1 + 1e-5) for k, v in losses.items()},
               m={k: v * (1 + 1e-4) for k, v in m1.items()}) is None
    one_flip = dict(w1, a=w1["a"].clone())
    one_flip["a"][0] = w0["a"][0] + lr * g["a"][0].sign()       # 1 weight of 1010: 2 sqrt(f) = 0.06
    assert dis(tf32, w=one_flip) is None
    assert "the weights after the step: off by 6.3e-02 of the update's norm > 0.01" in dis(fp32, w=one_flip)
    assert "val_mse 1.01 (fast) vs 1 (plain): relative 1.0e-02 > 0.001" in \
        dis(tf32, dict(losses, val_mse=1.01))
    assert "train_mse_sum nan (fast)" in dis(tf32, dict(losses, train_mse_sum=float("nan")))
    assert "the gradient of b (AdamW's first moment): off by 5.0e-02 of its norm > 0.01" in \
        dis(tf32, m=dict(m1, b=m1["b"] * 1.05))
    assert "the weights after the step: off by 2.0e+00" in dis(tf32, w={k: 2 * w0[k] - w1[k] for k in w0})


@pytest.mark.slow
def test_a_first_group_that_agrees_trains_on_exactly_as_without_the_check(pairs, monkeypatch, caplog):
    """The check forced on the CPU: the engines agree, the run goes on with the fast engine,
    and it ends exactly as a run without the check (the trial puts every weight, moment and
    step count back; dropout on, so the random generator must not have moved either)."""
    model = dataclasses.replace(MODEL, dropout=0.3)
    cfg = dataclasses.replace(TRAIN, epochs=2, early_stopping=False, engine="fast")
    without = train_jobs(make_jobs(pairs, model), cfg, show_progress=False)
    monkeypatch.setattr(fast, "CHECK_DEVICES", ("cpu",))
    with caplog.at_level(logging.INFO, logger="v3"):
        checked = train_jobs(make_jobs(pairs, model), cfg, show_progress=False)
    assert ("fast engine: its first training step and validation pass on cpu match the plain "
            "loop's (3 models, fp32 tolerances)") in caplog.text
    assert {(o.engine, o.engine_fallback_reason) for o in checked.values()} == {("fast-eager", None)}
    for key in pairs:
        assert_same_state(without_time(checked[key].resume_state), without_time(without[key].resume_state))


@pytest.mark.slow
def test_a_first_step_that_disagrees_sends_the_run_to_the_plain_loop_and_the_results_say_so(
        tmp_path, monkeypatch, caplog):
    """A grouped step that computes a wrong loss (1 % off), as a GPU bug would: the first
    group's check sees it, warns, every pair trains with the plain loop, and each results
    entry records engine 'plain' and the reason."""
    from conftest import tiny_config
    from v3_colab_training import V3CoLabPipeline
    real = fast_group.TrainGroup._train_step

    def off_by_one_percent(self):
        real(self)
        with torch.no_grad():
            self.sse.mul_(1.01)

    monkeypatch.setattr(fast_group.TrainGroup, "_train_step", off_by_one_percent)
    monkeypatch.setattr(fast, "CHECK_DEVICES", ("cpu",))
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, engine="fast", device="cpu"))
    pipe = V3CoLabPipeline(tmp_path / "out", config=cfg, coins=["BTCUSDT"], timeframes=["15m", "1h"])
    pipe.step_2_download_binance_data()
    pipe.step_3_preprocess_features()
    with caplog.at_level(logging.WARNING, logger="v3"):
        res = pipe.step_4_train_models()
    assert ("fast engine: the fast engine's first training step on cpu disagreed with the plain "
            "loop's for BTCUSDT_15m: train_mse_sum") in caplog.text
    assert "training all 2 unfinished models with the plain loop" in caplog.text
    for key in ("BTCUSDT_15m", "BTCUSDT_1h"):
        r = res[key]
        assert r["status"] == "success" and r["total_epochs"] == 2 and r["engine"] == "plain"
        assert r["engine_fallback_reason"].startswith(
            "the fast engine's first training step on cpu disagreed with the plain loop's for "
            "BTCUSDT_15m: train_mse_sum ")
        assert r["engine_fallback_reason"].endswith("(fp32 tolerances, v3_fast_check)")


@pytest.mark.slow
def test_pipeline_step_4_with_the_fast_engine(tmp_path):
    from conftest import tiny_config
    from v3_colab_training import V3CoLabPipeline
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, engine="fast", device="cpu"))
    pipe = V3CoLabPipeline(tmp_path / "out", config=cfg, coins=["BTCUSDT"], timeframes=["15m", "1h"])
    pipe.step_2_download_binance_data()
    pipe.step_3_preprocess_features()
    res = pipe.step_4_train_models()
    for key in ("BTCUSDT_15m", "BTCUSDT_1h"):
        assert res[key]["status"] == "success" and res[key]["total_epochs"] == 2
        ckpt = load_checkpoint(pipe.model_path(*key.split("_")))
        model = model_from_checkpoint(ckpt)          # strict load: the state_dict format is unchanged
        assert model(torch.zeros(1, cfg.features.seq_len, model.config.input_size)).shape == (1,)
    res = pipe.step_3_train_models(epochs=3)         # the guide's "resume training" call
    assert all(res[k]["total_epochs"] == 3 for k in ("BTCUSDT_15m", "BTCUSDT_1h"))


def test_cli_engine_flag():
    from v3_colab_training import build_parser, pipeline_from_args
    pipe, _ = pipeline_from_args(build_parser().parse_args(["--demo", "--engine", "plain"]))
    assert pipe.config.train.engine == "plain"
    pipe, _ = pipeline_from_args(build_parser().parse_args(["--demo"]))
    assert pipe.config.train.engine == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--engine", "turbo"])


@pytest.mark.slow
def test_benchmark_tiny_cpu_run_writes_its_json(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu_training.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_training", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--device", "cpu", "--epochs", "10", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_gpu_training.json").read_text())
    assert res["device"] == "cpu" and res["tiny"] is True
    for engine in ("plain", "fast"):
        assert res[engine]["ms_per_model_step"] > 0
    assert res["fast"]["engine"] == "fast-eager"
    assert res["speedup"] > 0 and res["parity"]["pairs"]
    assert all(abs(p["rel_diff"]) < 1 for p in res["parity"]["pairs"])
    text = capsys.readouterr().out
    assert "ms/model-step" in text and "speedup" in text and "parity" in text
    assert "fast: epoch 10/10, 0 models training" in text          # a progress line
    assert res["fast_progress"]["epoch"] == 10 and res["fast_progress"]["ms_per_model_step_so_far"] > 0


def test_benchmark_writes_to_OUT_or_an_ignored_folder_never_into_bench(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu_training.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_training", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.default_out_dir() == tmp_path
    monkeypatch.delenv("OUT")
    root = path.parents[1]
    assert bench.default_out_dir() == root / "v3_output" / "bench"
    assert "v3_output/" in (root / ".gitignore").read_text().split()


# ---------------------------------------------------------------------------------------
# CUDA only (bench/run_gpu_check.sh runs these on a GPU machine)


@needs_cuda
def test_cuda_fused_cell_matches_the_reference():
    dev = torch.device("cuda")
    assert kernels.pick_cell(dev) == "fused"
    torch.manual_seed(3)
    gi, gh = (torch.randn(64, 32, device=dev) for _ in range(2))
    c, dh, dc = (torch.randn(64, 8, device=dev) for _ in range(3))
    ref, fus = kernels._cell_reference(gi, gh, c), kernels._cell_fused(gi, gh, c)
    for a, b in zip(ref, fus):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for d in (dc, None):
        for a, b in zip(kernels._cell_reference_backward(dh, d, c, ref[1], ref[2]),
                        kernels._cell_fused_backward(dh, d, c, fus[1], fus[2])):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_cuda_graph_engine_trains_like_the_plain_loop(pairs, monkeypatch, caplog):
    monkeypatch.setattr(fast, "TF32_MATMUL", False)   # exact fp32 on both sides for this check
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cfg = dataclasses.replace(TRAIN, device="cuda")
    plain = train_jobs(make_jobs(pairs), dataclasses.replace(cfg, engine="plain"), show_progress=False)
    with caplog.at_level(logging.INFO, logger="v3"):
        quick = train_jobs(make_jobs(pairs), dataclasses.replace(cfg, engine="auto"), show_progress=False)
    assert "training engine: fast (engine=auto)" in caplog.text
    assert "CUDA graph capture failed" not in caplog.text
    assert {o.engine for o in quick.values()} == {"fast-graph"}
    for key in plain:
        assert_same_training(plain[key], quick[key], rtol=2e-3, atol=2e-3)


@needs_cuda
def test_cuda_training_step_never_waits_for_the_gpu(pairs):
    cfg = dataclasses.replace(TRAIN, device="cuda")
    group = fast_group.TrainGroup(make_jobs(pairs), cfg, torch.device("cuda"), use_graph=False,
                                  label="t")
    group._fill_tables([0, 1, 2])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")   # any host sync in the step raises
    try:
        for _ in range(3):
            group._train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_cuda
def test_cuda_graph_dropout_masks_change_from_replay_to_replay_and_repeat_with_the_seed(pairs):
    """Dropout inside the captured step: each replay must draw new masks (the graph-safe
    default generator), and torch.manual_seed, as _fill_tables calls it, must repeat them.
    And replaying, as run_epoch does once per step, must not wait for the GPU."""
    model = dataclasses.replace(MODEL, dropout=0.3)
    cfg = dataclasses.replace(TRAIN, device="cuda")
    group = fast_group.TrainGroup(make_jobs(pairs, model), cfg, torch.device("cuda"), use_graph=True,
                                  label="t")
    group._capture()
    assert group.graph is not None

    def two_replays(seed: int) -> list:
        """The training loss of two replays on the same (padded) windows: zero loss weights
        and no optimizer step, so only the dropout masks can make them differ."""
        group._pad_tables()
        group.valid_tab[:2] = 1.0
        group.step_i.zero_()
        torch.manual_seed(seed)
        out = []
        for _ in range(2):
            group.sse.zero_()
            torch.cuda.set_sync_debug_mode("error")   # a replay never waits for the GPU either
            try:
                group.graph.replay()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            out.append(group.sse.cpu().clone())
        return out

    a, b, c = two_replays(1), two_replays(1), two_replays(2)
    assert not torch.equal(a[0], a[1])                          # new masks every replay
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the seed repeats them
    assert not torch.equal(a[0], c[0])


@needs_cuda
@pytest.mark.parametrize("dropout,wrong", [(0.0, False), (0.3, False), (0.3, True)],
                         ids=["no-dropout", "dropout", "a-wrong-step"])
def test_cuda_first_group_check_on_the_real_path(pairs, dropout, wrong, monkeypatch, caplog):
    """On a GPU, as a user runs it (engine auto, TF32 where the GPU has it, CUDA graphs): the
    first group's replayed step and validation pass match the plain loop's and the run goes
    on with the fast engine (with dropout, the graph captured without it for the check is
    captured again); a step made wrong inside the graph sends the run to the plain loop."""
    if wrong:
        real = fast_group.TrainGroup._train_step

        def off_by_one_percent(self):
            real(self)
            with torch.no_grad():
                self.sse.mul_(1.01)

        monkeypatch.setattr(fast_group.TrainGroup, "_train_step", off_by_one_percent)
    cfg = dataclasses.replace(TRAIN, epochs=2, early_stopping=False, device="cuda")
    with caplog.at_level(logging.INFO, logger="v3"):
        out = train_jobs(make_jobs(pairs, dataclasses.replace(MODEL, dropout=dropout)), cfg,
                         show_progress=False)
    assert "CUDA graph capture failed" not in caplog.text
    assert all(o.epochs_done == 2 for o in out.values()) and sorted(out) == sorted(pairs)
    if wrong:
        assert {o.engine for o in out.values()} == {"plain"}
        assert all("disagreed with the plain loop's for BTCUSDT: train_mse_sum" in o.engine_fallback_reason
                   for o in out.values())
    else:
        assert "validation pass on " in caplog.text and "match the plain loop's (3 models" in caplog.text
        assert {(o.engine, o.engine_fallback_reason) for o in out.values()} == {("fast-graph", None)}


@pytest.fixture
def failing_capture(monkeypatch):
    """A host sync inside the captured training step: the CUDA-graph capture fails."""
    real = fast_group.TrainGroup._train_step

    def syncs_while_capturing(self):
        if torch.cuda.is_current_stream_capturing():
            self.sse.sum().item()                  # not allowed during capture: it raises
        return real(self)

    monkeypatch.setattr(fast_group.TrainGroup, "_train_step", syncs_while_capturing)


@needs_cuda
def test_cuda_failed_capture_restores_the_stream_and_trains_eagerly(pairs, failing_capture,
                                                                    caplog):
    """A host sync inside the captured step invalidates the capture; torch.cuda.graph then
    raises from capture_end without putting the caller's stream back. The engine must."""
    cfg = dataclasses.replace(TRAIN, epochs=2, early_stopping=False, device="cuda")
    stream = torch.cuda.current_stream()
    with caplog.at_level(logging.WARNING, logger="v3"):
        out = train_jobs(make_jobs(pairs), dataclasses.replace(cfg, engine="fast"), show_progress=False)
    assert "CUDA graph capture failed" in caplog.text
    assert torch.cuda.current_stream() == stream
    assert {o.engine for o in out.values()} == {"fast-eager"}
    assert all(o.epochs_done == 2 and o.history[-1]["val_loss"] == o.history[-1]["val_loss"]
               for o in out.values())


@needs_cuda
def test_cuda_failed_capture_with_dropout_leaves_eager_and_plain_training_working(
        pairs, failing_capture, caplog):
    """The guide's dropout (0.3) after a failed capture: the capture left the default CUDA
    generator in capture mode, so the next eager dropout raised "Offset increment outside
    graph capture encountered unexpectedly" (the fast engine's eager epoch, then the plain
    loop it fell back to). Both must train now."""
    model = dataclasses.replace(MODEL, dropout=0.3)
    cfg = dataclasses.replace(TRAIN, epochs=2, early_stopping=False, device="cuda")
    with caplog.at_level(logging.WARNING, logger="v3"):
        out = train_jobs(make_jobs(pairs, model), dataclasses.replace(cfg, engine="fast"),
                         show_progress=False)
    assert "CUDA graph capture failed" in caplog.text
    assert "could not reset the CUDA generator" not in caplog.text
    assert "with the plain loop" not in caplog.text          # the eager epochs worked
    assert {o.engine for o in out.values()} == {"fast-eager"}
    assert all(o.epochs_done == 2 and o.history[-1]["val_loss"] == o.history[-1]["val_loss"]
               for o in out.values())
    x = torch.nn.functional.dropout(torch.ones(64, device="cuda"), 0.3, True)  # eager dropout
    assert 0 < int((x == 0).sum()) < 64
    plain = train_jobs(make_jobs(pairs, model), dataclasses.replace(cfg, epochs=1, engine="plain"),
                       show_progress=False)
    assert {o.engine for o in plain.values()} == {"plain"}
    assert all(o.epochs_done == 1 for o in plain.values())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_graph_on_a_device_that_is_not_the_current_one(pairs, monkeypatch, caplog):
    monkeypatch.setattr(fast, "TF32_MATMUL", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.cuda.set_device(0)
    cfg = dataclasses.replace(TRAIN, device="cuda:1")
    plain = train_jobs(make_jobs(pairs), dataclasses.replace(cfg, engine="plain"), show_progress=False)
    with caplog.at_level(logging.WARNING, logger="v3"):
        quick = train_jobs(make_jobs(pairs), dataclasses.replace(cfg, engine="fast"), show_progress=False)
    assert "CUDA graph capture failed" not in caplog.text
    assert {o.engine for o in quick.values()} == {"fast-graph"}
    assert torch.cuda.current_device() == 0
    for key in plain:
        assert_same_training(plain[key], quick[key], rtol=2e-3, atol=2e-3)
