"""results/v3_training_results.json: one entry per pair, and the statuses a pair goes through.

    store = ResultsStore(layout.results_path)
    store.update("BTCUSDT_15m", status=SUCCESS, best_epoch=12)   # read-modify-write, atomic
    store.trained()                                             # pairs with a usable model

A pair's `status`: `downloaded` (step 2), `preprocessed` (step 3), then `success` (trained
in this run), `skipped` (trained earlier; `skip_reason` says why it was not trained again) or
`failed` (`failed_step` and a one-line `reason`). Keys starting with `_` (`_summary`) are not
pairs.

A damaged file (empty, truncated, not JSON) is set aside as
`v3_training_results.damaged-<time>.json` and rebuilt by the store's `rebuild` (the pipeline
passes v3_train_step.rebuild_results: every pair with a model file, from the file's own
metadata). A write that fails (StorageError: no permission, a full disk) keeps the results in
memory, so later reads in the run see them and the next write that succeeds saves them all.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Callable

from v3_common import (DamagedFileError, StorageError, atomic_write_json, fmt_num, json_default,
                       log, pair_key, plural, read_json, read_json_or_set_aside, set_aside,
                       text_table)

# a pair's status in the results
DOWNLOADED, PREPROCESSED, SUCCESS, SKIPPED, FAILED = (
    "downloaded", "preprocessed", "success", "skipped", "failed")
TRAINED = (SUCCESS, SKIPPED)  # a usable model


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResultsStore:
    """results/v3_training_results.json: one entry per pair (key 'BTCUSDT_15m') and '_summary'.
    An update that changes nothing leaves the file (and its updated_at) as it was."""

    def __init__(self, path: Path, *, rebuild: Callable[[], dict] | None = None):
        self.path = path
        self.rebuild = rebuild      # entries for a damaged file, {} when None
        self._unsaved: dict | None = None  # the results a failed write could not save

    def load(self) -> dict:
        if self._unsaved is not None:
            return copy.deepcopy(self._unsaved)
        try:
            results = read_json(self.path, default={}) or {}
        except DamagedFileError as e:
            return self._recover(str(e))
        if not isinstance(results, dict):
            return self._recover(f"{self.path} is damaged: it holds a JSON "
                                 f"{type(results).__name__}, not the pairs' entries.")
        return results

    def _recover(self, why: str) -> dict:
        """Set the damaged file aside, rebuild what can be rebuilt and write it."""
        kept = set_aside(self.path)
        results = self.rebuild() if self.rebuild else {}
        log.warning("%s Kept it as %s and rebuilt the entries of %s from their model files; "
                    "the other pairs get theirs back when their steps run again.", why,
                    kept.name, plural(len(results), 'pair'))
        self._write(results)
        return results

    def _write(self, results: dict) -> None:
        try:
            atomic_write_json(self.path, results)
        except StorageError:
            self._unsaved = results  # kept for the rest of the run; the next write retries
            raise
        self._unsaved = None

    @property
    def unsaved(self) -> bool:
        """A write failed and its results are held in memory only (until a write succeeds)."""
        return self._unsaved is not None

    def entry(self, key: str) -> dict:
        return self.load().get(key, {})

    def update(self, key: str, **fields) -> dict:
        """Change one entry. StorageError when the file cannot be written (the change is kept
        in memory and written with the next update that succeeds)."""
        results = self.load()
        before = results.get(key, {})
        entry = dict(before, **fields)
        for k in [k for k, v in entry.items() if v is None and k in (
                "reason", "failed_step", "skip_reason", "rescore_error")]:
            del entry[k]  # a field that no longer applies
        if same_json(entry, before) and self.path.exists() and self._unsaved is None:
            return before
        entry["updated_at"] = now_iso()
        results[key] = entry
        self._write(results)
        return entry

    def write_all(self, results: dict) -> None:
        """Replace the whole file (the report's `_summary`); StorageError as `update`."""
        self._write(results)

    def fail(self, symbol: str, interval: str, step: str, err: BaseException) -> None:
        """Record a failed pair. Never raises for the results file itself: a failure that
        cannot be written is logged (and kept in memory for the next write)."""
        reason = " ".join(str(err).split()) or type(err).__name__
        log.error("%s %s: %s failed: %s", symbol, interval, step, reason)
        try:
            self.update(pair_key(symbol, interval), symbol=symbol, interval=interval,
                        status=FAILED, failed_step=step, reason=reason)
        except StorageError as e:
            log.error("%s %s: this failure is not in %s yet: %s", symbol, interval,
                      self.path.name, " ".join(str(e).split()))

    def status(self, key: str) -> str | None:
        return self.entry(key).get("status")

    def trained(self) -> dict[str, dict]:
        return {k: v for k, v in self.load().items()
                if not k.startswith("_") and v.get("status") in TRAINED}


def read_renames(path: Path, results: Callable[[], dict]) -> dict:
    """data/symbol_renames.json (requested -> traded symbol); when it is missing or damaged
    (set aside, with a warning), what the `results()` entries' requested_symbol say."""
    renames = read_json_or_set_aside(
        path, None, fix="its renames are taken from the results' requested_symbol (step 2 "
                        "rewrites it)")
    if isinstance(renames, dict):
        return renames
    return {e["requested_symbol"]: e["symbol"] for e in results().values()
            if isinstance(e, dict) and e.get("symbol")
            and e.get("requested_symbol") not in (None, e["symbol"])}


def log_summary(results: dict, pairs: list[tuple[str, str]], results_path: Path) -> None:
    """Step 4's closing table (status, test MAPE next to persistence's, directional accuracy,
    the reason or skip reason), and one error line when every pair failed."""
    rows = []
    for symbol, interval in pairs:
        r = results.get(pair_key(symbol, interval), {})
        t, b = r.get("test") or {}, (r.get("baseline") or {}).get("persistence") or {}
        rows.append((pair_key(symbol, interval), r.get("status", "-"),
                     fmt_num(t.get("mape"), ".4f"), fmt_num(b.get("mape"), ".4f"),
                     fmt_num(t.get("directional_accuracy"), ".1f"),
                     t.get("n_direction", "-"), r.get("reason") or r.get("skip_reason") or ""))
    head = ("pair", "status", "MAPE %", "persist. %", "dir acc %", "n dir", "note")
    synthetic = any(results.get(pair_key(*p), {}).get("synthetic") for p in pairs)
    log.info("results (test split; persistence = 'next close = last close' on the same "
             "samples)%s:\n%s", " [SYNTHETIC DATA]" if synthetic else "",
             text_table(head, rows, max_width={6: 90}))
    failed = [r for p in pairs if (r := results.get(pair_key(*p), {})).get("status") == FAILED]
    if failed and len(failed) == len(pairs):
        log.error("all %s failed (%s): the reasons are above and in %s", plural(len(pairs), "pair"),
                  ", ".join(sorted({f"{r.get('failed_step', '?')}" for r in failed})),
                  results_path)


def same_json(new: dict, old: dict, *, clock=("updated_at", "written_at")) -> bool:
    """`new` would be written as `old` is stored, leaving out the time stamps."""
    strip = lambda d: {k: v for k, v in d.items() if k not in clock}  # noqa: E731
    dump = lambda d: json.dumps(strip(d), sort_keys=True, default=json_default)  # noqa: E731
    try:
        return dump(new) == dump(old)
    except TypeError:
        return False
