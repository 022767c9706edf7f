"""ResultsStore (v3_results): a damaged file set aside and rebuilt, a failed write kept in
memory until one succeeds, and a failure record that never stops the run."""
from __future__ import annotations

import errno
import json
import os

import pytest

from v3_common import StorageError
from v3_results import FAILED, ResultsStore, read_renames


def test_a_damaged_results_file_is_set_aside_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "v3_training_results.json"
    path.write_text('{"BTCUSDT_1h": {"status": "succ')
    store = ResultsStore(path, rebuild=lambda: {"BTCUSDT_1h": {"status": "skipped"}})
    assert store.load() == {"BTCUSDT_1h": {"status": "skipped"}}
    kept = list(tmp_path.glob("v3_training_results.damaged-*.json"))
    assert len(kept) == 1 and kept[0].read_text().startswith('{"BTCUSDT_1h"')
    assert json.loads(path.read_text()) == {"BTCUSDT_1h": {"status": "skipped"}}
    assert "rebuilt the entries of 1 pair from their model files" in caplog.text
    path.write_text("[1, 2]")   # JSON, but not the pairs' entries
    assert ResultsStore(path).load() == {} and "holds a JSON list" in caplog.text


def test_a_failed_write_is_kept_in_memory_and_saved_by_the_next_write(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    store = ResultsStore(path)
    store.update("A_1h", status="success")
    real = os.replace

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match="Permission denied"):
        store.update("B_1h", status="success")
    store.fail("C", "1h", "train", RuntimeError("boom"))   # logged, not raised
    assert store.unsaved and set(store.load()) == {"A_1h", "B_1h", "C_1h"}
    assert store.status("C_1h") == FAILED
    assert set(json.loads(path.read_text())) == {"A_1h"}
    monkeypatch.setattr(os, "replace", real)
    store.update("A_1h", status="success")   # unchanged, but the held results are written
    assert not store.unsaved and set(json.loads(path.read_text())) == {"A_1h", "B_1h", "C_1h"}


def test_renames_come_from_the_results_when_the_file_is_damaged(tmp_path, caplog):
    path = tmp_path / "symbol_renames.json"
    path.write_text("{oops")
    results = {"POLUSDT_1h": {"symbol": "POLUSDT", "requested_symbol": "MATICUSDT"},
               "BTCUSDT_1h": {"symbol": "BTCUSDT", "requested_symbol": "BTCUSDT"},
               "_summary": {"n": 2}}
    assert read_renames(path, lambda: results) == {"MATICUSDT": "POLUSDT"}
    assert "symbol_renames.json is damaged" in caplog.text
    assert len(list(tmp_path.glob("symbol_renames.damaged-*.json"))) == 1
