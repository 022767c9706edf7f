"""The model card: the README.md that step 5 publishes beside the models on the Hugging Face Hub.

    from v3_model_card import build_model_card
    text = build_model_card(results, config, repo_id="me/cpb-models", folder="v3")

It is built from the run's `results/v3_training_results.json` and `results/config.json` only:
YAML metadata, what the models are, how they were trained, a per-pair table beside the
persistence baseline, limitations, and how to load one. Deterministic (no clock), so an
unchanged run gives an unchanged card and `v3_hub.upload_to_hub` makes no new commit. The
CARD_MARKER line tells V3 that a repo's README.md is a card it wrote. No Hub calls here.
"""
from __future__ import annotations

from v3_common import INTERVAL_MS, fmt_num
from v3_layout import CONFIG_FILE, model_filename

DEFAULT_FOLDER = "v3"   # the folder in the Hub repo that holds a run's files
RESULTS_NAME = "training_results.json"   # results/v3_training_results.json, on the Hub
CONFIG_NAME = CONFIG_FILE                # results/config.json, on the Hub
CARD_MARKER = "<!-- v3-cpb-models card: written by V3's step 5 -->"
CARD_LICENSE = "mit"
CARD_COLUMNS = ["pair", "status", "MAPE %", "persistence MAPE %", "RMSE", "persistence RMSE",
                "direction %", "80 % interval coverage %", "GARCH 80 % coverage %",
                "pinball skill vs GARCH %", "pinball skill vs HAR %", "test samples", "data"]
CARD_TAGS = ["time-series-forecasting", "cryptocurrency", "lstm", "attention", "pytorch", "v3-cpb"]
_TRAIN_KEYS = [("epochs", "epochs"), ("batch_size", "batch size"),
               ("learning_rate", "learning rate"), ("weight_decay", "AdamW weight decay"),
               ("grad_accum_steps", "gradient accumulation"), ("grad_clip", "gradient clip"),
               ("patience", "early-stopping patience"), ("scheduler_t0", "cosine restarts T0"),
               ("seed", "seed")]
_SOURCE_TEXT = {"binance": "Binance spot candles",
                "binance-archive": "Binance spot candles (data.binance.vision archive)",
                "csv": "candles from CSV files",
                "synthetic": "SYNTHETIC candles (no market data)"}


def build_model_card(results: dict, config: dict | None, *, repo_id: str,
                     folder: str = DEFAULT_FOLDER, license: str = CARD_LICENSE) -> str:
    """The README.md for the Hub: YAML metadata, what the models are, how they were trained,
    a per-pair table beside the persistence baseline, limitations, and how to load one.
    Deterministic (no clock): an unchanged run gives an unchanged card, hence no new commit."""
    config = config or {}
    pairs = sorted(k for k, r in results.items() if isinstance(r, dict) and not k.startswith("_"))
    rows = [results[k] for k in pairs]
    trained = [r for r in rows if r.get("status") in ("success", "skipped") and r.get("test")]
    synthetic = any(_is_synthetic(r) for r in rows)
    example = (trained or rows or [{}])[0]
    f0 = next((r["features"] for r in rows if r.get("features")), {})
    fcfg = config.get("features") or {}
    seq_len = f0.get("seq_len", fcfg.get("seq_len", "?"))
    n_comp = f0.get("n_components", fcfg.get("n_components", "?"))
    return "\n".join([
        *_card_head(license, synthetic, n_models=len(trained)),
        *_card_intro(rows, folder, f0, seq_len, n_comp), "",
        "## How they were trained", "", *_card_training(rows, config, f0, seq_len, n_comp), "",
        *_card_results(pairs, results), "",
        *_card_limitations(synthetic), "",
        "## Load a model", "",
        *_card_snippet(repo_id, folder, example.get("symbol", "BTCUSDT"),
                       example.get("interval", "15m")), ""])


def _card_head(license: str, synthetic: bool, *, n_models: int) -> list[str]:
    """The YAML front matter, the marker, the title and (for synthetic data) the warning."""
    tags = CARD_TAGS + (["synthetic-data"] if synthetic else [])
    out = ["---", "library_name: pytorch", f"license: {license}",
           "pipeline_tag: time-series-forecasting", "tags:", *[f"- {t}" for t in tags], "---",
           CARD_MARKER, "",
           f"# V3 cryptocurrency forecasters: {n_models} BiLSTM-attention "
           f"{'model' if n_models == 1 else 'models'}", ""]
    if synthetic:
        out += ["> **Synthetic data.** Some or all of these models were trained on synthetic "
                "candles from V3's generator, not on market prices (rows marked `synthetic` "
                "below). Their metrics say nothing about real markets.", ""]
    return out


def _card_intro(rows: list[dict], folder: str, f0: dict, seq_len, n_comp) -> list[str]:
    """What the models are and which files the folder holds."""
    symbols = sorted({r["symbol"] for r in rows if r.get("symbol")})
    intervals = sorted({r["interval"] for r in rows if r.get("interval")},
                       key=lambda i: INTERVAL_MS.get(i, 0))
    coins = f"{len(symbols)} {'coin' if len(symbols) == 1 else 'coins'}"
    return [f"One PyTorch model per coin and timeframe ({coins} x "
            f"{', '.join(intervals) or '?'}). Each reads the last {seq_len} closed candles "
            f"({f0.get('n_features', '?')} technical indicators reduced to {n_comp} PCA "
            f"components) and predicts the next candle's close, as a log return from the last "
            f"close. Files in `{folder}/`: `{model_filename('SYMBOL', 'INTERVAL')}` (weights, "
            f"model config, the fitted scaler and PCA, feature names, metrics), "
            f"`{RESULTS_NAME}` (every metric of every pair) and `{CONFIG_NAME}` (the run's "
            f"configuration)."]


def _card_training(rows: list[dict], config: dict, f0: dict, seq_len, n_comp) -> list[str]:
    """The card's 'How they were trained' bullets, from the results and config.json."""
    model, train = config.get("model") or {}, config.get("train") or {}
    fcfg = config.get("features") or {}
    ev = [r["features"]["explained_variance"] for r in rows
          if (r.get("features") or {}).get("explained_variance") is not None]
    ev_text = (f", keeping {100 * min(ev):.1f}-{100 * max(ev):.1f} % of the training variance"
               if ev else "")
    scale_text = (", in units of the recent volatility: an EWMA of the last 100 squared "
                  "returns" if model.get("quantile_scale", "ewma") == "ewma" else "")
    firsts = [(r.get("data") or {}).get("first") for r in rows]
    lasts = [(r.get("data") or {}).get("last") for r in rows]
    firsts, lasts = [x for x in firsts if x], [x for x in lasts if x]
    span = f"from {min(firsts)} to {max(lasts)}" if firsts and lasts else "(range not recorded)"
    sources = sorted({(r.get("data") or {}).get("source") or config.get("source") or "?"
                      for r in rows})
    tr, va = fcfg.get("train_frac", 0.70), fcfg.get("val_frac", 0.15)
    warmup = f0.get("warmup_candles", config.get("warmup_candles", "?"))
    lstm = "bidirectional LSTM" if model.get("bidirectional", True) else "LSTM"
    pool = ("additive attention over the time steps" if model.get("use_attention", True)
            else "the last time step")
    hyper = ", ".join(f"{name} {train[key]}" for key, name in _TRAIN_KEYS if key in train)
    return [
        f"- **Data**: {', '.join(_SOURCE_TEXT.get(s, s) for s in sources)}; "
        f"{config.get('candles', '?')} latest closed candles per pair, {span}. Chronological "
        f"split {100 * tr:.0f}/{100 * va:.0f}/{100 * (1 - tr - va):.0f} (train / validation / "
        f"test); nothing is fitted on validation or test rows.",
        f"- **Features**: {f0.get('n_features', '?')} indicators per candle (returns, "
        f"moving-average distances, Bollinger Bands, RSI, MACD, ATR, stochastic, ADX, OBV, MFI, "
        f"volatility, volume ratios, candle shape) after a {warmup}-candle warm-up; standardised "
        f"and reduced by PCA to {n_comp} components{ev_text}, both fitted on the training rows "
        f"only; windows of {seq_len} candles.",
        f"- **Architecture**: input LayerNorm, {lstm} ({n_comp} -> "
        f"{model.get('hidden_size', '?')} x {model.get('num_layers', '?')} layers, dropout "
        f"{model.get('dropout', '?')}), {pool}, dense head, and a quantile head (the 5 % .. 95 % "
        f"quantiles, non-crossing{scale_text}) beside it. Target: the next candle's log "
        f"return, standardised with the training split's mean and std.",
        f"- **Training**: {hyper or 'not recorded'}."]


def _card_results(pairs: list[str], results: dict) -> list[str]:
    """The 'Results (test split)' section: one table row per pair, failed pairs included."""
    return ["## Results (test split)", "",
            "Persistence is the naive baseline \"next close = last close\", scored on the same "
            "test samples. MAPE and directional accuracy are percentages; directional accuracy "
            "counts the samples whose actual move is not zero (an honest coin flip scores 50 %). "
            "The 80 % interval of the next close (the quantile head) should cover 80 % of the "
            "test candles; beside it GARCH(1,1)-t, the field's standard, fitted on the training "
            "split only; pinball skill > 0 means a better interval forecast than GARCH's, and "
            "than HAR's (a regression on the candles' ranges and the clock, also fitted on the "
            "training split).",
            "", "| " + " | ".join(CARD_COLUMNS) + " |", "|" + "---|" * len(CARD_COLUMNS),
            *["| " + " | ".join(_card_row(k, results[k])) + " |" for k in pairs]]


def _card_row(key: str, r: dict) -> list[str]:
    t = r.get("test") or {}
    b = (r.get("baseline") or {}).get("persistence") or {}
    source = "synthetic" if _is_synthetic(r) else ((r.get("data") or {}).get("source") or "-")
    iv = t.get("interval") or {}
    garch = ((r.get("baseline") or {}).get("garch") or {}).get("interval") or {}
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return [key, str(r.get("status", "-")), fmt_num(t.get("mape"), ".4f"),
            fmt_num(b.get("mape"), ".4f"), fmt_num(t.get("rmse"), ".6g"),
            fmt_num(b.get("rmse"), ".6g"), fmt_num(t.get("directional_accuracy"), ".1f"),
            fmt_num(pct((iv.get("coverage") or {}).get("80")), ".1f"),
            fmt_num(pct((garch.get("coverage") or {}).get("80")), ".1f"),
            fmt_num(pct((iv.get("skill") or {}).get("garch")), "+.2f"),
            fmt_num(pct((iv.get("skill") or {}).get("har")), "+.2f"),
            fmt_num(t.get("n"), "d"), source]


def _card_limitations(synthetic: bool) -> list[str]:
    return ["## Limitations", "",
            "- **Not financial advice.** These are research models; do not trade with them.",
            "- Read every metric next to the persistence baseline beside it. On real market data "
            "next-candle forecasts are rarely much better than persistence, and directional "
            "accuracy near 50 % is what honest results look like; far better numbers usually "
            "mean a leak.",
            "- The test window is short and recent; market regimes change and the models know "
            "nothing but past candles.",
            *(["- Rows marked `synthetic` were trained and scored on synthetic candles, not on "
               "market prices."] if synthetic else [])]


def _card_snippet(repo_id: str, folder: str, symbol: str, interval: str) -> list[str]:
    """The card's code: with V3's loader, and with torch + huggingface_hub alone."""
    filename = f"{folder}/{model_filename(symbol, interval)}"
    return ["With the V3 code (`v3_hub.py` and the modules it imports):", "", "```python",
            "from v3_hub import load_model_from_hub",
            f'm = load_model_from_hub("{repo_id}", "{symbol}", "{interval}", folder="{folder}")',
            "m.model      # torch.nn.Module in eval mode, on the CPU",
            "m.transform  # the training scaler + PCA: indicator rows -> model inputs",
            "```", "", "With torch and huggingface_hub alone:", "", "```python", "import torch",
            "from huggingface_hub import hf_hub_download",
            f'path = hf_hub_download("{repo_id}", "{filename}")',
            'ckpt = torch.load(path, map_location="cpu", weights_only=True)',
            'print(ckpt["model_config"], ckpt["seq_len"], ckpt["test"], ckpt["baseline"])',
            "```"]


def _is_synthetic(r: dict) -> bool:
    return bool(r.get("synthetic") or (r.get("data") or {}).get("synthetic"))
