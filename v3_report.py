"""Writes a run's report, results/report.md and report.html with their plots, from the results JSON.

    from v3_report import write_report
    write_report(base_dir, results)   # results = the results JSON, with '_summary' filled

The report opens with a plain answer to "do the models beat persistence?" and, where the
results have interval blocks, to "are the intervals calibrated, and do they beat GARCH?"
(v3_report_intervals), then the pairs that failed (with their reasons), the tables (model next
to persistence, drift and linear on the same test samples; the intervals next to the rolling,
EWMA and GARCH baselines; the backtest; walk-forward folds) and the plots. Every number in it
comes from the results JSON; the plots (v3_report_plots) read the per-sample predictions in
results/predictions/. report.html is self-contained: its images are embedded as base64.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import re
from pathlib import Path

from v3_common import atomic_write_bytes, fmt_num, plural
from v3_metrics import BASELINES
from v3_report_intervals import WF_INTERVAL_HEAD
from v3_report_intervals import fmt_cell as _f
from v3_report_intervals import fmt_p as _p
from v3_report_intervals import (interval_plot_blocks, interval_summary,
                                 interval_summary_blocks, interval_table_blocks, model_block,
                                 wf_interval_cells)
from v3_report_plots import draw_plots
from v3_report_plots import entry_metrics as _metrics
from v3_report_plots import report_entries as _entries

MODELS = ("model",) + BASELINES


# ---------------------------------------------------------------------------------------
# The document: a list of blocks, rendered to Markdown and to HTML


def _ci(m: dict, key: str, spec: str = ".1f") -> str:
    lo, hi = m.get(f"{key}_ci95_low"), m.get(f"{key}_ci95_high")
    return "-" if lo is None or hi is None else f"[{fmt_num(lo, spec)}, {fmt_num(hi, spec)}]"


def _iso_ms(ms) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def summary_sentences(summary: dict, *, n_failed: int = 0) -> list[str]:
    """The plain-language verdict at the top of the report. `n_failed`: pairs that failed
    before they had test results (named in the report's 'Pairs that failed')."""
    n = summary["n_pairs"]
    if n == 0:
        if n_failed:
            return [f"No pair has test results: {'the' if n_failed == 1 else 'all'} "
                    f"{plural(n_failed, 'pair')} failed; the reasons are under \"Pairs that "
                    f"failed\" in results/report.md and in results/v3_training_results.json."]
        return ["No pair has test results yet: train first (step 4)."]
    ms = summary["median_skill"]
    out = [_verdict_sentence(summary),
           f"Median skill (1 - MAE / MAE of persistence; 0 = as good as doing nothing): LSTM "
           f"{_f(ms['model'], '+.4f')}, linear ridge {_f(ms['linear'], '+.4f')}, drift "
           f"{_f(ms['drift'], '+.4f')}.",
           _direction_sentence(summary)]
    g = summary.get("guide_targets")
    if g:
        out.append(f"The guide's targets: MAPE < 0.02 % is met on {g['mape_below_0.02_pct']} of "
                   f"{plural(n, 'pair')}, directional accuracy > 90 % on "
                   f"{g['direction_above_90_pct']} of {n} (even persistence has a MAPE of one "
                   f"typical candle move, and 90 % direction would mean a leak).")
    if summary.get("backtest"):
        out.extend(_backtest_sentences(summary))
    if n_failed:
        out.append(f"{plural(n_failed, 'pair')} failed and {'is' if n_failed == 1 else 'are'} "
                   f"not in these numbers: see \"Pairs that failed\".")
    return out


def _verdict_sentence(summary: dict) -> str:
    n = summary["n_pairs"]
    beat, worse = summary["beat_persistence"]["count"], summary["worse_than_persistence"]["count"]
    alpha, corr = summary["significance"]["alpha"], summary["significance"]["correction"].capitalize()
    if beat == 0:
        verdict = ("**No: the models do not beat persistence** (\"next close = last close\"). "
                   + ("The pair does not beat it significantly" if n == 1 else
                      f"None of the {n} pairs beats it significantly"))
    elif beat == n:
        verdict = (f"**Yes: the models beat persistence on "
                   f"{'the one pair' if n == 1 else f'all {n} pairs'}** significantly")
    else:
        verdict = (f"**Mostly no: the models beat persistence significantly on {beat} of {n} "
                   f"pairs** only")
    return (f"{verdict} (one-sided Diebold-Mariano test on absolute errors, {corr}-corrected "
            f"across pairs, p < {alpha:g}); {worse} of {n} {'is' if worse == 1 else 'are'} "
            f"significantly worse than it.")


def _direction_sentence(summary: dict) -> str:
    n = summary["n_pairs"]
    d = summary["directional_accuracy"]
    corr = summary["significance"]["correction"].capitalize()
    text = (f"Directional accuracy over the {plural(n, 'pair')}: median {_f(d['median'], '.1f')} % "
            f"(min {_f(d['min'], '.1f')} %, max {_f(d['max'], '.1f')} %); "
            f"{d['above_50_significant']['count']} of {n} significantly above 50 % (binomial "
            f"test, {corr}-corrected). A coin flip scores 50 %.")
    const = d.get("constant_direction") or {}
    if const.get("count"):
        c = const["count"]
        text += (f" {plural(c, 'pair')} ({', '.join(const['pairs'])}) forecast one direction on "
                 f"every test candle: {'its' if c == 1 else 'their'} accuracy is only how often "
                 f"the market went that way, so {'it is' if c == 1 else 'they are'} not counted "
                 f"as significant.")
    return text


def _backtest_sentences(summary: dict) -> list[str]:
    bt = summary["backtest"]
    med = bt["median_total_return"]
    out = [f"Trading the predicted direction after {100 * summary.get('fee_per_side', 0.001):g} % "
           f"fees per side: long/flat beat buy-and-hold on {bt['long_flat_beats_buy_and_hold']} "
           f"of {plural(bt['n_pairs'], 'pair')}, long/short on "
           f"{bt['long_short_beats_buy_and_hold']}; median total return long/flat "
           f"{_f(med['long_flat'], '+.1f', True)} %, long/short "
           f"{_f(med['long_short'], '+.1f', True)} %, buy-and-hold "
           f"{_f(med['buy_and_hold'], '+.1f', True)} % over the test split."]
    trades = bt.get("median_trades") or {}
    if trades:
        lf, ls = trades["long_flat"], trades["long_short"]
        text = (f"The strategies change position rarely (median {_trades(lf)} long/flat, "
                f"{_f(ls, 'g')} long/short; long/flat is in the market "
                f"{_f(bt['median_long_flat_exposure'], '.0f', True)} % of the time)")
        if (ls or 0) <= 10:
            text += (": their returns are mostly one bet on the trend of the test period, not "
                     "evidence of forecasting skill" + _market_clause(bt.get("test_market")))
        out.append(text + ".")
    return out


def _trades(v) -> str:
    return f"{_f(v, 'g')} {'trade' if v == 1 else 'trades'}"


def _market_clause(tm: dict | None) -> str:
    """': the test market rose 3.2 % (up on 52 % of candles), ...' from the summary's
    test_market; '' for results that do not have it."""
    if not tm or tm.get("median_change") is None:
        return ""
    ch = tm["median_change"]
    went = "rose" if ch > 0 else "fell" if ch < 0 else "ended where it started"
    size = f" {_f(abs(ch), '.1f', True)} %" if ch != 0 else ""
    up = f"up on {_f(tm['median_up_share'], '.0f')} % of candles"
    if tm.get("n_pairs", 1) == 1:
        text = f": the test market {went}{size} ({up})"
    else:
        text = (f": the median pair's test market {went}{size} ({up}; it rose on {tm['rose']} "
                f"of {tm['n_pairs']} pairs, fell on {tm['fell']})")
    if ch < 0:
        text += ", and a falling market rewards a forecast that is always 'down'"
    elif ch > 0:
        text += ", and a rising market rewards a forecast that is always 'up'"
    return text


def failed_pairs(results: dict) -> list[tuple[str, str, str]]:
    """(pair key, failed step, reason) of every results entry with status 'failed'."""
    return [(k, str(v.get("failed_step") or "-"), str(v.get("reason") or "-"))
            for k, v in results.items() if not k.startswith("_") and isinstance(v, dict)
            and v.get("status") == "failed"]


def data_rejected_pairs(results: dict) -> list[tuple[str, str, str]]:
    """(pair key, step, reason) of every pair whose newer candles a step refused while it
    kept the model trained on its earlier candles (`data_rejected`)."""
    return [(k, str(v["data_rejected"].get("step") or "-"),
             str(v["data_rejected"].get("reason") or "-"))
            for k, v in results.items() if not k.startswith("_") and isinstance(v, dict)
            and isinstance(v.get("data_rejected"), dict)]


def not_rescored(results: dict) -> list[tuple[str, str]]:
    """(pair key, reason) of every trained pair that --report-only could not re-score."""
    return [(k, str(v["rescore_error"])) for k, v in results.items()
            if not k.startswith("_") and isinstance(v, dict) and v.get("rescore_error")]


def build_blocks(results: dict, plots: dict) -> list[tuple]:
    """The report as blocks: ('h', level, text), ('p', text), ('table', head, rows),
    ('img', path, caption)."""
    summary = results.get("_summary", {})
    entries = _entries(results)
    failed = failed_pairs(results)
    b: list[tuple] = [("h", 1, "V3 evaluation report")]
    if summary.get("synthetic"):
        b.append(("p", "**SYNTHETIC DATA.** These pairs were trained on generated candles with "
                       "no predictable signal (the demo): the numbers test the pipeline, they "
                       "say nothing about markets."))
    b.append(("h", 2, "Summary"))
    b.extend(("p", s) for s in summary_sentences(summary or {"n_pairs": 0},
                                                 n_failed=len(failed)))
    rejected = data_rejected_pairs(results)
    if rejected:
        b.append(("p", f"{plural(len(rejected), 'pair')} ({', '.join(r[0] for r in rejected)}) "
                       f"kept the model from earlier candles: the new ones were refused (see "
                       f"\"Pairs whose new candles were refused\")."))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    b.append(("p", f"Generated {now}. Every number below is in results/v3_training_results.json "
                   f"(per pair, and under `_summary`)."))
    intervals = interval_summary(results, entries)
    b.extend(interval_summary_blocks(intervals))
    if failed:
        b += [("h", 2, "Pairs that failed"),
              ("p", "These pairs have no test results; the step that failed and why:"),
              ("table", ["pair", "failed step", "reason"], [list(f) for f in failed])]
    if rejected:
        b += [("h", 2, "Pairs whose new candles were refused"),
              ("p", "These pairs kept the model trained on their earlier candles; its numbers "
                    "below are that model's. The step that refused the new candles and why:"),
              ("table", ["pair", "refused at", "reason"], [list(x) for x in rejected])]
    stale = not_rescored(results)
    if stale:
        b += [("h", 2, "Pairs that could not be re-scored"),
              ("p", "Their numbers below are the ones saved when they were last scored; re-train "
                    "them (--retrain):"),
              ("table", ["pair", "why"], [list(x) for x in stale])]
    b.extend(_metrics_blocks(entries, summary))
    b.extend(_forecast_blocks(entries))
    b.extend(interval_table_blocks(entries, intervals))
    b.extend(_backtest_blocks(entries, summary))
    b.extend(_walk_forward_blocks(entries))
    b.extend(_plot_blocks(entries, plots))
    b.append(("h", 2, "Definitions"))
    b.append(("p", "MAPE = mean |actual - predicted| / actual (%). MASE = MAE / the training "
                   "split's one-step naive MAE. Directional accuracy counts sign(predicted - "
                   "last close) = sign(actual - last close) over candles that moved; a forecast "
                   "with one direction on every candle (\"constant direction\") only measures "
                   "how often the market went that way. Baselines: "
                   "persistence (next close = last close), drift (last close x exp(mean training "
                   "log return)), linear (ridge on the window of PCA features, summarised by its "
                   "means over the last 1, 4, 16 and 60 candles; penalty chosen on validation; "
                   "at the largest penalty tried it shrinks to drift). "
                   "Backtest: the position for candle t+1 is set at the close of candle t, fees "
                   "per side on every change, Sharpe annualised for 24/7 trading."))
    return b


def _direction_note(m: dict) -> str:
    """'always down' for a constant-direction forecast, else ''."""
    if not m.get("constant_direction"):
        return ""
    return f"always '{'up' if (m.get('up_share') or 0) > 0 else 'down'}': direction % = base rate"


def _linear_note(entry: dict) -> str:
    t = (entry.get("tuning") or {}).get("linear") or {}
    return "linear = drift: largest penalty tried" if t.get("at_largest_alpha") else ""


def _metrics_blocks(entries: dict, summary: dict) -> list[tuple]:
    head = ["pair", "data", "test candles", "MAPE %", "persist. MAPE %", "MASE", "skill",
            "skill 95 % CI", "DM p (Holm)", "direction %", "direction 95 % CI",
            "binomial p", "linear skill", "drift skill", "notes"]
    rows = []
    per = summary.get("per_pair", {})
    for k, e in entries.items():
        t, base, sp = e["test"], e.get("baseline") or {}, e.get("splits") or {}
        const = bool(t.get("constant_direction"))
        rows.append([k, "synthetic" if e.get("synthetic") else "real",
                     f"{t['n']} ({_iso_ms(sp.get('test_first_open_time'))} .. "
                     f"{_iso_ms(sp.get('test_last_open_time'))})",
                     _f(t.get("mape")), _f((base.get("persistence") or {}).get("mape")),
                     _f(t.get("mase"), ".3f"),
                     _f(t.get("skill"), "+.4f"), _ci(t, "skill", "+.4f"),
                     _p(per.get(k, {}).get("dm_p_better_holm")),
                     _f(t.get("directional_accuracy"), ".1f"),
                     "-" if const else _ci(t, "direction"),
                     "-" if const else _p(t.get("direction_p_value")),
                     _f((base.get("linear") or {}).get("skill"), "+.4f"),
                     _f((base.get("drift") or {}).get("skill"), "+.4f"),
                     "; ".join(n for n in (_direction_note(t), _linear_note(e)) if n)])
    return [("h", 2, "Test metrics per pair, next to the baselines"),
            ("p", "Same test samples for every forecast. Skill = 1 - MAE / MAE(persistence) "
                  "with a 95 % interval; DM p = one-sided Diebold-Mariano p-value of beating "
                  "persistence (absolute error), Holm-adjusted across pairs; direction % with "
                  "its 95 % Wilson interval and binomial p-value against 50 % (left out for a "
                  "forecast with one direction throughout: its accuracy is the base rate)."),
            ("table", head, rows)]


def _forecast_blocks(entries: dict) -> list[tuple]:
    head = ["pair", "forecast", "MAPE %", "MAE", "RMSE", "MSE", "MASE", "skill", "direction %",
            "up %", "sign changes", "DM p (two-sided)", "note"]
    rows = []
    for k, e in entries.items():
        for name in MODELS:
            m = _metrics(e, name)
            if not m:
                continue
            notes = (_direction_note(m), _linear_note(e) if name == "linear" else "")
            note = "; ".join(n for n in notes if n)
            rows.append([k, "LSTM" if name == "model" else name, _f(m.get("mape")),
                         _f(m.get("mae"), ".6g"), _f(m.get("rmse"), ".6g"), _f(m.get("mse"), ".6g"),
                         _f(m.get("mase"), ".3f"), _f(m.get("skill"), "+.4f"),
                         _f(m.get("directional_accuracy"), ".1f"), _f(m.get("up_share"), ".1f"),
                         "-" if m.get("sign_changes") is None else str(m["sign_changes"]),
                         _p(m.get("dm_p_value")), note.replace("linear = ", "= ")])
    tuned = []
    for k, e in entries.items():
        t = (e.get("tuning") or {}).get("linear") or {}
        tuned.append(f"{k} {_f(t.get('alpha'), 'g')}"
                     + (" (= drift: largest penalty tried)" if t.get("at_largest_alpha") else ""))
    return [("h", 2, "Every forecast on every pair"), ("table", head, rows),
            ("p", "Tuned on validation only: the LSTM's stopping epoch (early stopping on the "
                  "validation loss) and the ridge penalty of the linear baseline ("
                  + ", ".join(tuned) + "). Nothing was chosen on the test split.")]


def _plot_blocks(entries: dict, plots: dict) -> list[tuple]:
    b: list[tuple] = [("h", 2, "Across pairs")]
    for key in ("skill", "direction"):
        if key in plots:
            b.append(("img", plots[key], "skill per pair" if key == "skill"
                      else "directional accuracy per pair and its distribution"))
    b.extend(interval_plot_blocks(plots))
    b.append(("h", 2, "Per pair"))
    for k in entries:
        b.append(("h", 3, k + (" [SYNTHETIC]" if entries[k].get("synthetic") else "")))
        for kind, cap in (("curves", "learning curves"), ("predictions", "predicted vs. actual"),
                          ("fan", "next-candle intervals and the realised closes"),
                          ("equity", "backtest equity")):
            if (k, kind) in plots:
                b.append(("img", plots[(k, kind)], f"{k}: {cap}"))
    return b


def _backtest_blocks(entries: dict, summary: dict) -> list[tuple]:
    rows = []
    for k, e in entries.items():
        bt = e.get("backtest")
        if not bt:
            continue
        for mode, label in (("long_flat", "long/flat"), ("long_short", "long/short"),
                            ("buy_and_hold", "buy and hold")):
            r = bt[mode]
            rows.append([k, label, _f(r["total_return"], "+.2f", True), _f(r["sharpe"], "+.2f"),
                         _f(r["max_drawdown"], ".2f", True), str(r["trades"]),
                         _f(r["fees_paid"], ".2f", True)])
    if not rows:
        return []
    fee = summary.get("fee_per_side", 0.001)
    return [("h", 2, "Backtest of the predicted direction, after fees"),
            ("p", f"Fee {100 * fee:g} % per side; the position for candle t+1 is set at the close "
                  f"of candle t and held through t+1; closed after the last test candle."),
            ("table", ["pair", "strategy", "total return %", "Sharpe (annualised)",
                       "max drawdown %", "trades", "fees %"], rows)]


def _walk_forward_blocks(entries: dict) -> list[tuple]:
    rows = []
    walks = [(k, e.get("walk_forward") or {}) for k, e in entries.items()]
    # the interval columns only where a fold or a pooled entry carries an interval block
    intervals = any(model_block(m) for _, wf in walks
                    for m in wf.get("folds", []) + [wf.get("pooled") or {}])
    for k, wf in walks:
        for f in wf.get("folds", []):
            rows.append(_wf_row(k, f"fold {f['fold']}", f["n_train"], f["test_first_open_time"],
                                f["test_last_open_time"], f, intervals))
        if wf.get("pooled"):
            p = wf["pooled"]
            label = f"pooled ({plural(p['n_folds'], 'fold')})"
            rows.append(_wf_row(k, label, None, None, None, p, intervals))
        elif wf.get("status") == "failed":
            rows.append([k, "failed: " + wf.get("reason", "")]
                        + ["-"] * (7 + intervals * len(WF_INTERVAL_HEAD)))
    if not rows:
        return []
    return [("h", 2, "Walk-forward"),
            ("p", "Each fold retrains on every candle before its test block (expanding window; "
                  "indicators, scaling, PCA and the target's mean/std refitted on the fold's own "
                  "training rows) and is scored on the next block of test samples."
                  + (" The interval columns score the model's 80 % interval and its pinball "
                     "loss on the fold's test samples (skill against GARCH fitted on the "
                     "fold's own training split)." if intervals else "")),
            ("table", ["pair", "fold", "train samples", "test from", "test to", "MAPE %",
                       "skill", "direction %", "linear skill"]
             + (WF_INTERVAL_HEAD if intervals else []), rows)]


def _wf_row(k, label, n_train, t0, t1, m, intervals: bool = False) -> list[str]:
    t = m["test"]
    return ([k, label, "-" if n_train is None else str(n_train), _iso_ms(t0), _iso_ms(t1),
             _f(t.get("mape")), _f(t.get("skill"), "+.4f"),
             _f(t.get("directional_accuracy"), ".1f"), _f(m["baseline"]["linear"]["skill"], "+.4f")]
            + (wf_interval_cells(m) if intervals else []))


def _md_cell(value) -> str:
    """A markdown table cell: a '|' inside it would end the cell."""
    return str(value).replace("|", "\\|")


def to_markdown(blocks: list[tuple], *, rel_to: Path) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "table":
            head, rows = blk[1], blk[2]
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in head) + " |",
                                  "|" + "---|" * len(head)] +
                                 ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]))
        elif blk[0] == "img":
            out.append(f"![{blk[2]}]({Path(blk[1]).relative_to(rel_to).as_posix()})")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def to_html(blocks: list[tuple]) -> str:
    def inline(s: str) -> str:
        """Markdown's `code` and **bold**, escaped; a lone backtick stays a backtick."""
        text = re.sub(r"`([^`]+)`", lambda m: f"\0{m.group(1)}\1", s)  # \0 \1: code marks
        parts = html.escape(text).split("**")
        text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
        return text.replace("\0", "<code>").replace("\1", "</code>")

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>V3 evaluation report</title>", f"<style>{_CSS}</style></head><body>"]
    for blk in blocks:
        if blk[0] == "h":
            out.append(f"<h{blk[1]}>{html.escape(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            out.append(f"<p>{inline(blk[1])}</p>")
        elif blk[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in blk[1])
                       + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in blk[2])
            out.append("</table>")
        elif blk[0] == "img":
            data = base64.b64encode(Path(blk[1]).read_bytes()).decode()
            out.append(f'<figure><img alt="{html.escape(blk[2])}" '
                       f'src="data:image/png;base64,{data}"></figure>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(base_dir: str | Path, results: dict, *, plots: bool = True) -> dict:
    """Draw the plots (unless `plots=False`: the tables alone, no matplotlib needed) and write
    results/report.md and results/report.html; their paths."""
    base_dir = Path(base_dir)
    res_dir = base_dir / "results"
    plots = draw_plots(base_dir, results) if plots else {}
    blocks = build_blocks(results, plots)
    md, page = res_dir / "report.md", res_dir / "report.html"
    atomic_write_bytes(md, to_markdown(blocks, rel_to=res_dir).encode())
    atomic_write_bytes(page, to_html(blocks).encode())
    return {"md": md, "html": page, "plots": sorted(str(p) for p in plots.values())}
