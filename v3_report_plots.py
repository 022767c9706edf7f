"""The report's plots: every PNG of results/plots, drawn from the results JSON and the
per-sample predictions in results/predictions/ (v3_report puts them in the document).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (v3_report_intervals'
new_figure), so pyplot's global state and the notebook's backend are never touched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import fmt_num, log
from v3_metrics import backtest_direction
from v3_report_intervals import draw_interval_plots
from v3_report_intervals import new_figure as _figure
from v3_report_intervals import save_png as _save
from v3_report_intervals import utc_times as _times

LAST_N_CANDLES = 200  # shown in the predicted vs. actual plot
SYNTHETIC_TAG = " [SYNTHETIC DATA]"  # in the title of every plot of generated candles


def _integer_ticks(axis) -> None:
    """Ticks at whole numbers only (epochs, counts of pairs)."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415  (lazy, with matplotlib's rest)
    axis.set_major_locator(MaxNLocator(integer=True))


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
        m = [entry_metrics(entries[k], name) for k in keys]
        s = np.array([as_float(x.get("skill")) for x in m])
        lo = np.array([as_float(x.get("skill_ci95_low")) for x in m])
        hi = np.array([as_float(x.get("skill_ci95_high")) for x in m])
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
    a = np.array([as_float(x.get("directional_accuracy")) for x in t])
    lo = np.array([as_float(x.get("direction_ci95_low")) for x in t])
    hi = np.array([as_float(x.get("direction_ci95_high")) for x in t])
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


def as_float(v) -> float:
    """A metric as a float, NaN when the results have none."""
    return np.nan if v is None else float(v)


def entry_metrics(entry: dict, name: str) -> dict:
    """A pair's test metrics of the model ('model') or of the baseline `name`; {} if none."""
    if name == "model":
        return entry.get("test") or {}
    return (entry.get("baseline") or {}).get(name) or {}


def report_entries(results: dict) -> dict[str, dict]:
    """The pairs of the results JSON that have test results."""
    return {k: v for k, v in results.items() if not k.startswith("_") and isinstance(v, dict)
            and v.get("status") in ("success", "skipped") and (v.get("test") or {}).get("n")}


def draw_plots(base_dir: Path, results: dict) -> dict:
    """Every PNG of the report into results/plots; {key: path}."""
    out_dir = base_dir / "results" / "plots"
    summary = results.get("_summary", {})
    entries = report_entries(results)
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
