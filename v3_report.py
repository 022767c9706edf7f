"""Writes a run's report, results/report.md and report.html with their plots, from the results JSON.

    from v3_report import write_report
    write_report(base_dir, results)   # results = the results JSON, with '_summary' filled

The report opens with a plain answer to "do the models beat persistence?" and, where the
results have interval blocks, to "are the intervals calibrated, and do they beat GARCH?"
(v3_report_intervals), then the pairs that failed (with their reasons), the tables (model next
to persistence, drift and linear on the same test samples; the intervals next to the rolling,
EWMA and GARCH baselines; the backtest; walk-forward folds) and the plots. Every number in it
comes from the results JSON; the plots read the per-sample predictions in
results/predictions/. report.html is self-contained: its images are embedded as base64.
Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, so pyplot's global state
and the notebook's backend are never touched.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import atomic_write_bytes, fmt_num, log, plural
from v3_metrics import BASELINES, backtest_direction
from v3_report_intervals import WF_INTERVAL_HEAD, draw_interval_plots
from v3_report_intervals import fmt_cell as _f
from v3_report_intervals import fmt_p as _p
from v3_report_intervals import (interval_plot_blocks, interval_summary,
                                 interval_summary_blocks, interval_table_blocks, model_block,
                                 wf_interval_cells)
from v3_report_intervals import new_figure as _figure
from v3_report_intervals import save_png as _save
from v3_report_intervals import utc_times as _times

LAST_N_CANDLES = 200  # shown in the predicted vs. actual plot
MODELS = ("model",) + BASELINES
SYNTHETIC_TAG = " [SYNTHETIC DATA]"  # in the title of every plot of generated candles


def _integer_ticks(axis) -> None:
    """Ticks at whole numbers only (epochs, counts of pairs)."""
    from matplotlib.ticker import MaxNLocator  # lazy with the rest of matplotlib (_figure)
    axis.set_major_locator(MaxNLocator(integer=True))


# ---------------------------------------------------------------------------------------
# Plots


def learning_curves_figure(history: list[dict], *, title: str,
                           mean_forecast_loss: float | None = None):
    """Train and validation loss per epoch (MSE of the standardised return), best epoch marked,
    and the validation loss of predicting the training mean as the reference line (left out
    when the results do not have it: `val_loss_mean_forecast` is newer than some results)."""
    fig, ax = _figure()
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="train")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    if history:
        best = min(history, key=lambda h: h["val_loss"])
        ax.axvline(best["epoch"], color="grey", ls=":", label=f"best epoch {best['epoch']}")
    if mean_forecast_loss is not None:
        ax.axhline(mean_forecast_loss, color="black", lw=0.6, ls="--",
                   label=f"predicting the training mean ({fmt_num(mean_forecast_loss, '.3f')})")
    ax.set(xlabel="epoch", ylabel="MSE (standardised log return)", title=title)
    _integer_ticks(ax.xaxis)
    ax.legend(fontsize=8)
    return fig


def plot_learning_curves(history: list[dict], path: Path, *, title: str,
                         mean_forecast_loss: float | None = None) -> Path:
    """`learning_curves_figure` as a PNG at `path`."""
    return _save(learning_curves_figure(history, title=title,
                                        mean_forecast_loss=mean_forecast_loss), path)


def plot_predictions(df: pd.DataFrame, path: Path, *, title: str,
                     last_n: int = LAST_N_CANDLES) -> Path:
    """Actual vs. predicted close over the last `last_n` test candles, with persistence."""
    d = df.tail(last_n)
    t = _times(d["open_time"])
    fig, ax = _figure(9.0, 3.8)
    ax.plot(t, d["actual_close"], color="black", lw=1.2, label="actual close")
    ax.plot(t, d["last_close"], color="tab:orange", lw=0.9, ls="--",
            label="persistence (last close)")
    ax.plot(t, d["predicted_close"], color="tab:blue", lw=0.9, label="LSTM forecast")
    ax.set(ylabel="close", title=title)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _save(fig, path)


def plot_equity(df: pd.DataFrame, path: Path, *, interval: str, fee_per_side: float,
                title: str) -> Path:
    """Cumulative equity of the direction strategies after fees, next to buy-and-hold."""
    bt = backtest_direction(df["predicted_close"].to_numpy(), df["last_close"].to_numpy(),
                            df["actual_close"].to_numpy(), interval=interval,
                            fee_per_side=fee_per_side, keep_equity=True)
    t = _times(df["open_time"])
    fig, ax = _figure(9.0, 3.6)
    for mode, label in (("long_flat", "long/flat"), ("long_short", "long/short"),
                        ("buy_and_hold", "buy and hold")):
        eq = bt[mode]["equity"]
        ax.plot(t, eq[1:], label=f"{label} ({fmt_num(100 * bt[mode]['total_return'], '+.1f')} %)")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set(ylabel="equity (start 1.0)",
           title=f"{title} (fee {100 * fee_per_side:g} % per side)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _save(fig, path)


def plot_skill(entries: dict[str, dict], path: Path, *, title: str) -> Path:
    """Skill vs. persistence per pair with its 95 % interval, the linear baseline beside it."""
    keys = list(entries)
    fig, ax = _figure(8.0, 1.8 + 0.35 * len(keys))
    y = np.arange(len(keys))
    for off, (name, color) in ((-0.15, ("model", "tab:blue")), (0.15, ("linear", "tab:green"))):
        m = [_metrics(entries[k], name) for k in keys]
        s = np.array([_num(x.get("skill")) for x in m])
        lo = np.array([_num(x.get("skill_ci95_low")) for x in m])
        hi = np.array([_num(x.get("skill_ci95_high")) for x in m])
        err = np.vstack([np.nan_to_num(s - lo), np.nan_to_num(hi - s)])
        ax.errorbar(s, y + off, xerr=err, fmt="o", ms=4, color=color, capsize=2,
                    label="LSTM" if name == "model" else "linear (ridge)")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, keys, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="skill = 1 - MAE / MAE(persistence), 95 % interval", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def direction_figure(entries: dict[str, dict], summary: dict, *, title: str):
    """Directional accuracy per pair with its Wilson interval, and their histogram.
    Constant-direction forecasts are drawn hollow and named so on the axis."""
    keys = list(entries)
    fig, (ax, hx) = _figure(10.0, 1.2 + 0.35 * max(len(keys), 6), ncols=2)
    y = np.arange(len(keys))
    t = [entries[k]["test"] for k in keys]
    a = np.array([_num(x.get("directional_accuracy")) for x in t])
    lo = np.array([_num(x.get("direction_ci95_low")) for x in t])
    hi = np.array([_num(x.get("direction_ci95_high")) for x in t])
    const = np.array([bool(x.get("constant_direction")) for x in t], bool)
    err = np.vstack([np.nan_to_num(a - lo), np.nan_to_num(hi - a)])
    if (~const).any():
        ax.errorbar(a[~const], y[~const], xerr=err[:, ~const], fmt="o", ms=4, capsize=2,
                    color="tab:blue")
    if const.any():
        ax.plot(a[const], y[const], "o", ms=5, mfc="none", color="tab:red",
                label="one direction throughout (base rate, not tested)")
        ax.legend(fontsize=7)
    ax.axvline(50.0, color="black", lw=0.8)
    ax.set_yticks(y, [k + (" (one direction)" if c else "") for k, c in zip(keys, const)],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="directional accuracy % (95 % Wilson interval)", title=title)
    h = summary.get("directional_accuracy", {}).get("histogram", {})
    if h.get("counts"):
        edges = np.asarray(h["edges"])
        hx.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", edgecolor="white")
    hx.axvline(50.0, color="black", lw=0.8)
    _integer_ticks(hx.yaxis)
    hx.set(xlabel="directional accuracy %", ylabel="pairs",
           title="distribution over pairs" + (SYNTHETIC_TAG if summary.get("synthetic") else ""))
    return fig


def plot_direction(entries: dict[str, dict], summary: dict, path: Path, *, title: str) -> Path:
    """`direction_figure` as a PNG at `path`."""
    return _save(direction_figure(entries, summary, title=title), path)


def _num(v) -> float:
    return np.nan if v is None else float(v)


def _metrics(entry: dict, name: str) -> dict:
    if name == "model":
        return entry.get("test") or {}
    return (entry.get("baseline") or {}).get(name) or {}


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
        verdict = (f"**No: the models do not beat persistence** (\"next close = last close\"). "
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
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    b.append(("p", f"Generated {now}. Every number below is in results/v3_training_results.json "
                   f"(per pair, and under `_summary`)."))
    b.extend(interval_summary_blocks(interval_summary(results, entries)))
    if failed:
        b += [("h", 2, "Pairs that failed"),
              ("p", "These pairs have no test results; the step that failed and why:"),
              ("table", ["pair", "failed step", "reason"], [list(f) for f in failed])]
    stale = not_rescored(results)
    if stale:
        b += [("h", 2, "Pairs that could not be re-scored"),
              ("p", "Their numbers below are the ones saved when they were last scored; re-train "
                    "them (--retrain):"),
              ("table", ["pair", "why"], [list(x) for x in stale])]
    b.extend(_metrics_blocks(entries, summary))
    b.extend(_forecast_blocks(entries))
    b.extend(interval_table_blocks(entries))
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


def to_markdown(blocks: list[tuple], *, rel_to: Path) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "table":
            head, rows = blk[1], blk[2]
            cell = lambda s: str(s).replace("|", "\\|")
            out.append("\n".join(["| " + " | ".join(cell(h) for h in head) + " |",
                                  "|" + "---|" * len(head)] +
                                 ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]))
        elif blk[0] == "img":
            out.append(f"![{blk[2]}]({Path(blk[1]).relative_to(rel_to).as_posix()})")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def to_html(blocks: list[tuple]) -> str:
    def inline(s: str) -> str:
        parts = html.escape(s).split("**")
        return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))

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


# ---------------------------------------------------------------------------------------


def _entries(results: dict) -> dict[str, dict]:
    return {k: v for k, v in results.items() if not k.startswith("_") and isinstance(v, dict)
            and v.get("status") in ("success", "skipped") and (v.get("test") or {}).get("n")}


def draw_plots(base_dir: Path, results: dict) -> dict:
    """Every PNG of the report into results/plots; {key: path}."""
    out_dir = base_dir / "results" / "plots"
    summary = results.get("_summary", {})
    entries = _entries(results)
    fee = summary.get("fee_per_side", 0.001)
    plots: dict = {}
    tag = SYNTHETIC_TAG if summary.get("synthetic") else ""
    if entries:
        plots["skill"] = plot_skill(entries, out_dir / "skill.png",
                                    title="skill vs. persistence (test split)" + tag)
        plots["direction"] = plot_direction(entries, summary, out_dir / "direction.png",
                                            title="directional accuracy (test split)" + tag)
    frames: dict[str, pd.DataFrame] = {}
    for k, e in entries.items():
        ptag = SYNTHETIC_TAG if e.get("synthetic") else ""
        if e.get("history"):
            plots[(k, "curves")] = plot_learning_curves(
                e["history"], out_dir / f"{k}_curves.png", title=f"{k}: learning curves{ptag}",
                mean_forecast_loss=e.get("val_loss_mean_forecast"))
        pred = base_dir / (e.get("predictions_path") or f"results/predictions/{k}.csv")
        if pred.exists():
            df = frames[k] = pd.read_csv(pred)
            plots[(k, "predictions")] = plot_predictions(
                df, out_dir / f"{k}_predictions.png",
                title=f"{k}: last {min(LAST_N_CANDLES, len(df))} test candles{ptag}")
            plots[(k, "equity")] = plot_equity(df, out_dir / f"{k}_equity.png",
                                               interval=e["interval"], fee_per_side=fee,
                                               title=f"{k}: backtest{ptag}")
        else:
            log.warning("%s: no predictions file %s; its plots are left out", k, pred)
    plots.update(draw_interval_plots(entries, frames, out_dir,
                                     synthetic=bool(summary.get("synthetic"))))
    return plots


def write_report(base_dir: str | Path, results: dict) -> dict:
    """Draw the plots and write results/report.md and results/report.html; their paths."""
    base_dir = Path(base_dir)
    res_dir = base_dir / "results"
    plots = draw_plots(base_dir, results)
    blocks = build_blocks(results, plots)
    md, page = res_dir / "report.md", res_dir / "report.html"
    atomic_write_bytes(md, to_markdown(blocks, rel_to=res_dir).encode())
    atomic_write_bytes(page, to_html(blocks).encode())
    return {"md": md, "html": page, "plots": sorted(str(p) for p in plots.values())}
