"""The pipeline under injected faults (issue 21): damaged files, a results write that never
happened, disk and permission errors, two runs on one folder.

Each test damages a copy of one tiny trained run (or a fresh tiny run), then checks the named
error, the message a user sees, the exit code, that the other pairs went on and that the
re-run after the repair has lost nothing. The tests run as root, where chmod does not stop a
write, so disk and permission errors are injected by making os.replace (the last call of
every V3 write, v3_common.atomic_write_bytes) raise the OS's error for the chosen files.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import tiny_config
from v3_checkpoint import load_checkpoint
from v3_colab_training import V3CoLabPipeline, main
from v3_common import CheckpointError, RunLockedError, StorageError, UploadError
from v3_data_processor import PreparedData
from v3_hub import upload_to_hub
from v3_layout import RunLayout
from v3_market_data import synthetic_klines, write_klines
from v3_run_lock import RunLock

REPO = Path(__file__).resolve().parents[1]
PAIRS = ["BTCUSDT_15m", "BTCUSDT_1h"]
TRAINING_FIELDS = ("model_path", "history", "best_epoch", "best_val_loss", "total_epochs",
                   "synthetic", "test", "content_sha256")
CLI = ["--coins", "BTCUSDT", "--timeframes", "15m", "1h", "--source", "synthetic",
       "--candles", "700", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (synthetic, 1 coin x 2 timeframes, 2 epochs); tests damage copies."""
    base = tmp_path_factory.mktemp("faults") / "run"
    pipeline(base).run_full_pipeline(epochs=2, batch_size=64)
    return base


@pytest.fixture
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def pipeline(base: Path, **over) -> V3CoLabPipeline:
    return V3CoLabPipeline(base, config=tiny_config(**over), coins=["BTCUSDT"],
                           timeframes=["15m", "1h"])


def fail_writes(monkeypatch, code: int, where) -> list[Path]:
    """os.replace raises OSError(code) for every destination `where(path)` accepts (what a
    read-only folder, a full disk or a read-only file system does to V3's atomic writes);
    returns the paths refused."""
    real, refused = os.replace, []

    def replace(src, dst):
        if where(Path(dst)):
            refused.append(Path(dst))
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return refused


def results_of(base: Path) -> dict:
    return json.loads((base / "results" / "v3_training_results.json").read_text())


def model_bytes(base: Path) -> dict[str, bytes]:
    return {k: (base / "all_models" / f"v3_model_{k}.pt").read_bytes() for k in PAIRS}


# -- item 2: damaged files are named and rebuilt -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_features_file_is_rebuilt_by_step_3(run, caplog, damage):
    npz = run / "processed" / "BTCUSDT_1h.npz"
    good = PreparedData.load(npz)
    raw = npz.read_bytes()
    npz.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"\x00garbage" * 500)
    r = pipeline(run).step_4_train_models(epochs=2)
    assert "BTCUSDT_1h: " in caplog.text and "BTCUSDT_1h.npz is damaged" in caplog.text
    assert "step 3 (preprocess) writes it again" in caplog.text
    assert [r[k]["status"] for k in PAIRS] == ["skipped", "skipped"]  # rebuilt, model kept
    assert PreparedData.load(npz).last_open_time == good.last_open_time
    # step 3 alone: it used to stop with zipfile.BadZipFile from _same_npz
    npz.write_bytes(b"PK\x03\x04 not a zip")
    assert set(pipeline(run).step_3_preprocess_features()) == set(PAIRS)
    np.testing.assert_array_equal(PreparedData.load(npz).features, good.features)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_results_file_is_kept_aside_and_rebuilt_from_the_models(run, caplog, damage):
    path = run / "results" / "v3_training_results.json"
    before = results_of(run)
    raw = path.read_bytes()
    bad = {"truncated": raw[: len(raw) // 3], "empty": b"", "garbage": b"\xff\xfe\x00\x81oops"}[damage]
    path.write_bytes(bad)
    r = pipeline(run).step_4_train_models(epochs=2)
    kept = list((run / "results").glob("v3_training_results.damaged-*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad  # the damaged file, for a person
    assert "v3_training_results.json is damaged: not readable JSON" in caplog.text
    assert f"Kept it as {kept[0].name} and rebuilt the entries of 2 pairs" in caplog.text
    for key in PAIRS:
        assert r[key]["status"] == "skipped"
        for field in TRAINING_FIELDS:
            assert r[key][field] == before[key].get(field, r[key][field]), field
        assert r[key]["history"] == before[key]["history"] and r[key]["synthetic"] is True
        assert r[key]["data"]["rows"] == 700
    assert r["_summary"]["synthetic"] is True
    assert main(["--base-dir", str(run), "--report-only", *CLI]) == 0


@pytest.mark.slow
def test_a_damaged_config_and_renames_file_are_kept_aside_and_written_again(run, caplog):
    config, renames = run / "results" / "config.json", run / "data" / "symbol_renames.json"
    config.write_text('{"candles": 70')
    renames.write_bytes(b"\x89PNG garbage")
    p = pipeline(run)
    assert p.pairs() == [("BTCUSDT", "15m"), ("BTCUSDT", "1h")]
    assert "symbol_renames.json is damaged" in caplog.text
    assert "renames are taken from the results' requested_symbol" in caplog.text
    p.step_2_download_binance_data()
    p.step_4_train_models(epochs=2)
    assert "config.json is damaged" in caplog.text and "writing it afresh" in caplog.text
    assert json.loads(config.read_text())["candles"] == 700
    assert json.loads(renames.read_text()) == {}
    assert len(list((run / "results").glob("config.damaged-*.json"))) == 1
    assert len(list((run / "data").glob("symbol_renames.damaged-*.json"))) == 1


# -- item 3: damage that used to be accepted silently ---------------------------------------


def garble_a_weight(path: Path, value: float) -> str:
    """Overwrite the first value of the model's largest weight inside the file's bytes, as a
    bad disk or a partial copy would: torch still loads the file."""
    ckpt = torch.load(path, weights_only=True)
    name, t = max(ckpt["model_state"].items(), key=lambda kv: kv[1].numel())
    raw, old = path.read_bytes(), t.numpy().tobytes()
    i = raw.find(old)
    assert i > 0 and raw.find(old, i + 1) == -1
    path.write_bytes(raw[:i] + np.float32(value).tobytes() + raw[i + 4:])
    assert torch.load(path, weights_only=True)["model_state"][name].view(-1)[0] != t.view(-1)[0]
    return name


@pytest.mark.slow
def test_garbage_inside_a_model_file_is_caught_by_its_hash_and_the_pair_retrained(run, caplog):
    path = run / "all_models" / "v3_model_BTCUSDT_1h.pt"
    garble_a_weight(path, float("nan"))
    with pytest.raises(CheckpointError, match="tensors do not match the sha256 stored in it"):
        load_checkpoint(path)
    # step 5 refuses it before asking for a token or the network
    with pytest.raises(UploadError, match="v3_model_BTCUSDT_1h.pt.*do not match the sha256"):
        upload_to_hub(run, token="hf_unused", endpoint="http://127.0.0.1:9", prompt=False)
    # --report-only used to crash: "ValueError: quantile forecasts hold ... NaN/inf"
    assert main(["--base-dir", str(run), "--report-only", *CLI]) == 1
    assert "could not re-score 1 pair (BTCUSDT_1h)" in caplog.text
    good = (run / "all_models" / "v3_model_BTCUSDT_15m.pt").read_bytes()
    r = pipeline(run).step_4_train_models(epochs=2)
    assert r["BTCUSDT_1h"]["status"] == "success"  # not "skipped, already trained"
    assert r["BTCUSDT_15m"]["status"] == "skipped"
    assert "its model file cannot be read" in caplog.text
    load_checkpoint(path)  # whole again
    assert (run / "all_models" / "v3_model_BTCUSDT_15m.pt").read_bytes() == good


def test_a_model_file_without_a_hash_is_still_checked_for_nan(run):
    path = run / "all_models" / "v3_model_BTCUSDT_1h.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["content_sha256"]   # as a file of before the hash
    name = next(k for k, v in ckpt["model_state"].items() if v.is_floating_point())
    ckpt["model_state"][name].view(-1)[:3] = float("inf")
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"model_state {name} holds 3 NaN/inf values"):
        load_checkpoint(path)


@pytest.mark.slow
def test_a_truncated_predictions_csv_is_rewritten_from_the_model(run, caplog):
    path = run / "results" / "predictions" / "BTCUSDT_15m.csv"
    whole = pd.read_csv(path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:20])
    r = pipeline(run).step_4_train_models(epochs=2)
    n = len(whole)
    assert (f"BTCUSDT_15m: BTCUSDT_15m.csv holds {len(lines) // 2 - 1} whole rows of the {n} "
            f"test samples (truncated?); rewritten from its model") in caplog.text
    assert r["BTCUSDT_15m"]["status"] == "skipped"
    pd.testing.assert_frame_equal(pd.read_csv(path), whole)


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["at a line", "mid-line"])
def test_a_shrunk_candle_file_keeps_the_model_when_no_new_candle_comes(tmp_path, caplog, cut):
    src = tmp_path / "csv"
    src.mkdir()
    write_klines(synthetic_klines("BTCUSDT", "1h", 1000), src / "BTCUSDT_1h.csv")
    cfg = tiny_config(source="csv", data_dir=str(src), candles=1000)
    p = V3CoLabPipeline(tmp_path / "out", config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    p.run_full_pipeline(epochs=2)
    model = p.model_path("BTCUSDT", "1h").read_bytes()
    data = p.data_dir / "BTCUSDT_1h.csv"
    raw = data.read_bytes()
    keep = raw[: raw.index(b"\n", len(raw) * 8 // 10) + 1]  # the first ~800 candles
    data.write_bytes(keep if cut == "at a line" else keep[:-30])
    (src / "BTCUSDT_1h.csv").unlink()  # and step 2 cannot fetch them again
    again = V3CoLabPipeline(tmp_path / "out", config=cfg, coins=["BTCUSDT"], timeframes=["1h"])
    r = again.run_full_pipeline(epochs=2)["BTCUSDT_1h"]
    assert r["status"] == "skipped"
    assert p.model_path("BTCUSDT", "1h").read_bytes() == model  # not retrained on ~800
    if cut == "at a line":
        assert "data/BTCUSDT_1h.csv shrank" in caplog.text and "Keeping the model" in caplog.text
        assert "train on what it holds on purpose with --retrain" in caplog.text
        r = again.run_full_pipeline(epochs=2, retrain=True)["BTCUSDT_1h"]  # on purpose
        assert r["status"] == "success" and p.model_path("BTCUSDT", "1h").read_bytes() != model


# -- item 4: the model and its entry are committed together --------------------------------


@pytest.mark.slow
def test_a_failed_results_write_after_the_model_is_saved_is_rebuilt_on_the_rerun(
        tmp_path, monkeypatch, caplog):
    base = tmp_path / "run"
    p = pipeline(base)
    p.step_2_download_binance_data()
    p.step_3_preprocess_features()
    # results/ unwritable from the first model file on (predictions/ below it stays writable,
    # as with chmod on the folder)
    armed = []
    real = os.replace

    def replace(src, dst):
        dst = Path(dst)
        if dst.parent.name == "all_models":
            armed.append(dst)
        if armed and dst.parent == base / "results":
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    r = p.step_4_train_models(epochs=2)  # no traceback: named, every pair went on
    assert f"cannot write {base / 'results' / 'v3_training_results.json'}: Permission denied " \
           f"(EACCES). Make {base / 'results'} writable" in caplog.text
    assert [r[k]["status"] for k in PAIRS] == ["failed", "failed"]
    assert all(p.model_path("BTCUSDT", i).exists() for i in ("15m", "1h"))
    assert "the report was not written" in caplog.text
    monkeypatch.setattr(os, "replace", real)   # the repair; a new process reads the disk
    on_disk = results_of(base)
    assert all("model_path" not in on_disk.get(k, {}) for k in PAIRS)
    r = pipeline(base).step_4_train_models(epochs=2)
    assert "its results entry does not match its model file" in caplog.text
    for key in PAIRS:
        assert r[key]["status"] == "skipped" and "reason" not in r[key]
        for field in TRAINING_FIELDS:
            assert r[key].get(field) is not None, (key, field)
        assert r[key]["synthetic"] is True and r[key]["total_epochs"] == 2
    assert r["_summary"]["synthetic"] is True and "SYNTHETIC" in (
        base / "results" / "report.md").read_text()


@pytest.mark.slow
def test_an_entry_lost_to_a_kill_between_model_and_results_is_rebuilt(run, caplog):
    before = results_of(run)
    left = dict(before)   # what a SIGKILL after the model save leaves: step 3's entry only
    left["BTCUSDT_1h"] = {k: before["BTCUSDT_1h"][k] for k in ("symbol", "interval", "data",
                                                               "features")}
    left["BTCUSDT_1h"]["status"] = "preprocessed"
    (run / "results" / "v3_training_results.json").write_text(json.dumps(left))
    r = pipeline(run).step_4_train_models(epochs=2)["BTCUSDT_1h"]
    assert r["status"] == "skipped"
    for field in TRAINING_FIELDS:
        assert r[field] == before["BTCUSDT_1h"][field], field
    assert "BTCUSDT_1h: its results entry does not match its model file" in caplog.text
    assert "BTCUSDT_15m: its results entry" not in caplog.text


# -- item 5: disk and permission errors fail the pair, named --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("code,text", [
    (errno.EACCES, "Permission denied (EACCES). Make"),
    (errno.ENOSPC, "No space left on device (ENOSPC). The disk is full:"),
    (errno.EROFS, "Read-only file system (EROFS). The file system is read-only"),
])
def test_a_model_file_that_cannot_be_written_fails_its_pair_and_nothing_is_lost(
        tmp_path, monkeypatch, caplog, code, text):
    base = tmp_path / "run"
    p = pipeline(base)
    p.step_2_download_binance_data()
    p.step_3_preprocess_features()
    refused = fail_writes(monkeypatch, code, lambda d: d.parent.name == "all_models")
    r = p.step_4_train_models(epochs=2)
    assert len(refused) == 2   # both pairs tried: one failing did not stop the other
    for key in PAIRS:
        assert r[key]["status"] == "failed" and r[key]["failed_step"] == "train"
        assert f"v3_model_{key}.pt: {text}" in r[key]["reason"]
    if code == errno.ENOSPC:
        assert "and this file alone needs" in r["BTCUSDT_15m"]["reason"]
        assert "This run needs about" in r["BTCUSDT_15m"]["reason"]
        for key in PAIRS:   # the first failed pair is not saved either
            assert "more for the 2 pairs not saved yet" in r[key]["reason"]
    monkeypatch.undo()   # the repair
    r = pipeline(base).step_4_train_models(epochs=2)
    assert "resuming from epoch 2" in caplog.text   # the trained epochs were kept
    assert [r[k]["status"] for k in PAIRS] == ["success", "success"]
    assert [r[k]["total_epochs"] for k in PAIRS] == [2, 2]


@pytest.mark.slow
def test_a_full_disk_from_the_command_line_exits_1_with_the_space_needed(run, monkeypatch, caplog):
    fail_writes(monkeypatch, errno.ENOSPC, lambda d: d.parent.name == "results")
    assert main(["--base-dir", str(run), "--report-only", *CLI]) == 1
    assert "StorageError: cannot write" in caplog.text and "The disk is full:" in caplog.text
    assert "Traceback" not in caplog.text
    monkeypatch.undo()
    assert main(["--base-dir", str(run), "--report-only", *CLI]) == 0


def test_a_folder_that_cannot_be_created_is_a_storage_error(tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(StorageError, match=r"Permission denied \(EACCES\)"):
        pipeline(tmp_path / "new").step_1_setup_environment()


# -- item 6: one run per folder --------------------------------------------------------------


def test_a_second_run_on_a_folder_in_use_names_the_holder_and_exits_2(run, caplog):
    with RunLock(RunLayout(run)):   # another run (its own lock file handle) holds the folder
        assert main(["--base-dir", str(run), "--report-only", *CLI]) == 2
        with pytest.raises(RunLockedError) as e:
            pipeline(run).step_4_train_models(epochs=2)
    msg = str(e.value)
    assert f"{run} is in use by another V3 run (pid {os.getpid()} on host " \
           f"{socket.gethostname()} since " in msg
    assert "pass --wait-lock (wait_for_lock=True) to wait for it" in msg
    assert "RunLockedError" in caplog.text and f"pid {os.getpid()}" in caplog.text
    assert not RunLayout(run).lock_holder_path.exists()   # released, and says so
    assert main(["--base-dir", str(run), "--report-only", *CLI]) == 0


@pytest.mark.slow
def test_a_run_in_another_process_holds_the_folder_until_it_ends(run, caplog):
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from v3_run_lock import RunLock; "
            "from v3_layout import RunLayout; lock = RunLock(RunLayout(sys.argv[1])); "
            "lock.__enter__(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run), str(REPO)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--base-dir", str(run), "--report-only", *CLI]) == 2
        assert f"(pid {holder.pid} on host " in caplog.text
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(["--base-dir", str(run), "--report-only", *CLI]) == 0


def test_wait_lock_waits_for_the_holder_instead_of_exiting(run, caplog):
    held, done = threading.Event(), threading.Event()

    def other_run():   # holds the folder until this run has said that it waits
        with RunLock(RunLayout(run)):
            held.set()
            done.wait(timeout=60)

    class ReleaseWhenWaiting(logging.Handler):
        def emit(self, record):
            if "waiting for it to finish" in record.getMessage():
                done.set()

    handler = ReleaseWhenWaiting()
    logging.getLogger("v3").addHandler(handler)
    holder = threading.Thread(target=other_run)
    holder.start()
    held.wait(timeout=60)
    try:
        assert main(["--base-dir", str(run), "--report-only", "--wait-lock", *CLI]) == 0
    finally:
        done.set()
        holder.join(timeout=60)
        logging.getLogger("v3").removeHandler(handler)
    assert "is in use by another V3 run" in caplog.text and "waiting for it to finish" in caplog.text


def test_the_lock_is_reentrant_and_released_after_each_step(run):
    p = pipeline(run)
    with p.run_lock:
        p.write_report()   # a step inside a held lock: the same run
        assert p.run_lock.held
    assert not p.run_lock.held
    with RunLock(RunLayout(run)):
        pass   # free again for another run
