"""Print a run's interval results as a markdown table (the README's and the closing notes').

    python bench/interval_table.py --base-dir real_run
    python bench/interval_table.py --base-dir run_15m run_1h    # one table, one summary

One row per trained pair: the 80 % interval's coverage for the model and each interval
baseline, the model's pinball loss and its skill against rolling, ewma, garch and har with
the one-sided Diebold-Mariano p-value (Newey-West variance), the width of the 80 % interval,
the best forecaster and the 90 % model confidence set; then the across-pair
summary (results `_summary.intervals`; with several folders it is recomputed over all their
pairs, so the Holm correction spans them all). Reads results/v3_training_results.json only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from v3_common import fmt_num  # noqa: E402
from v3_layout import RunLayout  # noqa: E402
from v3_report_intervals import interval_summary  # noqa: E402

BASELINES = ("rolling", "ewma", "garch", "har")
SHORT = {"model": "LSTM", "rolling": "rolling", "ewma": "ewma", "garch": "garch", "har": "har"}


def pct(v):
    return None if v is None else 100 * v


def rows(results: dict) -> list[str]:
    head = ["pair", "test candles", "80 % coverage % LSTM / rolling / ewma / garch / har",
            "80 % width %", "pinball LSTM / garch / har", "skill vs rolling % (p)",
            "skill vs ewma % (p)", "skill vs garch % (p)", "skill vs har % (p)", "best",
            "90 % MCS"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, e in sorted(results.items()):
        if key.startswith("_") or e.get("status") not in ("success", "skipped"):
            continue
        m = (e.get("test") or {}).get("interval") or {}
        b = {n: ((e.get("baseline") or {}).get(n) or {}).get("interval") or {} for n in BASELINES}
        cov = " / ".join(fmt_num(pct((x.get("coverage") or {}).get("80")), ".1f")
                         for x in [m, *b.values()])
        skill = [f"{fmt_num(pct((m.get('skill') or {}).get(n)), '+.1f')} "
                 f"({fmt_num((m.get('dm_p') or {}).get(n), '.2g')})" for n in BASELINES]
        pins = " / ".join(fmt_num(x.get("pinball"), ".4f") for x in (m, b["garch"], b["har"]))
        scored = {"model": m, **b}
        best = min((x["pinball"], w) for w, x in scored.items()
                   if x.get("pinball") is not None)[1] if any(
                       x.get("pinball") is not None for x in scored.values()) else None
        mcs = ", ".join(SHORT[w] for w in m.get("mcs_90") or []) or "-"
        out.append("| " + " | ".join([key, fmt_num(m.get("n"), "d"), cov,
                                      fmt_num(m.get("width_80_pct"), ".2f"), pins,
                                      *skill, SHORT.get(best, "-"), mcs]) + " |")
    return out


def summary(results: dict) -> list[str]:
    entries = {k: e for k, e in results.items()
               if not k.startswith("_") and e.get("status") in ("success", "skipped")}
    s = interval_summary(results, entries) or {}
    if not s:
        return ["(no interval summary in these results)"]
    rej = s.get("coverage_rejected_80") or {}
    med = s.get("median_coverage") or {}
    lines = [f"pairs with a model interval: {s.get('n_pairs')}"]
    lines += [f"median 80 % coverage {who}: {fmt_num(pct((med.get(who) or {}).get('80')), '.1f')} %"
              f" (rejected on {(rej.get(who) or {}).get('count')} of {(rej.get(who) or {}).get('of')})"
              for who in ("model", *BASELINES)]
    lines += [f"median skill vs {b}: {fmt_num(pct((s.get('median_skill') or {}).get(b)), '+.2f')} %;"
              f" significantly better (Holm) on {(s.get(f'beat_{b}') or {}).get('count')} pairs"
              for b in BASELINES]
    best, sig = s.get("best") or {}, s.get("best_significant") or {}
    lines.append("best forecaster (lowest pinball): " + ", ".join(
        f"{SHORT[w]} {best[w]} ({sig.get(w, 0)} significantly)" for w in best if best[w]))
    mcs = s.get("mcs_90") or {}
    if mcs.get("n_pairs"):
        lines.append(f"in the 90 % model confidence set (of {mcs['n_pairs']} pairs): " + ", ".join(
            f"{SHORT[w]} {n}" for w, n in (mcs.get("in_set") or {}).items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-dir", required=True, nargs="+",
                    help="the run's folder (several: their pairs in one table and summary)")
    args = ap.parse_args(argv)
    runs = [json.loads(RunLayout(Path(d)).results_path.read_text()) for d in args.base_dir]
    results = runs[0] if len(runs) == 1 else {  # pairs only: the summary is recomputed
        k: e for r in runs for k, e in r.items() if not k.startswith("_")}
    print("\n".join(rows(results)))
    print()
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
