"""The evaluation inside the pipeline and the report: results JSON fields, walk-forward folds,
report.md / report.html with every section and image, --report-only, bad input."""
from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_config
from v3_colab_training import V3CoLabPipeline, main
from v3_intervals import INTERVAL_BASELINES
from v3_metrics import BASELINES, METRIC_FIELDS, forecast_metrics, naive_mae
from v3_report import summary_sentences

PAIRS = ["BTCUSDT_15m", "BTCUSDT_1h"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A demo-sized run: 1 coin x 2 timeframes of synthetic candles, a tiny model, 2 epochs,
    2 walk-forward folds; step 4 ends with the report."""
    base = tmp_path_factory.mktemp("report")
    p = V3CoLabPipeline(base, config=tiny_config(walk_forward=2), coins=["BTCUSDT"],
                        timeframes=["15m", "1h"])
    p.step_2_download_binance_data()
    p.step_3_preprocess_features()
    results = p.step_4_train_models()
    return p, results


def test_results_hold_every_baseline_with_the_test_fields(run):
    _, results = run
    for key in PAIRS:
        r = results[key]
        assert set(r["test"]) == set(METRIC_FIELDS)
        assert set(r["baseline"]) == set(BASELINES) | set(INTERVAL_BASELINES)
        for name in BASELINES:
            assert set(r["baseline"][name]) == set(r["test"]), name
            assert r["baseline"][name]["n"] == r["test"]["n"] == r["splits"]["test"]
        assert r["baseline"]["persistence"]["skill"] == 0.0
        assert r["tuning"]["linear"]["alpha"] > 0
        for mode in ("long_flat", "long_short", "buy_and_hold"):
            assert {"total_return", "sharpe", "max_drawdown", "trades"} <= set(r["backtest"][mode])
        assert r["backtest"]["fee_per_side"] == 0.001


def test_model_metrics_recomputed_from_the_predictions_csv(run):
    p, results = run
    for key in PAIRS:
        df = pd.read_csv(p.base_dir / "results" / "predictions" / f"{key}.csv")
        r = results[key]
        m = forecast_metrics(df.actual_close.to_numpy(), df.predicted_close.to_numpy(),
                             df.last_close.to_numpy(), mase_scale=r["mase_scale"])
        for f in ("mape", "mase", "skill", "directional_accuracy", "dm_p_value", "direction_p_value"):
            assert m[f] == pytest.approx(r["test"][f], rel=1e-9), f


def test_mase_scale_is_the_training_naive_mae(run):
    from v3_data_processor import PreparedData
    p, results = run
    data = PreparedData.load(p.processed_path("BTCUSDT", "1h"))
    tr = data.split("train")
    assert results["BTCUSDT_1h"]["mase_scale"] == pytest.approx(
        naive_mae(data.last_close[tr], data.actual_close[tr]))


def test_summary_across_pairs_in_the_results_json(run):
    p, _ = run
    on_disk = json.loads(p.results_path.read_text())
    s = on_disk["_summary"]
    assert s["n_pairs"] == 2 and s["pairs"] == PAIRS and s["synthetic"] is True
    assert s["significance"]["correction"] == "holm"
    skills = [on_disk[k]["test"]["skill"] for k in PAIRS]
    assert s["median_skill"]["model"] == pytest.approx(float(np.median(skills)))
    d = s["directional_accuracy"]
    accs = [on_disk[k]["test"]["directional_accuracy"] for k in PAIRS]
    assert (d["min"], d["max"]) == (min(accs), max(accs))
    assert 0 <= s["beat_persistence"]["count"] <= 2


def test_walk_forward_folds_and_pooled(run):
    p, results = run
    for key in PAIRS:
        wf = results[key]["walk_forward"]
        assert wf["status"] == "success" and wf["k"] == 2 and len(wf["folds"]) == 2
        f1, f2 = wf["folds"]
        assert f1["train_last_open_time"] < f1["test_first_open_time"]
        assert f2["train_last_open_time"] < f2["test_first_open_time"]
        assert f1["test_last_open_time"] < f2["test_first_open_time"]  # test blocks move forward
        assert f2["n_train"] > f1["n_train"]                            # the window expands
        pooled = wf["pooled"]
        assert pooled["test"]["n"] == f1["n_test"] + f2["n_test"]
        assert set(pooled["baseline"]) == set(BASELINES) | set(INTERVAL_BASELINES)
        assert set(pooled["test"]) == set(METRIC_FIELDS)
        for f in (f1, f2):
            assert (p.base_dir / f["predictions_path"]).exists()
    # the last fold tests exactly the main model's test samples
    main_df = pd.read_csv(p.base_dir / "results" / "predictions" / "BTCUSDT_1h.csv")
    last_fold = pd.read_csv(p.base_dir / results["BTCUSDT_1h"]["walk_forward"]["folds"][1]
                            ["predictions_path"])
    assert np.array_equal(main_df.open_time, last_fold.open_time)


def test_walk_forward_rerun_keeps_finished_folds(run, caplog):
    p, _ = run
    caplog.set_level("INFO", logger="v3")
    p.step_4_walk_forward(2)
    assert "BTCUSDT_15m: walk-forward fold 1/2 already done" in caplog.text
    assert "BTCUSDT_1h: walk-forward fold 2/2 already done" in caplog.text


def test_report_has_every_section_and_image(run):
    p, results = run
    md = (p.results_dir / "report.md").read_text()
    page = (p.results_dir / "report.html").read_text()
    for section in ("# V3 evaluation report", "## Summary", "## Test metrics per pair",
                    "## Every forecast on every pair", "## Backtest of the predicted direction",
                    "## Walk-forward", "## Across pairs", "## Per pair", "## Definitions"):
        assert section in md, section
        assert re.search(rf"<h[123]>{re.escape(section.lstrip('# '))}", page), section
    assert "SYNTHETIC DATA" in md and "SYNTHETIC DATA" in page
    # the plain verdict on top, before any table
    verdict = md.index("beat persistence")
    assert verdict < md.index("| pair")
    images = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    expected = {"plots/skill.png", "plots/direction.png"} | {
        f"plots/{k}_{kind}.png" for k in PAIRS for kind in ("curves", "predictions", "equity")}
    assert set(images) == expected
    for rel in images:
        assert (p.results_dir / rel).read_bytes().startswith(PNG_MAGIC)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(expected)
    assert all(base64.b64decode(e).startswith(PNG_MAGIC) for e in embedded)
    assert "plots/" not in page  # self-contained
    # numbers in the report come from the results JSON
    for k in PAIRS:
        assert f"{results[k]['test']['mape']:.4f}" in md
        assert f"{results[k]['test']['skill']:+.4f}" in md


def test_report_only_rescores_and_rewrites(run, caplog):
    p, _ = run
    caplog.set_level("INFO", logger="v3")
    (p.results_dir / "report.md").unlink()
    (p.results_dir / "report.html").unlink()
    # an entry as an older V3 wrote it: only the plain metrics
    results = json.loads(p.results_path.read_text())
    before = results["BTCUSDT_1h"]["test"]
    for f in ("backtest", "mase_scale", "tuning"):
        results["BTCUSDT_1h"].pop(f)
    results["BTCUSDT_1h"]["baseline"] = {"persistence": {"mape": 1.0}}
    p.results_path.write_text(json.dumps(results))
    rc = main(["--report-only", "--base-dir", str(p.base_dir), "--source", "synthetic",
               "--no-progress", "--fee-per-side", "0.002"])
    assert rc == 0
    assert "re-scored 2 pairs from their saved models" in caplog.text
    after = json.loads(p.results_path.read_text())
    assert after["BTCUSDT_1h"]["test"] == pytest.approx(before)  # same model, same numbers
    assert set(after["BTCUSDT_1h"]["baseline"]) == set(BASELINES) | set(INTERVAL_BASELINES)
    assert after["BTCUSDT_1h"]["backtest"]["fee_per_side"] == 0.002
    assert "Fee 0.2 % per side" in (p.results_dir / "report.md").read_text()
    assert (p.results_dir / "report.html").exists()


def test_an_unreadable_model_does_not_stop_the_report(run, caplog):
    p, _ = run
    caplog.set_level("INFO", logger="v3")
    path = p.model_path("BTCUSDT", "15m")
    good = path.read_bytes()
    try:
        path.write_bytes(b"not a checkpoint")
        summary = p.write_report(rescore=True)
    finally:
        path.write_bytes(good)
    assert "BTCUSDT_15m: not re-scored: CheckpointError" in caplog.text
    assert "re-scored 1 pair from their saved models" in caplog.text
    assert summary["n_pairs"] == 2  # the pair keeps its earlier numbers in the report
    assert "BTCUSDT_15m" in (p.results_dir / "report.md").read_text()


def test_rescoring_to_the_same_numbers_leaves_the_model_files_alone(tmp_path):
    """--report-only with nothing changed must not hand step 5 forty 'new' model files."""
    p = V3CoLabPipeline(tmp_path, config=tiny_config(), coins=["BTCUSDT"], timeframes=["1h"])
    p.step_2_download_binance_data()
    p.step_4_train_models()
    path = p.model_path("BTCUSDT", "1h")
    before = path.read_bytes()
    assert p.rescore_pairs() and path.read_bytes() == before
    # a checkpoint whose numbers differ from the re-scored ones is still brought in step
    import torch
    from v3_trainer import load_checkpoint
    ckpt = load_checkpoint(path)
    ckpt["test"] = dict(ckpt["test"], mape=-1.0)
    torch.save(ckpt, path)
    p.rescore_pairs()
    assert load_checkpoint(path)["test"] == p.load_results()["BTCUSDT_1h"]["test"]


def test_walk_forward_uses_the_candles_step_3_uses(tmp_path):
    """A data file grown by incremental downloads: walk-forward, like step 3, takes the
    latest `candles` rows, so its last fold tests exactly the model's test split."""
    from v3_data_processor import PreparedData
    from v3_market_data import data_path, synthetic_klines, write_klines
    p = V3CoLabPipeline(tmp_path, config=tiny_config(candles=700), coins=["BTCUSDT"],
                        timeframes=["1h"])
    write_klines(synthetic_klines("BTCUSDT", "1h", 900), data_path(p.data_dir, "BTCUSDT", "1h"))
    p.step_3_preprocess_features()
    wf = p.step_4_walk_forward(2)["BTCUSDT_1h"]
    data = PreparedData.load(p.processed_path("BTCUSDT", "1h"))
    last = pd.read_csv(tmp_path / wf["folds"][-1]["predictions_path"])
    assert np.array_equal(last.open_time, data.target_open_time[data.split("test")])


def test_walk_forward_failure_is_recorded_and_others_go_on(tmp_path, caplog):
    caplog.set_level("INFO", logger="v3")
    p = V3CoLabPipeline(tmp_path, config=tiny_config(candles=700), coins=["BTCUSDT"],
                        timeframes=["1h"])
    p.step_2_download_binance_data()
    out = p.step_4_walk_forward(50)
    assert out == {}
    r = p.load_results()["BTCUSDT_1h"]
    assert r["walk_forward"]["status"] == "failed"
    assert "Use fewer folds" in r["walk_forward"]["reason"]
    assert r["status"] == "downloaded"  # the pair itself is not marked failed
    assert "BTCUSDT 1h: walk-forward failed: walk-forward with 50 folds" in caplog.text


@pytest.mark.parametrize("argv,message", [
    (["--fee-per-side", "1"], "fee_per_side=1.0 must be a fraction"),
    (["--walk-forward", "-2"], "walk_forward=-2 must be a number of folds"),
])
def test_bad_evaluation_options_are_named_errors(tmp_path, caplog, argv, message):
    rc = main(["--demo", "--base-dir", str(tmp_path), "--no-progress"] + argv)
    assert rc == 2
    assert message in caplog.text


def test_report_with_nothing_trained_says_so(tmp_path):
    p = V3CoLabPipeline(tmp_path, config=tiny_config(), coins=["BTCUSDT"], timeframes=["1h"])
    summary = p.write_report()
    assert summary["n_pairs"] == 0
    assert "No pair has test results yet" in (tmp_path / "results" / "report.md").read_text()


def test_summary_sentences_say_no_plainly():
    s = {"n_pairs": 8, "beat_persistence": {"count": 0}, "worse_than_persistence": {"count": 3},
         "median_skill": {"model": -0.01, "linear": -0.002, "drift": -0.0005},
         "significance": {"alpha": 0.05, "correction": "holm"},
         "directional_accuracy": {"min": 47.0, "median": 50.5, "max": 53.0,
                                  "above_50_significant": {"count": 0}}}
    text = " ".join(summary_sentences(s))
    assert text.startswith("**No: the models do not beat persistence**")
    assert "None of the 8 pairs" in text and "3 of 8 are significantly worse" in text
    assert "median 50.5 % (min 47.0 %, max 53.0 %)" in text
    s["guide_targets"] = {"mape_below_0.02_pct": 0, "direction_above_90_pct": 0}
    assert "MAPE < 0.02 % is met on 0 of 8 pairs" in " ".join(summary_sentences(s))
    s["backtest"] = {"median_total_return": {"long_flat": 0.0, "long_short": 0.06,
                                             "buy_and_hold": -0.06},
                     "long_flat_beats_buy_and_hold": 6, "long_short_beats_buy_and_hold": 6,
                     "median_trades": {"long_flat": 2, "long_short": 3},
                     "median_long_flat_exposure": 0.1, "n_pairs": 8}
    text = " ".join(summary_sentences(s))
    assert "long/flat beat buy-and-hold on 6 of 8 pairs" in text
    assert "median 2 trades long/flat, 3 long/short" in text
    assert "mostly one bet on the trend of the test period" in text


# ---------------------------------------------------------------------------------------
# What the report must say truthfully (issue 12), on the demo run's results


def _report_md(results: dict) -> str:
    from v3_report import build_blocks, to_markdown
    return to_markdown(build_blocks(results, {}), rel_to=Path("."))


def _results(run) -> dict:
    p, _ = run
    return copy.deepcopy(p.load_results())


def test_learning_curves_reference_is_the_mean_forecast_loss_with_integer_epochs():
    from v3_report import learning_curves_figure
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.6 + 0.01 * e} for e in (1, 2, 3)]
    fig = learning_curves_figure(history, title="t", mean_forecast_loss=0.58)
    ax = fig.axes[0]
    ref = [ln for ln in ax.get_lines() if ln.get_label().startswith("predicting the training mean")]
    assert len(ref) == 1 and list(ref[0].get_ydata()) == [0.58, 0.58]
    assert not any("1.0 = training mean" in ln.get_label() for ln in ax.get_lines())
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # older results have no val_loss_mean_forecast: no reference line rather than a wrong one
    old = learning_curves_figure(history, title="t").axes[0]
    assert [ln.get_label() for ln in old.get_lines()] == ["train", "validation", "best epoch 1"]


def test_draw_plots_passes_the_stored_mean_forecast_loss(run, monkeypatch, tmp_path):
    import v3_report
    p, _ = run
    results = _results(run)
    results["BTCUSDT_1h"]["val_loss_mean_forecast"] = 0.58
    results["BTCUSDT_15m"].pop("val_loss_mean_forecast", None)  # results of an older V3
    seen = {}

    def fake_curves(history, path, *, title, mean_forecast_loss=None):
        seen[title.split(":")[0]] = mean_forecast_loss
        return path
    monkeypatch.setattr(v3_report, "plot_learning_curves", fake_curves)
    monkeypatch.setattr(v3_report, "plot_predictions", lambda *a, **k: None)
    monkeypatch.setattr(v3_report, "plot_equity", lambda *a, **k: None)
    v3_report.draw_plots(p.base_dir, results)
    assert seen == {"BTCUSDT_15m": None, "BTCUSDT_1h": 0.58}


def test_direction_histogram_is_marked_synthetic_with_integer_counts(run):
    from v3_metrics import summarize_pairs
    from v3_report import direction_figure
    results = _results(run)
    entries = {k: results[k] for k in PAIRS}
    entries["BTCUSDT_1h"]["test"].update(constant_direction=True, up_share=0.0, sign_changes=0)
    summary = summarize_pairs(entries)
    fig = direction_figure(entries, summary, title="directional accuracy [SYNTHETIC DATA]")
    ax, hx = fig.axes
    assert hx.get_title() == "distribution over pairs [SYNTHETIC DATA]"
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in hx.get_yticks())
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["BTCUSDT_15m", "BTCUSDT_1h (one direction)"]


def test_constant_direction_pair_is_flagged_and_not_counted_as_significant(run):
    from v3_metrics import summarize_pairs
    results = _results(run)
    t = results["BTCUSDT_1h"]["test"]
    # one direction on every test candle, and a tiny p-value that only reflects the base rate
    t.update(constant_direction=True, up_share=0.0, sign_changes=0, directional_accuracy=70.0,
             direction_p_value=1e-6)
    results["_summary"] = summarize_pairs({k: results[k] for k in PAIRS})
    d = results["_summary"]["directional_accuracy"]
    assert d["above_50_significant"]["count"] == 0 and d["constant_direction"]["pairs"] == ["BTCUSDT_1h"]
    md = _report_md(results)
    row = next(line for line in md.splitlines() if line.startswith("| BTCUSDT_1h | synthetic"))
    assert "always 'down': direction % = base rate" in row and "< 0.0001" not in row
    assert "1 pair (BTCUSDT_1h) forecast one direction on every test candle" in md
    lstm = next(line for line in md.splitlines() if line.startswith("| BTCUSDT_1h | LSTM"))
    assert "| 0.0 | 0 |" in lstm  # up % and sign changes


def test_failed_pairs_are_listed_with_their_reason(run):
    results = _results(run)
    results["ETHUSDT_1h"] = {"symbol": "ETHUSDT", "interval": "1h", "status": "failed",
                             "failed_step": "download", "reason": "ETHUSDT is delisted or halted"}
    md = _report_md(results)
    assert "## Pairs that failed" in md
    assert "| ETHUSDT_1h | download | ETHUSDT is delisted or halted |" in md
    assert "1 pair failed and is not in these numbers" in md
    only_failed = {"ETHUSDT_1h": results["ETHUSDT_1h"], "_summary": {"n_pairs": 0}}
    md = _report_md(only_failed)
    assert "the 1 pair failed; the reasons are under \"Pairs that failed\"" in md
    assert "train first" not in md


def test_linear_penalty_at_the_edge_reads_as_drift(run):
    results = _results(run)
    for k in PAIRS:
        results[k]["tuning"]["linear"].update(alpha=1e8, at_largest_alpha=True, at_grid_edge=True)
    results["BTCUSDT_15m"]["tuning"]["linear"].update(alpha=10.0, at_largest_alpha=False,
                                                      at_grid_edge=False)
    md = _report_md(results)
    assert "BTCUSDT_1h 1e+08 (= drift: largest penalty tried)" in md
    assert "BTCUSDT_15m 10," in md or "BTCUSDT_15m 10)" in md
    lin = {k: next(l for l in md.splitlines() if l.startswith(f"| {k} | linear")) for k in PAIRS}
    assert "= drift: largest penalty tried" in lin["BTCUSDT_1h"]
    assert "drift: largest" not in lin["BTCUSDT_15m"]


def _backtest_summary(change: float, n_pairs: int = 1) -> dict:
    return {"n_pairs": n_pairs, "beat_persistence": {"count": 0},
            "worse_than_persistence": {"count": 0},
            "median_skill": {"model": -1e-6, "linear": 0.0, "drift": 0.0},
            "significance": {"alpha": 0.05, "correction": "holm"},
            "directional_accuracy": {"min": 50.0, "median": 50.0, "max": 50.0,
                                     "above_50_significant": {"count": 0}},
            "backtest": {"median_total_return": {"long_flat": 0.0, "long_short": 0.0,
                                                 "buy_and_hold": change},
                         "long_flat_beats_buy_and_hold": 0, "long_short_beats_buy_and_hold": 0,
                         "median_trades": {"long_flat": 1, "long_short": 1},
                         "median_long_flat_exposure": 0.5, "n_pairs": n_pairs,
                         "test_market": {"median_change": change, "median_up_share": 52.0,
                                         "rose": int(change > 0), "fell": int(change < 0),
                                         "n_pairs": n_pairs}}}


def test_a_rising_market_is_not_called_falling():
    text = " ".join(summary_sentences(_backtest_summary(0.032)))
    assert "the test market rose 3.2 % (up on 52 % of candles)" in text
    assert "falling market" not in text
    text = " ".join(summary_sentences(_backtest_summary(-0.05)))
    assert "the test market fell 5.0 %" in text
    assert "a falling market rewards a forecast that is always 'down'" in text
    old = _backtest_summary(0.032)
    del old["backtest"]["test_market"]  # results from before test_market: no claim at all
    text = " ".join(summary_sentences(old))
    assert "falling" not in text and "rising" not in text


def test_sentences_use_plurals_and_never_print_minus_zero():
    text = " ".join(summary_sentences(_backtest_summary(0.032)))
    assert "1 pairs" not in text and "1 trades" not in text
    assert "The pair does not beat it significantly" in text
    assert "median 1 trade long/flat" in text
    assert "LSTM +0.0000" in text and "-0.0000" not in text
