"""What a run tells its user at the end of step 4, from the results JSON: the results table
(one row per pair, with a note saying why a pair was skipped, failed, or kept its model when
its new candles were refused) and one line on the intervals.

    from v3_run_summary import results_table, interval_line, pair_note
    print(results_table(results, [("BTCUSDT", "15m")]))
    interval_line(results["_summary"].get("intervals"))   # None without interval blocks

Pure functions of the results: the pipeline logs them, the report reuses `data_rejected_note`.
"""
from __future__ import annotations

import re

from v3_common import fmt_num, pair_key, plural, text_table

RESULTS_HEAD = ("pair", "status", "MAPE %", "persist. %", "dir acc %", "n dir", "note")
NOTE_WIDTH = 90  # the table's note column is shortened to this, at a word boundary
CSV_PATH = re.compile(r"/[^/]+\.csv(\.gz)?:?$")  # a candle file's path, shown by its name


def data_rejected_note(entry: dict) -> str:
    """'earlier model kept; new candles failed download: BTCUSDT_1h.csv: NaN ...' for a pair
    with a model whose newer candles a step refused (`data_rejected`; folders left out of the
    reason, which the log and the results give whole), else ''."""
    dr = entry.get("data_rejected") or {}
    if not dr:
        return ""
    reason = " ".join(w.rsplit("/", 1)[-1] if CSV_PATH.search(w) and "://" not in w else w
                      for w in str(dr.get("reason", "?")).split())
    return f"earlier model kept; new candles failed {dr.get('step', '?')}: {reason}"


def pair_note(entry: dict) -> str:
    """The note column: refused new candles first, then the failure or the skip reason."""
    return (data_rejected_note(entry) or entry.get("reason") or entry.get("skip_reason")
            or "")


def results_table(results: dict, pairs: list[tuple[str, str]]) -> str:
    """The test-split table of step 4, one row per pair, the persistence baseline beside it."""
    rows = []
    for symbol, interval in pairs:
        r = results.get(pair_key(symbol, interval), {})
        t, b = r.get("test") or {}, (r.get("baseline") or {}).get("persistence") or {}
        rows.append((pair_key(symbol, interval), r.get("status", "-"),
                     fmt_num(t.get("mape"), ".4f"), fmt_num(b.get("mape"), ".4f"),
                     fmt_num(t.get("directional_accuracy"), ".1f"),
                     t.get("n_direction", "-"), pair_note(r)))
    return text_table(RESULTS_HEAD, rows, max_width={6: NOTE_WIDTH})


def interval_line(s: dict | None) -> str | None:
    """'intervals (test split, N pairs): the 80 % range held on 80.3 % of candles (median; ...'
    from `_summary.intervals` (v3_interval_scores.summarize_intervals); None without it."""
    if not s or not s.get("n_pairs"):
        return None
    n = s["n_pairs"]
    cov = ((s.get("median_coverage") or {}).get("model") or {}).get("80")
    rejected = (((s.get("coverage_rejected") or {}).get("80") or {}).get("model") or {})
    skill = s.get("median_skill") or {}
    alpha = (s.get("significance") or {}).get("alpha", 0.05)
    parts = []
    for base, label in (("garch", "GARCH"), ("har", "HAR")):
        if skill.get(base) is not None:
            beat = (s.get(f"beat_{base}") or {}).get("count", 0)
            parts.append(f"{label} {fmt_num(100 * skill[base], '+.2f')} % (significantly "
                         f"better on {beat} of {n})")
    cov_text = "-" if cov is None else f"{fmt_num(100 * cov, '.1f')} %"
    return (f"intervals (test split, {plural(n, 'pair')}): the 80 % range held on {cov_text} of "
            f"the candles (median; binomial test rejects {rejected.get('count', 0)} of {n}); "
            f"median pinball skill vs " + (", vs ".join(parts) if parts else "-")
            + f" (Holm, p < {alpha:g}); details in the report")
