"""The interval part of the report: "are the intervals calibrated, and do they beat GARCH?"

    from v3_report_intervals import interval_summary, interval_summary_blocks
    s = interval_summary(results, entries)      # None for results without interval blocks
    blocks = interval_summary_blocks(s)         # the section on top, beside the verdict

What it reads from the results JSON (fields of v3_intervals' `interval` block; coverage as
fractions): per pair the model's block (`model_block`: the entry's `interval` where it is a
dict, else `test.interval`; a pair entry's `interval` is also its timeframe string, '15m',
which is not a block), `baseline.rolling|ewma|garch|har.interval`, and
`_summary.intervals` (`v3_intervals.summarize_intervals`; computed here from the entries when
older results lack it). Walk-forward folds and their pooled entry carry the same block under
`interval`. The plots read the predictions CSV's `p05 .. p95` (the model's predicted close at
each quantile) and, when present, `garch_p05 .. garch_p95` and `har_p05 .. har_p95`; a plot whose
columns are absent is left out.

The figure helpers (`new_figure`, `save_png`, `utc_times`) and the cell formats (`fmt_cell`,
`fmt_p`) live here and v3_report imports them, so that this module needs nothing of it.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import ConfigError, atomic_write_bytes, fmt_num, plural
from v3_interval_scores import (CENTRAL_INTERVALS, INTERVAL_BASELINES, QUANTILE_COLUMNS,
                          quantile_bin_counts, summarize_intervals)

FAN_LAST_N = 200            # test candles in the fan chart
FORECASTS = ("model",) + INTERVAL_BASELINES
LABELS = {"model": "LSTM", "rolling": "rolling", "ewma": "EWMA", "garch": "GARCH", "har": "HAR"}
COLORS = {"model": "tab:blue", "rolling": "tab:green", "ewma": "tab:purple", "garch": "tab:orange",
          "har": "tab:brown"}
SECTION_TITLE = "Intervals: are they calibrated, and do they beat GARCH and HAR?"
WF_INTERVAL_HEAD = ["80 % coverage %", "pinball", "skill vs GARCH %", "skill vs HAR %"]


# ---------------------------------------------------------------------------------------
# Shared with v3_report: figures and cell formats


def new_figure(width_in: float = 8.0, height_in: float = 3.6, ncols: int = 1):
    """A matplotlib Figure on the Agg canvas (pyplot's state is never touched) and its axes."""
    # matplotlib is imported here, not at the top, on purpose: the pipeline imports the report
    # for its sentences without drawing, and a missing matplotlib is a named error only here
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (lazy, above)
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as e:
        raise ConfigError("the report needs matplotlib: pip install 'matplotlib>=3.7'") from e
    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def utc_times(ms) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(ms, np.int64), unit="ms", utc=True)


def fmt_cell(v, spec: str = ".4f", pct: bool = False) -> str:
    """A number for a table or a sentence ('-' for None/NaN/inf); pct: a fraction x 100."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return fmt_num(100 * v if pct else v, spec)


def fmt_p(v) -> str:
    if v is None:
        return "-"
    return "< 0.0001" if v < 1e-4 else f"{v:.4f}"


# ---------------------------------------------------------------------------------------
# Reading the blocks


def _scored(b) -> dict | None:
    return b if isinstance(b, dict) and b.get("n") else None


def model_block(entry: dict) -> dict | None:
    """The model's interval block of a pair, fold or pooled entry; None when it has none."""
    return _scored(entry.get("interval")) or _scored((entry.get("test") or {}).get("interval"))


def baseline_block(entry: dict, name: str) -> dict | None:
    """The interval block of baseline `name` ('rolling', 'ewma', 'garch', 'har'); None if
    absent."""
    return _scored(((entry.get("baseline") or {}).get(name) or {}).get("interval"))


def forecast_block(entry: dict, name: str) -> dict | None:
    return model_block(entry) if name == "model" else baseline_block(entry, name)


def has_intervals(entry: dict) -> bool:
    return any(forecast_block(entry, name) for name in FORECASTS)


def interval_summary(results: dict, entries: dict[str, dict]) -> dict | None:
    """`_summary.intervals`, or summarize_intervals over the entries for results written
    before it; None when no entry has an interval block."""
    with_blocks = {k: e for k, e in entries.items() if has_intervals(e)}
    if not with_blocks:
        return None
    stored = (results.get("_summary") or {}).get("intervals")
    if stored:
        return stored
    return summarize_intervals({k: {"interval": model_block(e), "baseline": e.get("baseline")}
                                for k, e in with_blocks.items()})


# ---------------------------------------------------------------------------------------
# Sentences


def interval_sentences(s: dict) -> list[str]:
    """Plain sentences from a summarize_intervals summary: calibration, the model against
    GARCH and HAR, against the other baselines, the best forecaster per pair, what to trust,
    and the baselines' own coverage."""
    if s["n_pairs"] == 0:
        return ["**The model has no interval forecast** (these results have no quantile head): "
                "only the interval baselines are scored below.", _best_sentence(s),
                _baseline_sentence(s)]
    return [_calibration_sentence(s), _beat_sentence(s, "garch"), _beat_sentence(s, "har"),
            _other_baselines_sentence(s), _best_sentence(s), _trust_sentence(s),
            _baseline_sentence(s)]


def _rejected(s: dict, level: str, who: str = "model") -> dict:
    """{count, of} of the pairs whose `level` coverage the binomial test rejects."""
    by_level = s.get("coverage_rejected") or {"80": s.get("coverage_rejected_80") or {}}
    return (by_level.get(level) or {}).get(who) or {"count": None, "of": 0}


def _calibration_sentence(s: dict) -> str:
    n, alpha = s["n_pairs"], s["significance"]["alpha"]
    rej = _rejected(s, "80")["count"]
    cov = s["median_coverage"]["model"]
    pairs = "the pair" if n == 1 else f"all {n} pairs"
    if rej == 0:
        verdict = (f"**Calibrated: the model's 80 % interval holds what it promises on "
                   f"{pairs}**: an exact binomial test of its test coverage against 80 % "
                   f"rejects it on none of them")
    elif rej == n:
        verdict = (f"**Not calibrated: the exact binomial test rejects the model's 80 % "
                   f"coverage on {pairs}**")
    else:
        verdict = (f"**Not calibrated everywhere: the exact binomial test rejects the model's "
                   f"80 % coverage on {rej} of {n} pairs**")
    others = []
    for level in ("50", "90"):
        r = _rejected(s, level)
        count = f", rejected on {r['count']} of {r['of']}" if r["count"] is not None else ""
        others.append(f"the {level} % interval {fmt_cell(cov[level], '.1f', True)} %{count}")
    where = "the pair" if n == 1 else f"the median of {n} pairs"
    return (f"{verdict} (a coverage counts as rejected when p < {alpha:g}, per pair). On "
            f"{where} the 80 % interval covered {fmt_cell(cov['80'], '.1f', True)} % of the "
            f"test candles; {others[0]}; {others[1]}.")


def _beat_sentence(s: dict, name: str) -> str:
    n, alpha = s["n_pairs"], s["significance"]["alpha"]
    label = LABELS[name]
    if not _rejected(s, "80", name)["of"] or f"beat_{name}" not in s:
        return f"There is no {label} baseline in these results to compare with."
    beat, med = s[f"beat_{name}"]["count"], s["median_skill"].get(name)
    test = (f"one-sided Diebold-Mariano test on the pinball loss with a Newey-West variance, "
            f"{s['significance']['correction'].capitalize()}-corrected across pairs, p < {alpha:g}")
    skill = f"median skill vs {label} {fmt_cell(med, '+.1f', True)} %"
    if beat == 0:
        text = (f"**No: the model's intervals do not beat {label}**: its pinball loss is not "
                f"significantly lower on {'the pair' if n == 1 else f'any of the {n} pairs'} "
                f"({test}); {skill}")
        if med is not None and med < 0:
            text += f", so {label}'s intervals are the better ones on the median pair"
        return text + "."
    which = "the pair" if n == 1 else f"all {n} pairs" if beat == n else f"{beat} of {n} pairs"
    word = "Yes" if beat == n else "Partly"
    return (f"**{word}: the model's intervals beat {label} significantly on {which}** ({test}); "
            f"{skill}.")


def _other_baselines_sentence(s: dict) -> str:
    n = s["n_pairs"]
    parts = []
    for name, label in (("rolling", "the rolling empirical quantiles"),
                        ("ewma", "EWMA (RiskMetrics)")):
        if _rejected(s, "80", name)["of"] and f"beat_{name}" in s:
            parts.append(f"{label} on {s[f'beat_{name}']['count']} of {plural(n, 'pair')} "
                         f"(median skill {fmt_cell(s['median_skill'][name], '+.1f', True)} %)")
    if not parts:
        return ""
    return ("Its pinball loss is significantly lower (same test) than " + ", and than ".join(parts)
            + ".")


def _best_sentence(s: dict) -> str:
    """Which forecaster has the lowest pinball loss, over the pairs, and how often that is
    significant (the 90 % model confidence set holds it alone)."""
    per = s.get("per_pair") or {}
    if not per:
        return ""
    counts = [(c, w) for w, c in (s.get("best") or {}).items() if c]
    parts = [f"{LABELS[w]} on {plural(c, 'pair')} ({s['best_significant'].get(w, 0)} "
             f"significantly)" for c, w in sorted(counts, reverse=True)]
    return ("**Best forecaster per pair** (lowest pinball loss; significantly: alone in the "
            "pair's 90 % model confidence set, or without a model, a Diebold-Mariano p < "
            f"{s['significance']['alpha']:g} against the runner-up): " + ", ".join(parts)
            + ". The table below names it for every pair.")


def _trust_sentence(s: dict) -> str:
    """What these results tell a user to use: the model's intervals only where it beats
    HAR, the strongest baseline, significantly on at least half of the pairs."""
    n = s["n_pairs"]
    if "beat_har" not in s or not _rejected(s, "80", "har")["of"]:
        return ""
    beat = s["beat_har"]["count"]
    med = fmt_cell(s["median_skill"].get("har"), "+.1f", True)
    if 2 * beat >= n:
        return (f"**What to trust: the model's intervals**, which beat HAR significantly on "
                f"{beat} of {plural(n, 'pair')} (median skill {med} %).")
    return (f"**What to trust: the HAR baseline's intervals** (`baseline.har`; `har_p05 .. "
            f"har_p95` in the predictions): the model beats them significantly on only {beat} "
            f"of {plural(n, 'pair')} (median skill {med} %), so its network adds nothing a "
            f"user can rely on over one regression on the candles' ranges and the clock.")


def _baseline_sentence(s: dict) -> str:
    parts = []
    for name in INTERVAL_BASELINES:
        r = _rejected(s, "80", name)
        if r.get("of"):
            cov = fmt_cell(s["median_coverage"][name]["80"], ".1f", True)
            parts.append(f"{LABELS[name]} {cov} % (rejected on {r['count']} of {r['of']})")
    if not parts:
        return ""
    return ("The baselines' 80 % intervals covered (median over pairs): " + ", ".join(parts)
            + ".")


def interval_summary_blocks(s: dict | None) -> list[tuple]:
    """The section on top of the report; [] for results without interval blocks."""
    if not s:
        return []
    return [("h", 2, SECTION_TITLE)] + [("p", t) for t in interval_sentences(s) if t]


# ---------------------------------------------------------------------------------------
# The per-pair table


def _skill_cells(b: dict, name: str) -> list[str]:
    out = []
    for base in INTERVAL_BASELINES:
        if base == name:
            out += ["=", "="]
            continue
        out += [fmt_cell((b.get("skill") or {}).get(base), "+.2f", True),
                fmt_p((b.get("dm_p") or {}).get(base))]
    return out


def interval_row(key: str, name: str, b: dict) -> list[str]:
    cov, cp = b.get("coverage") or {}, b.get("coverage_p") or {}
    return ([key, LABELS[name], str(b.get("n", "-"))]
            + [fmt_cell(cov.get(c), ".1f", True) for c in CENTRAL_INTERVALS]
            + [fmt_p(cp.get("80")), fmt_p(b.get("independence_p_80")),
               fmt_cell(b.get("width_80_pct"), ".3f"), fmt_cell(b.get("pinball"), ".4f"),
               fmt_cell(b.get("qlike"), ".3f")] + _skill_cells(b, name))


def verdict_blocks(s: dict | None) -> list[tuple]:
    """One line per pair: the forecaster with the lowest pinball loss and whether that is
    significant (summarize_intervals' per_pair)."""
    per = (s or {}).get("per_pair") or {}
    if not per:
        return []
    rows = []
    for k, v in per.items():
        if v.get("by") == "mcs_90":
            others = [LABELS[w] for w in v["set"] if w != v["best"]]
            how = ("yes: alone in the 90 % confidence set" if v["significant"] else
                   f"no: the 90 % confidence set also holds {', '.join(others)}")
            members = ", ".join(LABELS[w] for w in v["set"])
        else:
            how = (f"{'yes' if v['significant'] else 'no'}: DM p {fmt_p(v.get('p'))} against "
                   f"{LABELS.get(v.get('runner_up'), '-')}")
            members = "-"
        rows.append([k, LABELS[v["best"]], fmt_cell(v["pinball"], ".4f"), how, members])
    return [("h", 3, "The best interval forecast per pair"),
            ("table", ["pair", "best (lowest pinball)", "pinball", "significantly best?",
                       "90 % model confidence set"], rows)]


def interval_table_blocks(entries: dict[str, dict], summary: dict | None = None) -> list[tuple]:
    """The per-pair verdicts, then the per-pair table: the model's line and a line per
    interval baseline."""
    rows = [interval_row(k, name, b) for k, e in entries.items() for name in FORECASTS
            if (b := forecast_block(e, name))]
    if not rows:
        return []
    head = (["pair", "forecast", "test candles", "cover 50 %", "cover 80 %", "cover 90 %",
             "coverage p (80)", "independence p (80)", "width 80 % (% of price)", "pinball",
             "QLIKE"] + [h for b in INTERVAL_BASELINES
                         for h in (f"skill vs {LABELS[b]} %", "DM p")])
    return verdict_blocks(summary) + [
            ("h", 2, "Intervals per pair, next to the interval baselines"),
            ("p", "Same test samples for every forecast. Cover = share of test candles whose "
                  "close fell inside the central 50 / 80 / 90 % interval (nominal 50 / 80 / "
                  "90 %); coverage p = exact binomial test of the 80 % coverage against 80 %; "
                  "independence p = Christoffersen's test that the 80 % misses do not cluster; "
                  "width = mean width of the 80 % interval in % of the last close; pinball = "
                  "mean pinball loss over the 7 quantiles of 100 x the log return (lower is "
                  "better); QLIKE of the variance the quantiles imply (lower is better); skill "
                  "= 1 - pinball / pinball(baseline), DM p = one-sided Diebold-Mariano p-value "
                  "of a lower pinball loss, on a Newey-West variance (not corrected; '=' is the "
                  "forecast itself). Baselines: rolling = empirical quantiles of the last N "
                  "returns (N chosen on validation), EWMA = RiskMetrics (lambda 0.94) with "
                  "Student-t quantiles, GARCH = GARCH(1,1)-t fitted on the training split and "
                  "filtered through validation and test without refitting, HAR = a regression "
                  "of the next candle's log range variance on the last candle's, 4 candles', "
                  "a day's and a week's and the clock (hour, weekend), fitted on the training "
                  "split."),
            ("table", head, rows)]


def wf_interval_cells(m: dict) -> list[str]:
    """The walk-forward table's interval cells of a fold or pooled entry ('-' without one)."""
    b = model_block(m)
    if not b:
        return ["-"] * len(WF_INTERVAL_HEAD)
    return [fmt_cell((b.get("coverage") or {}).get("80"), ".1f", True),
            fmt_cell(b.get("pinball"), ".4f"),
            fmt_cell((b.get("skill") or {}).get("garch"), "+.2f", True),
            fmt_cell((b.get("skill") or {}).get("har"), "+.2f", True)]


# ---------------------------------------------------------------------------------------
# Plots


def quantile_columns(df: pd.DataFrame, prefix: str = "") -> list[str] | None:
    """The predictions CSV's p05 .. p95 columns (with `prefix`, e.g. 'garch_'), or None."""
    cols = [prefix + c for c in QUANTILE_COLUMNS]
    return cols if set(cols) <= set(df.columns) else None


def fan_chart_figure(df: pd.DataFrame, *, title: str, last_n: int = FAN_LAST_N):
    """The last `last_n` test candles: the model's 50 / 80 / 90 % bands (p25-p75, p10-p90,
    p05-p95) and median, the realised closes (red where outside the 80 % band), and GARCH's
    and HAR's 80 % bands as dashed lines when the CSV has their p10 / p90 columns."""
    d = df.tail(last_n)
    t = utc_times(d["open_time"])
    fig, ax = new_figure(9.0, 3.8)
    for lo, hi, alpha, label in (("p05", "p95", 0.15, "90 %"), ("p10", "p90", 0.25, "80 %"),
                                 ("p25", "p75", 0.4, "50 %")):
        ax.fill_between(t, d[lo], d[hi], step="mid", color="tab:blue", alpha=alpha, lw=0,
                        label=f"{label} interval")
    ax.plot(t, d["p50"], color="tab:blue", lw=0.8, label="median (p50)")
    for name in ("garch", "har"):
        if quantile_columns(d, f"{name}_"):
            for c in (f"{name}_p10", f"{name}_p90"):
                ax.plot(t, d[c], color=COLORS[name], lw=0.8, ls="--",
                        label=f"{LABELS[name]} 80 % interval" if c.endswith("p10") else None)
    y = d["actual_close"].to_numpy()
    miss = (y < d["p10"].to_numpy()) | (y > d["p90"].to_numpy())
    ax.plot(t, y, color="black", lw=0.7, label="realised close")
    ax.plot(t[~miss], y[~miss], "o", ms=1.8, color="black")
    ax.plot(t[miss], y[miss], "o", ms=3.0, color="tab:red",
            label=f"outside the 80 % interval ({int(miss.sum())} of {len(y)})")
    ax.set(ylabel="close", title=title)
    ax.legend(fontsize=7, ncols=2)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return fig


def coverage_figure(entries: dict[str, dict], *, title: str):
    """Coverage of the 50 / 80 / 90 % intervals per pair against the nominal share: one dot
    per pair and forecast (model and each baseline), the nominal as the dashed diagonal."""
    fig, ax = new_figure(7.0, 4.0)
    offsets = dict(zip(FORECASTS, (-3.0, -1.5, 0.0, 1.5, 3.0)))
    for name in FORECASTS:
        xs, ys = [], []
        for e in entries.values():
            b = forecast_block(e, name)
            for c in CENTRAL_INTERVALS if b else ():
                if (b.get("coverage") or {}).get(c) is not None:
                    xs.append(int(c) + offsets[name])
                    ys.append(100 * b["coverage"][c])
        if xs:
            ax.plot(xs, ys, "o", ms=4, alpha=0.75, color=COLORS[name], label=LABELS[name])
    # the nominal share as a segment across each level's dots (they sit at level + offset)
    levels = [int(c) for c in CENTRAL_INTERVALS]
    ax.hlines(levels, [v - 4.0 for v in levels], [v + 4.0 for v in levels], color="black",
              lw=1.0, ls="--", label="nominal")
    ax.set_xticks(levels)
    ax.set(xlabel="nominal coverage %", ylabel="test coverage %", title=title)
    ax.legend(fontsize=8)
    return fig


def pit_counts(frames, prefix: str = "") -> dict | None:
    """quantile_bin_counts of the realised close within the predicted quantile closes, summed
    over the frames that have the columns (rows with a missing quantile left out); None when
    none has them."""
    total, got = None, None
    for df in frames:
        cols = quantile_columns(df, prefix)
        if not cols:
            continue
        d = df.dropna(subset=cols + ["actual_close"])
        got = quantile_bin_counts(d["actual_close"].to_numpy(), d[cols].to_numpy())
        total = got["counts"] if total is None else [a + b for a, b in zip(total, got["counts"])]
    return None if got is None else dict(got, counts=total)


def pit_figure(counts: dict[str, dict], *, title: str):
    """PIT histogram over the 8 bins the 7 quantiles cut: share of realised closes per bin
    divided by the bin's width in probability, so a calibrated forecast is flat at 1."""
    fig, ax = new_figure(7.0, 3.6)
    for name, c in counts.items():
        edges = np.asarray(c["edges"])
        n = max(sum(c["counts"]), 1)
        density = np.asarray(c["counts"], float) / n / np.diff(edges)
        if name == "model":
            ax.bar(edges[:-1], density, width=np.diff(edges), align="edge", edgecolor="white",
                   color=COLORS[name], alpha=0.8, label=f"{LABELS[name]} ({n} candles)")
        else:
            ax.stairs(density, edges, color=COLORS[name], lw=1.5,
                      label=f"{LABELS[name]} ({n} candles)")
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="calibrated")
    ax.set(xlim=(0, 1), xlabel="quantile level of the realised close",
           ylabel="share / bin width", title=title)
    ax.legend(fontsize=8)
    return fig


def draw_interval_plots(entries: dict[str, dict], frames: dict[str, pd.DataFrame],
                        out_dir: Path, *, synthetic: bool) -> dict:
    """The interval PNGs into out_dir: {"coverage", "pit", (pair, "fan")} -> path, each left
    out when its blocks or columns are absent. `frames`: {pair: predictions DataFrame}."""
    plots: dict = {}
    tag = " [SYNTHETIC DATA]" if synthetic else ""
    with_blocks = {k: e for k, e in entries.items() if has_intervals(e)}
    if with_blocks:
        plots["coverage"] = save_png(coverage_figure(
            with_blocks, title="interval coverage vs. nominal (test split)" + tag),
            out_dir / "interval_coverage.png")
    counts = {name: c for name, prefix in (("model", ""), ("garch", "garch_"), ("har", "har_"))
              if (c := pit_counts(frames.values(), prefix))}
    if "model" in counts:
        n = sum(1 for df in frames.values() if quantile_columns(df))
        plots["pit"] = save_png(pit_figure(
            counts, title=f"PIT histogram, test split, {plural(n, 'pair')} pooled" + tag),
            out_dir / "interval_pit.png")
    for k, df in frames.items():
        if quantile_columns(df):
            ptag = " [SYNTHETIC DATA]" if entries.get(k, {}).get("synthetic") else ""
            plots[(k, "fan")] = save_png(fan_chart_figure(
                df, title=f"{k}: next-candle intervals, last {min(FAN_LAST_N, len(df))} test "
                          f"candles{ptag}"), out_dir / f"{k}_fan.png")
    return plots


def interval_plot_blocks(plots: dict) -> list[tuple]:
    """The across-pairs interval images ('img' blocks), those that were drawn."""
    return [("img", plots[key], cap) for key, cap in
            (("coverage", "interval coverage vs. nominal per pair"),
             ("pit", "PIT histogram of the realised closes in the predicted quantiles"))
            if key in plots]
