"""results/v3_training_results.json: one entry per pair, and the statuses a pair goes through.

    store = ResultsStore(layout.results_path)
    store.update("BTCUSDT_15m", status=SUCCESS, best_epoch=12)   # read-modify-write, atomic
    store.trained()                                             # pairs with a usable model

A pair's `status`: `downloaded` (step 2), `preprocessed` (step 3), then `success` (trained
in this run), `skipped` (trained earlier; `skip_reason` says why it was not trained again) or
`failed` (`failed_step` and a one-line `reason`). Keys starting with `_` (`_summary`) are not
pairs.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from v3_common import atomic_write_json, json_default, log, pair_key, read_json

# a pair's status in the results
DOWNLOADED, PREPROCESSED, SUCCESS, SKIPPED, FAILED = (
    "downloaded", "preprocessed", "success", "skipped", "failed")
TRAINED = (SUCCESS, SKIPPED)  # a usable model


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResultsStore:
    """results/v3_training_results.json: one entry per pair (key 'BTCUSDT_15m') and '_summary'.
    An update that changes nothing leaves the file (and its updated_at) as it was."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict:
        return read_json(self.path, default={}) or {}

    def entry(self, key: str) -> dict:
        return self.load().get(key, {})

    def update(self, key: str, **fields) -> dict:
        results = self.load()
        before = results.get(key, {})
        entry = dict(before, **fields)
        for k in [k for k, v in entry.items() if v is None and k in (
                "reason", "failed_step", "skip_reason", "rescore_error", "data_rejected",
                "walk_forward")]:
            del entry[k]  # a field that no longer applies
        if same_json(entry, before) and self.path.exists():
            return before
        entry["updated_at"] = now_iso()
        results[key] = entry
        atomic_write_json(self.path, results)
        return entry

    def fail(self, symbol: str, interval: str, step: str, err: BaseException) -> None:
        reason = " ".join(str(err).split()) or type(err).__name__
        log.error("%s %s: %s failed: %s", symbol, interval, step, reason)
        self.update(pair_key(symbol, interval), symbol=symbol, interval=interval, status=FAILED,
                    failed_step=step, reason=reason)

    def status(self, key: str) -> str | None:
        return self.entry(key).get("status")

    def trained(self) -> dict[str, dict]:
        return {k: v for k, v in self.load().items()
                if not k.startswith("_") and v.get("status") in TRAINED}


def same_json(new: dict, old: dict, *, clock=("updated_at", "written_at")) -> bool:
    """`new` would be written as `old` is stored, leaving out the time stamps."""
    strip = lambda d: {k: v for k, v in d.items() if k not in clock}  # noqa: E731
    dump = lambda d: json.dumps(strip(d), sort_keys=True, default=json_default)  # noqa: E731
    try:
        return dump(new) == dump(old)
    except TypeError:
        return False
