"""What a run notes about a pair beyond its status, and the log's line on the intervals.

    entry["data_rejected"] = refusal("BTCUSDT", "1h", "download", err)   # logs it
    pair_note(entry)          # the results table's note: a refusal, a failure or a skip reason
    interval_line(results["_summary"].get("intervals"))   # None without interval blocks

A pair that has a model and whose newer candles a step refuses (a CSV with a NaN, a download
that failed) keeps that model: its status stays `success` / `skipped`, and `data_rejected`
{step, reason} says what happened, in the results table (v3_results.log_summary) and the
report (v3_report). Pure functions of the results; nothing here writes.
"""
from __future__ import annotations

import re

from v3_common import fmt_num, log, plural

CSV_PATH = re.compile(r"/[^/]+\.csv(\.gz)?:?$")  # a candle file's path, shown by its name


def refusal(symbol: str, interval: str, step: str, err: BaseException) -> dict:
    """The `data_rejected` block of a trained pair whose new candles failed `step`; logs it
    as the error it is, saying that the model from the earlier candles is kept."""
    reason = " ".join(str(err).split()) or type(err).__name__
    log.error("%s %s: %s failed: %s. Kept the model trained on the earlier candles.",
              symbol, interval, step, reason.rstrip("."))
    return {"step": step, "reason": reason}


def still_refused(entry: dict, step: str) -> dict | None:
    """The pair's `data_rejected` once `step` has accepted its candles: a refusal by another
    step (a download that failed, while step 3 read the earlier file) stays."""
    dr = entry.get("data_rejected")
    return None if not dr or dr.get("step") == step else dr


def data_rejected_note(entry: dict) -> str:
    """'earlier model kept; new candles failed download: BTCUSDT_1h.csv: NaN ...' for a pair
    whose newer candles a step refused (`data_rejected`; the file named without its folder,
    which the log and the results give whole), else ''."""
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


def interval_line(s: dict | None) -> str | None:
    """'intervals (test split, N pairs): the 80 % range held on 80.3 % of the candles ...'
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
