"""Step 4's evaluation loops over pairs: re-scoring the saved models, and the walk-forward,
each pair's outcome recorded in the results store (v3_results).

    done = rescore_pairs(store, layout, cfg, keys=None)          # every trained pair
    done = walk_forward_pairs(store, layout, cfg, pairs, retrain=False)

One pair failing costs that pair only: a model that cannot be re-scored keeps its numbers and
gets `rescore_error`; a walk-forward that fails is recorded as `walk_forward.status: failed`
with its reason, and dropped by the next valid run that asks for none (`superseded`).
The pipeline (v3_colab_training) calls these with the run's thread count set.
"""
from __future__ import annotations

from v3_common import V3Error, log, pair_key, plural, shorten
from v3_evaluation import rescore_pair, walk_forward_pair
from v3_layout import RunLayout
from v3_market_data import latest_candles, read_klines
from v3_results import FAILED, ResultsStore


def rescore_pairs(store: ResultsStore, layout: RunLayout, c, keys: list[str] | None) -> dict:
    """Score trained pairs (all, or `keys`) again from their saved model and features."""
    done = {}
    for key, entry in store.trained().items():
        if keys is not None and key not in keys:
            continue
        try:
            fields = rescore_pair(layout, entry, fee_per_side=c.fee_per_side,
                                  patience=c.train.patience)
        except V3Error as e:  # one unreadable file costs that pair's re-scoring only
            reason = shorten(str(e), 200)
            log.warning("%s: not re-scored: %s: %s (re-train it: --retrain)", key,
                        type(e).__name__, reason)
            store.update(key, rescore_error=reason)
            continue
        done[key] = store.update(key, rescore_error=None, **fields)
    log.info("re-scored %s from their saved models", plural(len(done), "pair"))
    return done


def walk_forward_pairs(store: ResultsStore, layout: RunLayout, c,
                       pairs: list[tuple[str, str]], *, retrain: bool) -> dict:
    """`c.walk_forward` folds for every pair (v3_evaluation.walk_forward_pair)."""
    log.info("walk-forward: %d folds x %s (expanding window)", c.walk_forward,
             plural(len(pairs), "pair"))
    done = {}
    for symbol, interval in pairs:
        key = pair_key(symbol, interval)
        src = layout.data_path(symbol, interval)
        if not src.exists():
            log.warning("%s: walk-forward skipped, no data file %s (run step 2)", key, src.name)
            continue
        running = lambda folds, key=key: store.update(  # noqa: E731
            key, walk_forward={"k": c.walk_forward, "status": "running", "folds": folds})
        try:
            wf = walk_forward_pair(latest_candles(read_klines(src), c.candles), symbol,
                                   interval, c, layout=layout, retrain=retrain,
                                   prior=store.entry(key).get("walk_forward") or {},
                                   on_fold=running)
        except V3Error as e:
            reason = " ".join(str(e).split())
            log.error("%s %s: walk-forward failed: %s", symbol, interval, reason)
            store.update(key, walk_forward={"k": c.walk_forward, "status": FAILED,
                                            "reason": reason})
            continue
        done[key] = store.update(key, walk_forward=wf)["walk_forward"]
    return done


def drop_superseded_walk_forward(store: ResultsStore, pairs: list[tuple[str, str]]) -> None:
    """A walk-forward that failed in an earlier run is superseded by this valid run, which
    asked for none: it leaves the results (and so the report)."""
    for key in (pair_key(s, i) for s, i in pairs):
        wf = store.entry(key).get("walk_forward") or {}
        if wf.get("status") == FAILED:
            log.info("%s: dropped an earlier run's failed walk-forward (%s folds: %s)", key,
                     wf.get("k", "?"), shorten(wf.get("reason", "?"), 120))
            store.update(key, walk_forward=None)
