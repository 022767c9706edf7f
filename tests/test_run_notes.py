"""v3_run_notes: the results table's notes and the one line on the intervals (issue 21)."""
from __future__ import annotations

from pathlib import Path

from v3_results import log_summary
from v3_run_notes import data_rejected_note, interval_line, pair_note, still_refused


def test_a_refused_download_is_the_note_of_a_pair_that_kept_its_model(caplog):
    caplog.set_level("INFO", logger="v3")
    entry = {"status": "skipped", "skip_reason": "already trained: all 5 epochs (best 1)",
             "data_rejected": {"step": "download",
                               "reason": "/data/in/BTCUSDT_1h.csv: NaN or inf in ['close']"}}
    assert pair_note(entry) == ("earlier model kept; new candles failed download: "
                                "BTCUSDT_1h.csv: NaN or inf in ['close']")
    assert pair_note({"skip_reason": "already trained"}) == "already trained"
    assert data_rejected_note({"status": "success"}) == ""
    log_summary({"BTCUSDT_1h": entry}, [("BTCUSDT", "1h")], Path("results.json"))
    assert caplog.records[-1].getMessage().splitlines()[2] == (
        "BTCUSDT_1h  skipped  -       -           -          -      earlier model kept; new "
        "candles failed download: BTCUSDT_1h.csv: NaN or inf in ['close']")
    # step 3 accepting the earlier file does not undo a refused download; its own refusal goes
    assert still_refused(entry, "preprocess") == entry["data_rejected"]
    assert still_refused({"data_rejected": {"step": "preprocess"}}, "preprocess") is None


def test_the_interval_line_gives_coverage_and_skill_against_garch_and_har():
    s = {"n_pairs": 4, "significance": {"alpha": 0.05},
         "median_coverage": {"model": {"80": 0.8028}},
         "coverage_rejected": {"80": {"model": {"count": 1}}},
         "median_skill": {"rolling": 0.01, "garch": -0.0278, "har": 0.0031},
         "beat_garch": {"count": 0}, "beat_har": {"count": 2}}
    assert interval_line(s) == (
        "intervals (test split, 4 pairs): the 80 % range held on 80.3 % of the candles "
        "(median; binomial test rejects 1 of 4); median pinball skill vs GARCH -2.78 % "
        "(significantly better on 0 of 4), vs HAR +0.31 % (significantly better on 2 of 4) "
        "(Holm, p < 0.05); details in the report")
    assert interval_line(None) is None and interval_line({"n_pairs": 0}) is None
