"""The command line of `v3_colab_training.py`: its options, and nothing heavy.

This module imports only the standard library, so `python v3_colab_training.py --help` and a
mistyped option answer at once, before torch loads. `v3_colab_training.main` turns the parsed
options into a `PipelineConfig` and runs the steps.
"""
from __future__ import annotations

import argparse

SOURCES = ("binance", "binance-archive", "csv", "synthetic")
STEPS = ("setup", "download", "preprocess", "train", "upload")


def split_list(values: list[str] | None) -> list[str] | None:
    """['BTC,ETH', 'SOL'] -> ['BTC', 'ETH', 'SOL']: every list option takes spaces or commas."""
    if values is None:
        return None
    return [v for item in values for v in item.replace(",", " ").split()]


def steps_type(value: str) -> list[str]:
    """--steps train,upload (or train upload): known step names, else a usage error."""
    names = split_list([value])
    bad = [s for s in names if s not in STEPS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown step {', '.join(map(repr, bad)) or repr(value)}: use any of "
            f"{', '.join(STEPS)}, space- or comma-separated (e.g. --steps train,upload)")
    return names


def config_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """The options given, as (TrainConfig fields, PipelineConfig fields); `quantile_scale`
    among the latter is ModelConfig's, for the caller to fold into the model config."""
    train = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                               ("learning_rate", args.learning_rate), ("device", args.device),
                               ("seed", args.seed), ("engine", args.engine),
                               ("threads", args.threads), ("stop_on", args.stop_on))
             if v is not None}
    top = {k: v for k, v in (("candles", args.candles), ("source", args.source),
                             ("data_dir", args.data_dir), ("hf_repo", args.hf_repo),
                             ("hf_folder", args.hf_folder),
                             ("api_urls", split_list(args.api_urls) or None),
                             ("archive_url", args.archive_url),
                             ("download_workers", args.download_workers),
                             ("walk_forward", args.walk_forward),
                             ("fee_per_side", args.fee_per_side),
                             ("quantile_scale", args.quantile_scale)) if v is not None}
    top.update({k: True for k, v in (("hf_private", args.private), ("refresh", args.refresh)) if v})
    if args.hf_repo:
        top["upload"] = True
    if args.no_upload:
        top["upload"] = False
    if args.no_progress or args.quiet:
        top["show_progress"] = False
    return train, top


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="v3_colab_training.py",
        description="V3: download Binance candles, build indicator+PCA features, train one "
                    "BiLSTM-attention model per coin and timeframe, report metrics next to the "
                    "persistence baseline, and upload to the Hugging Face Hub.")
    _pair_and_data_options(p)
    _run_options(p)
    _training_options(p)
    return p


def _pair_and_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demo", action="store_true",
                   help="offline demo: synthetic data, BTCUSDT+ETHUSDT x 15m+1h, a small model, "
                        "5 epochs (under a minute on 2 CPU cores); no upload unless --hf-repo")
    p.add_argument("--coins", nargs="+", metavar="SYMBOL",
                   help="symbols such as BTCUSDT ETHUSDT (or BTC,ETH; any case); default: the "
                        "guide's 20")
    p.add_argument("--timeframes", nargs="+", metavar="TF", help="default: 15m 1h")
    p.add_argument("--epochs", type=int, help="default 100 (demo: 5)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--learning-rate", type=float, help="default 0.001")
    p.add_argument("--candles", type=int, help="latest closed candles per pair (default 3000)")
    p.add_argument("--source", choices=SOURCES, help="where step 2 gets candles (default binance)")
    p.add_argument("--data-dir", help="folder of SYMBOL_INTERVAL.csv[.gz] files for --source csv")
    p.add_argument("--api-urls", nargs="+", metavar="URL",
                   help="Binance API bases tried in order, space- or comma-separated (default "
                        "$V3_BINANCE_API_URLS, else https://api.binance.com/api then "
                        "https://data-api.binance.vision/api)")
    p.add_argument("--archive-url", metavar="URL",
                   help="kline archive for --source binance-archive and the fallback when every "
                        "API base is blocked (default $V3_BINANCE_ARCHIVE_URL, else "
                        "https://data.binance.vision)")
    p.add_argument("--refresh", action="store_true",
                   help="download every pair afresh instead of appending the newer candles")
    p.add_argument("--download-workers", type=int, metavar="N",
                   help="pairs downloaded at once (1-16, default 4)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-dir", help="output folder (default /content in Colab, else ./v3_output;"
                                      " or $V3_BASE_DIR)")
    p.add_argument("--steps", nargs="+", type=steps_type, metavar="STEP",
                   help=f"run only these steps, in order, space- or comma-separated (of: "
                        f"{', '.join(STEPS)})")
    p.add_argument("--retrain", action="store_true", help="train pairs again even if already trained")
    p.add_argument("--no-upload", action="store_true", help="skip step 5")
    p.add_argument("--hf-repo", help="Hub model repo id (default <your user>/cpb-models)")
    p.add_argument("--hf-folder", help="folder in the Hub repo (default v3)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--walk-forward", type=int, metavar="K",
                   help="also retrain each pair on K successive origins (expanding window) and "
                        "report per-fold and pooled metrics")
    p.add_argument("--fee-per-side", type=float, metavar="FRAC",
                   help="backtest fee per side as a fraction (default 0.001 = 0.1 %%)")
    p.add_argument("--wait-lock", action="store_true",
                   help="when another V3 run holds --base-dir, wait for it to finish instead of "
                        "exiting with code 2")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: re-score the saved models and rewrite results/report.md "
                        "and report.html")


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--engine", choices=("auto", "fast", "plain"),
                   help="training engine: auto (default: fast on a GPU, plain on CPU), fast "
                        "(all models trained together, CUDA graphs) or plain (one model at a time)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for training (default $V3_THREADS, else V3's measured "
                        "choice; see bench/bench_threads.py)")
    p.add_argument("--quantile-scale", choices=("ewma", "har", "none"),
                   help="the quantile head's unit: the recent EWMA volatility (default), the "
                        "HAR forecast from the candles' ranges and the clock, or none")
    p.add_argument("--stop-on", choices=("loss", "pinball", "mse"),
                   help="early stopping's validation loss: loss (default: MSE + "
                        "quantile_weight x pinball, as trained), pinball, or mse")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true",
                   help="only warnings and errors, no progress bars (errors and skipped steps "
                        "you asked for are always shown)")
