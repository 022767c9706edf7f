"""v3_model_card: the Hub README built from the results and the config, without the Hub."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from v3_model_card import CARD_COLUMNS, CARD_MARKER, build_model_card

ROOT = Path(__file__).resolve().parents[1]


def parse_card(text: str) -> tuple[dict, dict[str, dict[str, str]]]:
    """(YAML metadata, {pair: {column: cell}}) of a model card."""
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "no YAML front matter"
    meta = yaml.safe_load(m.group(1))
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return meta, rows


def one_pair(**test) -> dict:
    return {"SOLUSDT_1h": {
        "symbol": "SOLUSDT", "interval": "1h", "status": "success",
        "test": {"mape": 0.5, "rmse": 0.01, "directional_accuracy": 51.0, "n": 100, **test},
        "baseline": {"persistence": {"mape": 0.49, "rmse": 0.011}},
        "features": {"seq_len": 60, "n_components": 30, "n_features": 60},
        "data": {"source": "binance", "first": "2025-01-01", "last": "2025-02-01"}}}


def test_card_table_lists_failed_pairs_without_metrics():
    results = {"ETHUSDT_1h": {"symbol": "ETHUSDT", "interval": "1h", "status": "failed",
                              "reason": "no data", "data": {"source": "binance"}}}
    card = build_model_card(results, None, repo_id="a/b")
    meta, rows = parse_card(card)
    assert list(rows["ETHUSDT_1h"].values())[1:] == ["failed"] + ["-"] * 10 + ["binance"]
    assert len(CARD_COLUMNS) == len(rows["ETHUSDT_1h"])
    assert "synthetic-data" not in meta["tags"] and "Synthetic data" not in card
    assert "# V3 cryptocurrency forecasters: 0 BiLSTM-attention models" in card


def test_card_shows_the_interval_next_to_garch():
    results = one_pair()
    r = next(iter(results.values()))
    r["test"]["interval"] = {"coverage": {"80": 0.784}, "skill": {"garch": -0.012, "har": 0.004}}
    r["baseline"] = dict(r.get("baseline") or {}, garch={"interval": {"coverage": {"80": 0.801}}})
    card = build_model_card(results, None, repo_id="a/b")
    row = next(iter(parse_card(card)[1].values()))
    assert (row["80 % interval coverage %"], row["GARCH 80 % coverage %"],
            row["pinball skill vs GARCH %"], row["pinball skill vs HAR %"]) == (
        "78.4", "80.1", "-1.20", "+0.40")
    assert "quantile head" in card and "GARCH(1,1)-t" in card


def test_one_model_reads_in_the_singular():
    card = build_model_card(one_pair(), {"candles": 3000}, repo_id="me/m")
    assert "# V3 cryptocurrency forecasters: 1 BiLSTM-attention model\n" in card
    assert "(1 coin x 1h)" in card and "1 coins" not in card and "1 models" not in card


def test_card_is_deterministic_and_marked():
    results = one_pair()
    a = build_model_card(results, {"train": {"epochs": 5}}, repo_id="me/m", folder="v3")
    b = build_model_card(dict(results), {"train": {"epochs": 5}}, repo_id="me/m", folder="v3")
    assert a == b and CARD_MARKER in a
    assert "`v3/`" in a and "v3_model_SYMBOL_INTERVAL.pt" in a and "epochs 5" in a
    assert 'hf_hub_download("me/m", "v3/v3_model_SOLUSDT_1h.pt")' in a


def test_no_negative_zero_in_the_table():
    _, rows = parse_card(build_model_card(one_pair(rmse=-0.0, mape=-0.0), None, repo_id="a/b"))
    assert rows["SOLUSDT_1h"]["MAPE %"] == "0.0000" and rows["SOLUSDT_1h"]["RMSE"] == "0"


def test_synthetic_rows_are_tagged_and_warned():
    results = one_pair()
    results["SOLUSDT_1h"]["data"]["synthetic"] = True
    card = build_model_card(results, None, repo_id="a/b")
    meta, rows = parse_card(card)
    assert "synthetic-data" in meta["tags"] and "**Synthetic data.**" in card
    assert rows["SOLUSDT_1h"]["data"] == "synthetic"


def test_the_card_needs_neither_the_hub_code_nor_torch():
    code = ("import sys, v3_model_card; bad = [m for m in ('v3_hub', 'torch', 'huggingface_hub') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
