"""Benchmark: next-candle predictions for 40 pairs on the CPU, model loading included.

    python bench/bench_predict.py                 # 20 coins x 2 timeframes, the guide's model
    python bench/bench_predict.py --pairs 2 --hidden 16   # a tiny run (the tests use it)

It writes 40 checkpoints of the guide's model (BiLSTM 30->128 x3 + attention; weights as
initialised, which costs the same to run as trained ones) with a real fitted scaler + PCA,
keeps 3,000 synthetic candles per pair in memory, then times `predict_next` for every pair
from a cold start (each checkpoint read from disk with weights_only=True). Side by side, the
same work with the indicators computed on the whole 3,000-candle history instead of the
warm-up + window that predict_next uses. Goal: all 40 in under 1 s on a 2-core machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib

import torch  # noqa: E402

import benchlib  # noqa: E402

from v3_checkpoint import save_checkpoint  # noqa: E402
from v3_common import DEFAULT_COINS, INTERVAL_MS  # noqa: E402
from v3_data_processor import FeatureConfig, latest_window, prepare_dataset  # noqa: E402
from v3_layout import model_filename  # noqa: E402
from v3_lstm_model import ModelConfig, V3LSTMModel  # noqa: E402
from v3_market_data import synthetic_klines  # noqa: E402
from v3_predict import load_model, predict_next  # noqa: E402


def machine() -> str:
    return benchlib.machine(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def build(folder: Path, pairs: list[tuple[str, str]], *, candles: int, hidden: int) -> dict:
    frames = {}
    for symbol, interval in pairs:
        df = synthetic_klines(symbol, interval, candles)
        data = prepare_dataset(df, FeatureConfig(), interval=interval, name=symbol)
        cfg = ModelConfig(input_size=data.transform.n_components, hidden_size=hidden)
        torch.manual_seed(0)
        model = V3LSTMModel(cfg)
        save_checkpoint(folder / model_filename(symbol, interval),
                        model_state=model.state_dict(), model_config=cfg, data=data,
                        feature_config=FeatureConfig().to_dict(),
                        meta={"symbol": symbol, "interval": interval, "test": {}, "baseline": {}})
        frames[(symbol, interval)] = df
    return frames


def run(folder: Path, frames: dict, *, full_history: bool) -> tuple[float, list[float]]:
    per_pair = []
    t0 = time.perf_counter()
    for (symbol, interval), df in frames.items():
        t = time.perf_counter()
        now = int(df.open_time.iloc[-1]) + INTERVAL_MS[interval]
        if full_history:  # load, then the features on every candle given
            m = load_model(folder, symbol, interval)
            window, _, _ = latest_window(df, m.transform, seq_len=m.seq_len, interval=interval,
                                         now_ms=now)
            with torch.inference_mode():
                m.model(torch.from_numpy(window))
        else:
            predict_next(symbol, interval, model=folder, candles=df, now_ms=now)
        per_pair.append(time.perf_counter() - t)
    return time.perf_counter() - t0, per_pair


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=40, help="how many pairs (default 40)")
    ap.add_argument("--candles", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=128, help="LSTM hidden size (guide: 128)")
    args = ap.parse_args(argv)
    pairs = [(c, tf) for c in DEFAULT_COINS for tf in ("15m", "1h")][:args.pairs]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frames = build(folder, pairs, candles=args.candles, hidden=args.hidden)
        run(folder, dict(list(frames.items())[:1]), full_history=False)  # import/first-call warm-up
        rows = []
        for label, full in (("predict_next (warm-up + window)", False),
                            ("features on all candles", True)):
            total, per = run(folder, frames, full_history=full)
            rows.append((label, total, statistics.median(per) * 1000, max(per) * 1000))
    print(f"machine: {machine()}")
    print(f"command: python bench/bench_predict.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"{len(pairs)} pairs x {args.candles} candles in memory, model hidden {args.hidden} x 3 "
          f"layers, checkpoints loaded from disk\n")
    print(f"{'method':34} {'total s':>8} {'median ms/pair':>15} {'max ms/pair':>12}")
    for label, total, med, mx in rows:
        print(f"{label:34} {total:8.3f} {med:15.1f} {mx:12.1f}")


if __name__ == "__main__":
    main()
