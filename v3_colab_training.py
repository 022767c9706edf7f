"""The V3 pipeline: five steps, each re-runnable alone, all state kept in `base_dir`.

    from v3_colab_training import V3CoLabPipeline
    p = V3CoLabPipeline()                    # base_dir: /content in Colab, ./v3_output elsewhere
    p.COINS = ["BTCUSDT", "ETHUSDT"]         # optional subset of the guide's 20 coins
    p.run_full_pipeline(epochs=100, batch_size=32, learning_rate=0.001)

Steps: 1 setup, 2 download (binance | csv | synthetic), 3 indicators + PCA, 4 training,
5 Hugging Face upload. Outputs (see README): data/SYMBOL_INTERVAL.csv,
all_models/v3_model_SYMBOL_INTERVAL.pt, results/v3_training_results.json,
results/predictions/SYMBOL_INTERVAL.csv, results/config.json, and (end of step 4)
results/report.md + report.html with results/plots/*.png.

Command line: `python v3_colab_training.py --help`; `--demo` runs offline in under a minute.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from v3_common import (DEFAULT_COINS, DEFAULT_TIMEFRAMES, ConfigError, V3Error, atomic_write_bytes,
                       atomic_write_json, json_default, utc_minute,
                       check_interval, default_base_dir, log, normalize_symbol, pair_key, progress,
                       read_json, setup_logging)
from v3_data_processor import (WARMUP_CANDLES, FeatureConfig, PreparedData, check_feature_config,
                               prepare_dataset)
from v3_lstm_model import ModelConfig
from v3_trainer import TrainConfig, check_train_config

SOURCES = ("binance", "binance-archive", "csv", "synthetic")
STEPS = ("setup", "download", "preprocess", "train", "upload")
RESULTS_FILE = "v3_training_results.json"
RENAMES_FILE = "symbol_renames.json"  # in data/: requested -> traded symbol (MATICUSDT -> POLUSDT)


@dataclass
class PipelineConfig:
    """Everything a run depends on; written to results/config.json and into every checkpoint."""
    candles: int = 3000               # latest closed candles per pair
    source: str = "binance"           # 'binance', 'binance-archive', 'csv' or 'synthetic'
    data_dir: str | None = None       # the folder of SYMBOL_INTERVAL.csv[.gz] for source 'csv'
    api_urls: list[str] | None = None  # Binance API bases in order; None: $V3_BINANCE_API_URLS,
                                       # else api.binance.com, then data-api.binance.vision
    archive_url: str | None = None    # kline archive; None: $V3_BINANCE_ARCHIVE_URL or data.binance.vision
    refresh: bool = False             # step 2 downloads afresh instead of appending newer candles
    download_workers: int = 4         # pairs downloaded at once
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hf_repo: str | None = None        # default '<your user>/cpb-models'
    hf_folder: str = "v3"             # folder in the repo for models, results, config
    hf_private: bool = False          # create the repo as private (an existing repo keeps its setting)
    upload: bool = True
    show_progress: bool = True
    preset: str = "guide"             # 'guide' or 'demo'
    fee_per_side: float = 0.001       # backtest fee per side (0.001 = 0.1 %)
    walk_forward: int = 0             # folds of the walk-forward evaluation in step 4 (0: off)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d


def demo_config() -> PipelineConfig:
    """The offline demo: synthetic candles, a small model, a few epochs (< 1 min on 2 cores)."""
    return PipelineConfig(
        candles=2000, source="synthetic", preset="demo", upload=False,
        model=ModelConfig(hidden_size=32, num_layers=2),
        train=TrainConfig(epochs=5, patience=5))


DEMO_COINS = ["BTCUSDT", "ETHUSDT"]



def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class V3CoLabPipeline:
    """The guide's five-step pipeline. `COINS` and `TIMEFRAMES` can be replaced per instance."""

    def __init__(self, base_dir: str | Path | None = None, *, config: PipelineConfig | None = None,
                 coins: list[str] | None = None, timeframes: list[str] | None = None,
                 hf_token: str | None = None, **overrides):
        self.config = config or PipelineConfig()
        if overrides:  # e.g. source='synthetic', candles=2000
            self.config = dataclasses.replace(self.config, **overrides)
        self.base_dir = Path(base_dir) if base_dir is not None else default_base_dir()
        # a string stays a string, so that pairs() can say that a list is needed
        self.COINS = list(DEFAULT_COINS) if coins is None else (
            list(coins) if isinstance(coins, (list, tuple)) else coins)
        self.TIMEFRAMES = list(DEFAULT_TIMEFRAMES) if timeframes is None else (
            list(timeframes) if isinstance(timeframes, (list, tuple)) else timeframes)
        self._hf_token = hf_token  # never printed or stored
        self.device_report: dict = {}
        setup_logging()

    # -- paths -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "all_models"

    @property
    def results_dir(self) -> Path:
        return self.base_dir / "results"

    @property
    def processed_dir(self) -> Path:
        return self.base_dir / "processed"

    @property
    def checkpoints_dir(self) -> Path:
        return self.base_dir / "checkpoints"

    @property
    def results_path(self) -> Path:
        return self.results_dir / RESULTS_FILE

    def model_path(self, symbol: str, interval: str) -> Path:
        return self.models_dir / f"v3_model_{pair_key(symbol, interval)}.pt"

    def predictions_path(self, symbol: str, interval: str) -> Path:
        return self.results_dir / "predictions" / f"{pair_key(symbol, interval)}.csv"

    def processed_path(self, symbol: str, interval: str) -> Path:
        return self.processed_dir / f"{pair_key(symbol, interval)}.npz"

    def resume_path(self, symbol: str, interval: str) -> Path:
        return self.checkpoints_dir / f"{pair_key(symbol, interval)}_resume.pt"

    # -- validation --------------------------------------------------------------------
    def pairs(self) -> list[tuple[str, str]]:
        """(symbol, interval) for every coin x timeframe, a renamed coin replaced by the symbol
        step 2 downloaded (data/symbol_renames.json: MATICUSDT -> POLUSDT, FTMUSDT -> SUSDT)."""
        renames = read_json(self.data_dir / RENAMES_FILE, default={}) or {}
        return list(dict.fromkeys((renames.get(s, s), i) for s, i in self.requested_pairs()))

    def requested_pairs(self) -> list[tuple[str, str]]:
        """(symbol, interval) for every coin x timeframe as given; raises ConfigError on bad input."""
        if isinstance(self.COINS, str) or not self.COINS:
            raise ConfigError(f"COINS must be a non-empty list of symbols such as ['BTCUSDT'], "
                              f"got {self.COINS!r}.")
        if isinstance(self.TIMEFRAMES, str) or not self.TIMEFRAMES:
            raise ConfigError(f"TIMEFRAMES must be a non-empty list such as ['15m', '1h'], "
                              f"got {self.TIMEFRAMES!r}.")
        symbols = list(dict.fromkeys(normalize_symbol(c) for c in self.COINS))
        intervals = list(dict.fromkeys(check_interval(t) for t in self.TIMEFRAMES))
        return [(s, i) for s in symbols for i in intervals]

    def _check_config(self) -> None:
        c = self.config
        if c.source not in SOURCES:
            raise ConfigError(f"source {c.source!r} is not one of {', '.join(SOURCES)}.")
        if c.source == "csv":
            if not c.data_dir:
                raise ConfigError("source 'csv' needs a data folder: pass --data-dir DIR "
                                  "(a folder of SYMBOL_INTERVAL.csv or .csv.gz files).")
            if not Path(c.data_dir).is_dir():
                raise ConfigError(f"data folder {c.data_dir} does not exist: pass --data-dir with "
                                  f"an existing folder of SYMBOL_INTERVAL.csv or .csv.gz files.")
        if c.source in ("binance", "binance-archive"):
            from v3_binance_data import api_urls_from_env
            api_urls_from_env(c.api_urls)
            if c.archive_url is not None and not str(c.archive_url).startswith(("http://",
                                                                                 "https://")):
                raise ConfigError(f"archive URL {c.archive_url!r} is not an http(s) URL: give the "
                                  f"archive's root such as https://data.binance.vision "
                                  f"(--archive-url or V3_BINANCE_ARCHIVE_URL).")
            if not isinstance(c.download_workers, int) or not 1 <= c.download_workers <= 16:
                raise ConfigError(f"download_workers={c.download_workers!r}: use 1..16 (default 4; "
                                  f"Binance's limits favour a few connections).")
        check_feature_config(c.features)
        need = c.features.min_candles()
        if not isinstance(c.candles, int) or c.candles < need:
            raise ConfigError(
                f"candles={c.candles!r} is too few: need >= {need} per pair (indicator warm-up "
                f"{WARMUP_CANDLES} + window {c.features.seq_len} + enough windows for the "
                f"70/15/15 splits). The guide uses 3000.")
        check_train_config(c.train)
        _device_name(c.train.device)  # 'cuda' without a GPU, or a typo, fails here, not in step 4
        if c.upload:  # a bad Hub folder fails now, not after hours of training
            from v3_hub import _check_folder
            _check_folder(c.hf_folder)
        m = c.model
        if not (isinstance(m.hidden_size, int) and m.hidden_size >= 1
                and isinstance(m.num_layers, int) and m.num_layers >= 1
                and isinstance(m.dropout, (int, float)) and 0 <= m.dropout < 1):
            raise ConfigError(f"model hidden_size={m.hidden_size!r}, num_layers={m.num_layers!r}, "
                              f"dropout={m.dropout!r}: need integers >= 1 and a dropout in [0, 1) "
                              f"(the guide uses 128, 3 and 0.3).")
        if not (isinstance(c.fee_per_side, (int, float)) and 0 <= c.fee_per_side < 0.1):
            raise ConfigError(f"fee_per_side={c.fee_per_side!r} must be a fraction in [0, 0.1) "
                              f"(0.001 = 0.1 % per side, Binance's spot taker fee).")
        if not isinstance(c.walk_forward, int) or c.walk_forward < 0:
            raise ConfigError(f"walk_forward={c.walk_forward!r} must be a number of folds >= 1 "
                              f"(or 0 for none), e.g. --walk-forward 3.")

    # -- results -----------------------------------------------------------------------
    def load_results(self) -> dict:
        return read_json(self.results_path, default={}) or {}

    def _update_result(self, key: str, **fields) -> dict:
        results = self.load_results()
        before = results.get(key, {})
        entry = dict(before, **fields)
        for k in [k for k, v in entry.items() if v is None and k in ("reason", "failed_step",
                                                                      "skip_reason")]:
            del entry[k]  # a field that no longer applies
        if _same_json(entry, before) and self.results_path.exists():
            return before  # nothing new: the file (and its updated_at) stays as it was
        entry["updated_at"] = _now_iso()
        results[key] = entry
        atomic_write_json(self.results_path, results)
        return entry

    def _fail(self, symbol: str, interval: str, step: str, err: BaseException) -> None:
        reason = " ".join(str(err).split()) or type(err).__name__
        log.error("%s %s: %s failed: %s", symbol, interval, step, reason)
        self._update_result(pair_key(symbol, interval), symbol=symbol, interval=interval,
                            status="failed", failed_step=step, reason=reason)

    def _write_config(self) -> None:
        cfg = self.config.to_dict()
        cfg.update(coins=self.COINS, timeframes=self.TIMEFRAMES, base_dir=str(self.base_dir),
                   warmup_candles=WARMUP_CANDLES)
        path = self.results_dir / "config.json"
        if _same_json(cfg, read_json(path, default={}) or {}):
            return  # unchanged settings: keep the file (and its written_at)
        atomic_write_json(path, dict(cfg, written_at=_now_iso()))

    # -- step 1 ------------------------------------------------------------------------
    def step_1_setup_environment(self) -> dict:
        """Create the folders, check the packages, report the device."""
        import importlib
        log.info("STEP 1/5: setup (base_dir %s)", self.base_dir.resolve())
        for d in (self.data_dir, self.models_dir, self.results_dir / "predictions",
                  self.processed_dir, self.checkpoints_dir):
            d.mkdir(parents=True, exist_ok=True)
        versions, missing = {}, []
        for mod, pip_name in (("torch", "torch"), ("numpy", "numpy"), ("pandas", "pandas"),
                              ("sklearn", "scikit-learn"), ("tqdm", "tqdm"),
                              ("binance", "python-binance"), ("huggingface_hub", "huggingface-hub"),
                              ("matplotlib", "matplotlib")):
            try:
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = importlib.import_module(mod)
                versions[pip_name] = getattr(m, "__version__", "?")
            except ImportError:
                missing.append(pip_name)
        if missing:
            log.warning("missing packages: %s. Install them with: pip install %s",
                        ", ".join(missing), " ".join(missing))
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            self.device_report = {"device": "cuda", "name": props.name,
                                  "memory_gb": round(props.total_memory / 1e9, 2)}
            log.info("GPU: %s (%.2f GB)", props.name, props.total_memory / 1e9)
        else:
            self.device_report = {"device": "cpu", "name": "cpu", "memory_gb": None}
            log.info("No GPU found: training will run on the CPU and will be slow "
                     "(in Colab: Runtime > Change runtime type > GPU).")
        self.device_report["packages"] = versions
        self.device_report["missing"] = missing
        return self.device_report

    # -- step 2 ------------------------------------------------------------------------
    def step_2_download_binance_data(self) -> dict:
        """Fetch candles for every pair into base_dir/data (source: binance, binance-archive, csv
        or synthetic). Ends with a table; one pair failing never stops the others."""
        from v3_binance_data import format_download_table
        pairs = self.requested_pairs()
        self._check_config()
        c = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log.info("STEP 2/5: download %d pairs x %d candles from %s%s", len(pairs), c.candles,
                 c.source, " (SYNTHETIC data, not market prices)" if c.source == "synthetic" else "")
        if c.source in ("binance", "binance-archive"):
            outcomes = self._download_binance(pairs)
        else:
            outcomes = [self._load_offline(s, i) for s, i in
                        progress(pairs, enabled=c.show_progress, desc="download", unit="pair")]
        renames = read_json(self.data_dir / RENAMES_FILE, default={}) or {}
        results = self.load_results()
        done = {}
        for r in outcomes:
            if r.renamed:
                renames[r.requested_symbol] = r.symbol
            else:
                renames.pop(r.requested_symbol, None)
            if not r.ok:
                self._fail(r.symbol, r.interval, "download", r.error)
                self._update_result(r.key, requested_symbol=r.requested_symbol)
                continue
            status = results.get(r.key, {}).get("status")
            self._update_result(r.key, symbol=r.symbol, interval=r.interval,
                                requested_symbol=r.requested_symbol, data=r.info(), reason=None,
                                failed_step=None,
                                status=status if status in ("success", "skipped") else "downloaded")
            done[r.key] = r.info()
        atomic_write_json(self.data_dir / RENAMES_FILE, renames)
        log.info("download summary (%d of %d pairs ok):\n%s", len(done), len(pairs),
                 format_download_table(outcomes))
        return done

    def _download_binance(self, pairs: list[tuple[str, str]]) -> list:
        """Sources 'binance' and 'binance-archive' through v3_binance_data.BinanceDownloader."""
        from v3_binance_data import RENAMED_SYMBOLS, BinanceDownloader
        c = self.config
        results = self.load_results()
        refresh: bool | set = c.refresh
        if not refresh:  # a file another source wrote (synthetic, csv) is replaced, not appended to
            refresh = set()
            for s, i in pairs:
                for sym in {s, RENAMED_SYMBOLS.get(s, s)}:
                    prior = (results.get(pair_key(sym, i), {}).get("data") or {}).get("source")
                    if prior not in (None, "binance", "binance-archive"):
                        log.info("%s %s: the saved candles came from %r; downloading afresh",
                                 sym, i, prior)
                        refresh.add((sym, i))
        with BinanceDownloader(c.api_urls, archive_url=c.archive_url, workers=c.download_workers,
                               show_progress=c.show_progress) as dl:
            return dl.download_pairs(pairs, n_candles=c.candles, data_dir=self.data_dir,
                                     refresh=refresh, source=c.source)

    def _load_offline(self, symbol: str, interval: str):
        """Sources 'csv' and 'synthetic': one pair, validated, written to data/."""
        from v3_binance_data import PairDownload, check_series, log_gaps
        from v3_market_data import data_path, find_csv, read_klines, synthetic_klines, write_klines
        c = self.config
        out = PairDownload(symbol, symbol, interval, source=c.source, sources_used=[c.source])
        name = f"{symbol} {interval}"
        try:
            if c.source == "synthetic":
                df = synthetic_klines(symbol, interval, c.candles)
            else:
                src = find_csv(c.data_dir, symbol, interval)
                df = check_series(read_klines(src), interval, str(src))[0].tail(c.candles)
            df, gaps = check_series(df.reset_index(drop=True), interval, name)
            path = data_path(self.data_dir, symbol, interval)
            write_klines(df, path)
        except (V3Error, OSError) as e:
            out.error = e if isinstance(e, V3Error) else ConfigError(
                f"{name}: cannot write the candles ({type(e).__name__}: {e}).")
            return out
        log_gaps(name, gaps)
        out.rows = out.new_rows = len(df)
        out.first_open_time = int(df["open_time"].iloc[0])
        out.last_open_time = int(df["open_time"].iloc[-1])
        out.gaps, out.path = gaps, path
        return out

    # -- step 3 ------------------------------------------------------------------------
    def step_3_preprocess_features(self, pairs: list[tuple[str, str]] | None = None) -> dict:
        """Indicators, train-only scaling + PCA and windows, saved to base_dir/processed."""
        from v3_market_data import data_path, read_klines
        pairs = pairs or self.pairs()
        self._check_config()
        c = self.config
        log.info("STEP 3/5: indicators + PCA for %d pairs", len(pairs))
        done = {}
        for symbol, interval in progress(pairs, enabled=c.show_progress, desc="features", unit="pair"):
            key = pair_key(symbol, interval)
            src = data_path(self.data_dir, symbol, interval)
            if not src.exists():
                if self.load_results().get(key, {}).get("status") != "failed":
                    self._fail(symbol, interval, "preprocess",
                               ConfigError(f"no data file {src.name}: run step 2 (download) first."))
                continue
            try:
                # the latest `candles` rows: incremental downloads make the file grow
                data = prepare_dataset(read_klines(src).tail(c.candles), c.features,
                                       interval=interval, name=f"{symbol} {interval}")
                data.save(self.processed_path(symbol, interval))
            except V3Error as e:
                self._fail(symbol, interval, "preprocess", e)
                continue
            info = _features_info(data)
            status = self.load_results().get(key, {}).get("status")
            self._update_result(key, symbol=symbol, interval=interval, features=info,
                                status=status if status in ("success", "skipped") else "preprocessed",
                                reason=None, failed_step=None)
            done[key] = info
        log.info("preprocessed %d of %d pairs", len(done), len(pairs))
        return done

    # -- step 4 ------------------------------------------------------------------------
    def step_4_train_models(self, epochs: int | None = None, batch_size: int | None = None,
                            learning_rate: float | None = None, *, retrain: bool = False) -> dict:
        """Train one model per pair; skip pairs already trained; resume interrupted ones."""
        overrides = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size),
                                       ("learning_rate", learning_rate)) if v is not None}
        if overrides:
            self.config = dataclasses.replace(
                self.config, train=dataclasses.replace(self.config.train, **overrides))
        pairs = self.pairs()
        self._check_config()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        c = self.config
        log.info("STEP 4/5: train %d models (epochs %d, batch %d, lr %g, device %s)",
                 len(pairs), c.train.epochs, c.train.batch_size, c.train.learning_rate,
                 _device_name(c.train.device))
        # preprocess pairs whose features are missing or older than their data
        from v3_market_data import data_path
        stale = [(s, i) for s, i in pairs if data_path(self.data_dir, s, i).exists() and (
            not self.processed_path(s, i).exists() or
            self.processed_path(s, i).stat().st_mtime < data_path(self.data_dir, s, i).stat().st_mtime)]
        if stale:
            self.step_3_preprocess_features(stale)
        jobs = []
        for n, (symbol, interval) in enumerate(pairs, 1):
            key = pair_key(symbol, interval)
            if not self.processed_path(symbol, interval).exists():
                if self.load_results().get(key, {}).get("status") != "failed":
                    self._fail(symbol, interval, "train", ConfigError(
                        "no data for this pair: run steps 2 and 3 first."))
                continue
            try:
                job = self._plan_pair(symbol, interval, retrain=retrain,
                                      label=f"[{n}/{len(pairs)}] {key}")
            except V3Error as e:
                self._fail(symbol, interval, "train", e)
                continue
            if job is not None:
                jobs.append(job)
        from v3_trainer import train_jobs
        train_jobs(jobs, c.train, show_progress=c.show_progress, on_done=self._finalize_pair,
                   on_error=lambda job, e: self._fail(job.symbol, job.interval, "train", e))
        self._log_summary(pairs)
        if c.walk_forward:
            self.step_4_walk_forward(c.walk_forward, retrain=retrain)
        self.write_report()
        return self.load_results()

    def step_3_train_models(self, epochs: int | None = None, batch_size: int | None = None,
                            learning_rate: float | None = None, *, retrain: bool = False) -> dict:
        """The guide's 'resume training' call: preprocess if needed, then continue training."""
        return self.step_4_train_models(epochs, batch_size, learning_rate, retrain=retrain)

    def _plan_pair(self, symbol: str, interval: str, *, retrain: bool, label: str):
        """A TrainJob for the pair (fresh or resumed), or None when it is already trained.

        A model keeps training on the candles it started with: when step 2 has fetched newer
        candles since (a re-run in Colab always does), the pair's data is cut back to the
        range recorded in its training state, so a finished pair is skipped and an
        interrupted one resumes. `retrain=True` trains from scratch on the newest candles.
        """
        from v3_trainer import TrainJob, load_resume_state, save_resume_state
        c = self.config
        key = pair_key(symbol, interval)
        data = PreparedData.load(self.processed_path(symbol, interval))
        resume = None if retrain else load_resume_state(self.resume_path(symbol, interval))
        if resume is not None and (resume.get("model_config") != c.model.to_dict() or
                                   resume.get("feature_config") != c.features.to_dict()):
            log.info("%s: the model or feature settings changed since the last training; "
                     "training from scratch", key)
            resume = None
        if resume is not None and resume.get("data_fingerprint") != _fingerprint(data):
            older = self._data_as_trained(symbol, interval, resume)
            if older is None:
                log.info("%s: the candles it was trained on are gone; training from scratch", key)
                resume = None
            else:
                log.info("%s: keeps the candles it was trained on (up to %s); newer ones are "
                         "used with retrain=True (--retrain)", key, utc_minute(older.last_open_time))
                data = older
        if (resume is not None and self.model_path(symbol, interval).exists()
                and resume.get("completed") and resume["epochs_requested"] >= c.train.epochs):
            reason = (f"already trained ({resume['epoch']} epochs of {resume['epochs_requested']}); "
                      f"pass retrain=True (--retrain) to train again")
            log.info("%s: skipped, %s", key, reason)
            self._update_result(key, status="skipped", skip_reason=reason, reason=None,
                                failed_step=None)
            return None
        if resume is not None:
            log.info("%s: resuming from epoch %d", key, resume["epoch"])
        resume_path = self.resume_path(symbol, interval)
        stamp = self._resume_stamp(data)

        def save_state(state: dict) -> None:
            state.update(stamp, completed=False)
            save_resume_state(state, resume_path)

        model_cfg = dataclasses.replace(c.model, input_size=data.transform.n_components)
        return TrainJob(key=key, symbol=symbol, interval=interval, data=data, model_config=model_cfg,
                        resume=resume, checkpoint_fn=save_state, desc=label)

    def _resume_stamp(self, data: PreparedData) -> dict:
        """What a training state must match to be resumed: data range and settings."""
        return {"data_fingerprint": _fingerprint(data), "model_config": self.config.model.to_dict(),
                "feature_config": self.config.features.to_dict(),
                "data_first_open_time": data.first_open_time,
                "data_last_open_time": data.last_open_time}

    def _data_as_trained(self, symbol: str, interval: str, resume: dict) -> PreparedData | None:
        """The pair's dataset rebuilt on the candle range its training state recorded."""
        from v3_market_data import data_path, read_klines
        first, last = resume.get("data_first_open_time"), resume.get("data_last_open_time")
        path = data_path(self.data_dir, symbol, interval)
        if first is None or last is None or not path.exists():
            return None
        df = read_klines(path)
        df = df[(df["open_time"] >= first) & (df["open_time"] <= last)]
        try:
            data = prepare_dataset(df, self.config.features, interval=interval,
                                   name=f"{symbol} {interval}")
        except V3Error:
            return None
        return data if _fingerprint(data) == resume.get("data_fingerprint") else None

    def _finalize_pair(self, job, outcome) -> dict:
        """Predict the test split with the best weights, score it, save every artifact."""
        from v3_evaluation import regression_metrics
        from v3_trainer import predict_standardized, save_checkpoint, save_resume_state
        c = self.config
        data, symbol, interval, key = job.data, job.symbol, job.interval, job.key
        prior = self.load_results().get(key, {})
        model = _load_best(job.model_config, outcome.best_state)
        te, va = data.split("test"), data.split("val")
        pred_test = data.to_close(predict_standardized(model, data, te), te)
        pred_val = data.to_close(predict_standardized(model, data, va), va)
        scored = self._score_pair(data, pred_test, interval)  # baselines, significance, backtest
        test, baseline = scored["test"], scored["baseline"]
        val = regression_metrics(data.actual_close[va], pred_val, data.last_close[va])
        prior_data = prior.get("data", {})
        meta = {
            "symbol": symbol, "interval": interval,
            "requested_symbol": prior.get("requested_symbol", symbol),
            "source": prior_data.get("source", c.source),
            "synthetic": bool(prior_data.get("synthetic", c.source == "synthetic")),
            "data_range": {"first_open_time": data.first_open_time,
                           "last_open_time": data.last_open_time},
            "splits": {"train": data.n_train, "val": data.n_val, "test": data.n_test,
                       "test_first_open_time": int(data.target_open_time[te][0]),
                       "test_last_open_time": int(data.target_open_time[te][-1])},
            "train_config": c.train.to_dict(),
            "best_val_loss": outcome.best_val_loss, "best_epoch": outcome.best_epoch,
            "total_epochs": outcome.epochs_done,
            "test": test, "baseline": baseline, "val": val,
            "created_at": _now_iso(),
        }
        save_checkpoint(self.model_path(symbol, interval), model_state=outcome.best_state,
                        model_config=job.model_config, data=data,
                        feature_config=c.features.to_dict(), meta=meta)
        preds = pd.DataFrame({"open_time": data.target_open_time[te],
                              "last_close": data.last_close[te],
                              "actual_close": data.actual_close[te],
                              "predicted_close": pred_test})
        atomic_write_bytes(self.predictions_path(symbol, interval), preds.to_csv(index=False).encode())
        final = dict(outcome.resume_state, **self._resume_stamp(data), completed=True)
        save_resume_state(final, self.resume_path(symbol, interval))
        return self._update_result(
            key, symbol=symbol, interval=interval, status="success", reason=None,
            failed_step=None, skip_reason=None,
            best_val_loss=outcome.best_val_loss, best_epoch=outcome.best_epoch,
            total_epochs=outcome.epochs_done, val_mape=val["mape"],
            stopped_early=outcome.stopped_early, test=test, baseline=baseline,
            features=_features_info(data),
            **self._evaluation_fields(data, scored),
            synthetic=meta["synthetic"], train_seconds=round(outcome.seconds, 2),
            device=_device_name(c.train.device),
            model_path=str(self.model_path(symbol, interval).relative_to(self.base_dir)),
            predictions_path=str(self.predictions_path(symbol, interval).relative_to(self.base_dir)),
            history=outcome.history)

    # -- evaluation (issue 7): baselines, significance, backtest, walk-forward, report -------
    def _score_pair(self, data: PreparedData, pred_test: np.ndarray, interval: str) -> dict:
        """The model's test forecast next to every baseline on the same samples, with the
        significance tests and the fee-aware backtest (v3_evaluation)."""
        from v3_evaluation import backtest_direction, evaluate_pair
        te = data.split("test")
        scored = evaluate_pair(data, pred_test)
        scored["predictions"]["model"] = np.asarray(pred_test, np.float64)
        scored["backtest"] = backtest_direction(pred_test, data.last_close[te], data.actual_close[te],
                                                interval=interval,
                                                fee_per_side=self.config.fee_per_side)
        scored["tuning"]["lstm"] = ("the stopping epoch, by early stopping on the validation loss "
                                    f"(patience {self.config.train.patience}); nothing on test")
        return scored

    @staticmethod
    def _evaluation_fields(data: PreparedData, scored: dict) -> dict:
        """What the evaluation adds to a pair's results entry (besides test and baseline)."""
        te = data.split("test")
        return {"backtest": scored["backtest"], "mase_scale": scored["mase_scale"],
                "tuning": scored["tuning"],
                "splits": {"train": data.n_train, "val": data.n_val, "test": data.n_test,
                           "test_first_open_time": int(data.target_open_time[te][0]),
                           "test_last_open_time": int(data.target_open_time[te][-1])}}

    def _write_fold_predictions(self, path: Path, data: PreparedData, scored: dict) -> None:
        te = data.split("test")
        p = scored["predictions"]
        preds = pd.DataFrame({"open_time": data.target_open_time[te],
                              "last_close": data.last_close[te],
                              "actual_close": data.actual_close[te],
                              "predicted_close": p["model"],
                              "drift_close": p["drift"], "linear_close": p["linear"]})
        atomic_write_bytes(path, preds.to_csv(index=False).encode())

    def rescore_pairs(self, keys: list[str] | None = None) -> dict:
        """Score trained pairs (all, or `keys`) again from their saved model and features, with
        no training: for results written by an older V3, or after a change of fee."""
        import io
        import zipfile
        import torch
        from v3_trainer import load_checkpoint, model_from_checkpoint, predict_standardized
        done = {}
        for key, entry in self.load_results().items():
            if key.startswith("_") or entry.get("status") not in ("success", "skipped") \
                    or (keys is not None and key not in keys):
                continue
            symbol, interval = entry["symbol"], entry["interval"]
            mpath, ppath = self.model_path(symbol, interval), self.processed_path(symbol, interval)
            if not (mpath.exists() and ppath.exists()):
                log.warning("%s: no saved model or features; not re-scored", key)
                continue
            try:
                ckpt = load_checkpoint(mpath)
                data = PreparedData.load(ppath)
            except (V3Error, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                # one unreadable file costs that pair's re-scoring, never the others' or the report
                log.warning("%s: not re-scored: %s: %s (re-train it: --retrain)", key,
                            type(e).__name__, " ".join(str(e).split())[:200])
                continue
            if ckpt.get("data_range", {}).get("last_open_time") != data.last_open_time:
                log.warning("%s: the features changed since the model was trained; not re-scored "
                            "(train it again with --retrain)", key)
                continue
            te = data.split("test")
            pred = data.to_close(predict_standardized(model_from_checkpoint(ckpt), data, te), te)
            scored = self._score_pair(data, pred, interval)
            preds = pd.DataFrame({"open_time": data.target_open_time[te],
                                  "last_close": data.last_close[te],
                                  "actual_close": data.actual_close[te], "predicted_close": pred})
            atomic_write_bytes(self.predictions_path(symbol, interval),
                               preds.to_csv(index=False).encode())
            # keep the model file in step (rewritten only when its numbers change: a re-save
            # of the same checkpoint differs in bytes, and step 5 would upload it again);
            # torch_version back to a plain str for weights_only
            if (ckpt.get("test"), ckpt.get("baseline")) != (scored["test"], scored["baseline"]):
                ckpt.update(test=scored["test"], baseline=scored["baseline"],
                            torch_version=str(ckpt.get("torch_version", torch.__version__)))
                buf = io.BytesIO()
                torch.save(ckpt, buf)
                atomic_write_bytes(mpath, buf.getvalue())
            done[key] = self._update_result(
                key, test=scored["test"], baseline=scored["baseline"],
                **self._evaluation_fields(data, scored),
                predictions_path=str(self.predictions_path(symbol, interval)
                                     .relative_to(self.base_dir)))
        log.info("re-scored %d pairs from their saved models", len(done))
        return done

    def walk_forward_path(self, symbol: str, interval: str, fold: int) -> Path:
        return self.results_dir / "walk_forward" / f"{pair_key(symbol, interval)}_fold{fold + 1}.csv"

    def step_4_walk_forward(self, k: int, *, retrain: bool = False) -> dict:
        """Retrain every pair on K successive origins (expanding window; indicators, scaling,
        PCA and the target's mean/std refitted on each fold's own training rows) and score
        each fold's next block of test samples; per-fold and pooled metrics go into the
        results under `walk_forward`. A finished fold is kept unless `retrain`."""
        from v3_market_data import data_path, read_klines
        pairs = self.pairs()
        log.info("walk-forward: %d folds x %d pairs (expanding window)", k, len(pairs))
        done = {}
        for symbol, interval in pairs:
            key = pair_key(symbol, interval)
            src = data_path(self.data_dir, symbol, interval)
            if not src.exists():
                log.warning("%s: walk-forward skipped, no data file %s (run step 2)", key, src.name)
                continue
            try:
                # the latest `candles` rows, as step 3: the last fold tests the model's test split
                done[key] = self._walk_forward_pair(read_klines(src).tail(self.config.candles)
                                                    .reset_index(drop=True), symbol, interval, k,
                                                    retrain=retrain)
            except V3Error as e:
                reason = " ".join(str(e).split())
                log.error("%s %s: walk-forward failed: %s", symbol, interval, reason)
                self._update_result(key, walk_forward={"k": k, "status": "failed", "reason": reason})
        return done

    def _walk_forward_pair(self, klines: pd.DataFrame, symbol: str, interval: str, k: int, *,
                           retrain: bool) -> dict:
        from v3_evaluation import fold_fractions, walk_forward_folds
        from v3_trainer import predict_standardized, train_model
        c, key = self.config, pair_key(symbol, interval)
        name = f"{symbol} {interval}"
        full = prepare_dataset(klines, c.features, interval=interval, name=name)
        folds = walk_forward_folds(full.ends, k, test_size=full.n_test,
                                   train_frac=c.features.train_frac, val_frac=c.features.val_frac,
                                   min_samples=c.features.min_split_samples)
        prior = (self.load_results().get(key, {}).get("walk_forward") or {})
        prior_folds = {f["fold"]: f for f in prior.get("folds", []) if isinstance(f, dict)}
        entries = []
        for fold in folds:
            tf, vf = fold_fractions(fold)
            fcfg = dataclasses.replace(c.features, train_frac=tf, val_frac=vf)
            data = prepare_dataset(klines.iloc[:fold.n_candles], fcfg, interval=interval, name=name)
            if (data.n_train, data.n_val, data.n_test) != (fold.n_train, fold.n_val, fold.n_test) \
                    or not np.array_equal(data.ends, full.ends[:fold.n_samples]):
                raise V3Error(f"{name}: walk-forward fold {fold.index + 1} split into "
                              f"{data.n_train}/{data.n_val}/{data.n_test} samples, planned "
                              f"{fold.n_train}/{fold.n_val}/{fold.n_test}; please report this.")
            fp = f"{_fingerprint(data)}-{data.n_train}-{data.n_val}"
            old = prior_folds.get(fold.index + 1)
            csv = self.walk_forward_path(symbol, interval, fold.index)
            settings = {"train": c.train.to_dict(), "model": c.model.to_dict(),
                        "features": c.features.to_dict(), "fee_per_side": c.fee_per_side}
            if (not retrain and old and old.get("fingerprint") == fp and csv.exists()
                    and old.get("settings") == settings):
                log.info("%s: walk-forward fold %d/%d already done", key, fold.index + 1, k)
                entries.append(old)
                continue
            model_cfg = dataclasses.replace(c.model, input_size=data.transform.n_components)
            outcome = train_model(data, model_cfg, c.train, desc=f"{key} fold {fold.index + 1}/{k}",
                                  show_progress=c.show_progress)
            te = data.split("test")
            pred = predict_standardized(_load_best(model_cfg, outcome.best_state), data, te)
            scored = self._score_pair(data, data.to_close(pred, te), interval)
            self._write_fold_predictions(csv, data, scored)
            tr = data.split("train")
            entry = {"fold": fold.index + 1, "fingerprint": fp, "settings": settings,
                     "n_candles": fold.n_candles, "n_train": data.n_train, "n_val": data.n_val,
                     "n_test": data.n_test,
                     "train_first_open_time": int(data.target_open_time[tr][0]),
                     "train_last_open_time": int(data.target_open_time[tr][-1]),
                     "test_first_open_time": int(data.target_open_time[te][0]),
                     "test_last_open_time": int(data.target_open_time[te][-1]),
                     "best_epoch": outcome.best_epoch, "total_epochs": outcome.epochs_done,
                     "mase_scale": scored["mase_scale"], "test": scored["test"],
                     "baseline": scored["baseline"], "backtest": scored["backtest"],
                     "linear_alpha": scored["tuning"]["linear"]["alpha"],
                     "predictions_path": str(csv.relative_to(self.base_dir))}
            entries.append(entry)
            self._update_result(key, walk_forward={"k": k, "status": "running", "folds": entries})
            log.info("%s: walk-forward fold %d/%d: skill %s, direction %s%%", key, fold.index + 1,
                     k, _fmt(entry["test"]["skill"], "+.4f"),
                     _fmt(entry["test"]["directional_accuracy"], ".1f"))
        pooled = self._pool_folds(entries, interval)
        return self._update_result(key, walk_forward={"k": k, "status": "success", "folds": entries,
                                                      "pooled": pooled})["walk_forward"]

    def _pool_folds(self, entries: list[dict], interval: str) -> dict:
        """Metrics over the test samples of all folds together (each scaled by its own fold's
        naive MAE for MASE), with the baselines and the backtest on the same samples."""
        from v3_evaluation import backtest_direction, forecast_metrics
        df = pd.concat([pd.read_csv(self.base_dir / e["predictions_path"]) for e in entries])
        df["mase_scale"] = np.concatenate([np.full(e["n_test"], e["mase_scale"]) for e in entries])
        last, actual = df["last_close"].to_numpy(), df["actual_close"].to_numpy()
        m = lambda col: forecast_metrics(actual, df[col].to_numpy(), last,
                                         mase_scale=df["mase_scale"].to_numpy())
        return {"n_folds": len(entries), "test": m("predicted_close"),
                "baseline": {"persistence": m("last_close"), "drift": m("drift_close"),
                             "linear": m("linear_close")},
                "backtest": backtest_direction(df["predicted_close"].to_numpy(), last, actual,
                                               interval=interval,
                                               fee_per_side=self.config.fee_per_side)}

    def write_report(self, *, rescore: bool = False) -> dict:
        """The across-pair summary (into the results JSON under '_summary') and
        results/report.md + report.html with plots. `rescore` first re-scores every pair;
        pairs scored by an older V3 (no baselines or backtest yet) or with another fee are
        re-scored anyway."""
        from v3_evaluation import summarize_pairs
        from v3_report import summary_sentences, write_report
        fee = self.config.fee_per_side
        old = [k for k, v in self.load_results().items() if not k.startswith("_")
               and v.get("status") in ("success", "skipped")
               and (v.get("backtest") or {}).get("fee_per_side") != fee]
        if rescore or old:
            self.rescore_pairs(None if rescore else old)
        results = self.load_results()
        entries = {k: v for k, v in results.items() if not k.startswith("_") and
                   v.get("status") in ("success", "skipped") and (v.get("test") or {}).get("n")}
        summary = summarize_pairs(entries)
        # no clock in the summary: an unchanged run leaves the results file unchanged
        summary["fee_per_side"] = self.config.fee_per_side
        results["_summary"] = summary
        atomic_write_json(self.results_path, results)
        paths = write_report(self.base_dir, results)
        log.info("%s%s", "[SYNTHETIC DATA] " if summary["synthetic"] else "",
                 summary_sentences(summary)[0].replace("**", ""))
        log.info("report: %s (and %s)", paths["md"], paths["html"].name)
        return summary

    def _log_summary(self, pairs) -> None:
        results = self.load_results()
        rows = []
        for symbol, interval in pairs:
            r = results.get(pair_key(symbol, interval), {})
            t, b = r.get("test") or {}, (r.get("baseline") or {}).get("persistence") or {}
            rows.append((pair_key(symbol, interval), r.get("status", "-"),
                         _fmt(t.get("mape"), ".4f"), _fmt(b.get("mape"), ".4f"),
                         _fmt(t.get("directional_accuracy"), ".1f"), str(t.get("n_direction", "-")),
                         (r.get("reason") or r.get("skip_reason") or "")[:60]))
        head = ("pair", "status", "MAPE %", "persist. %", "dir acc %", "n dir", "note")
        widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
        line = lambda x: "  ".join(str(v).ljust(w) for v, w in zip(x, widths))
        synthetic = any(results.get(pair_key(*p), {}).get("synthetic") for p in pairs)
        log.info("results (test split; persistence = 'next close = last close' on the same "
                 "samples)%s:\n%s", " [SYNTHETIC DATA]" if synthetic else "",
                 "\n".join(line(x) for x in [head] + rows))

    # -- step 5 ------------------------------------------------------------------------
    def step_5_upload_to_huggingface(self, repo_id: str | None = None, *, token: str | None = None,
                                     private: bool | None = None,
                                     folder: str | None = None) -> dict | None:
        """Upload every model, the results, the config and a model card in ONE commit.

        Repo default '<your user>/cpb-models', folder 'v3' (config.hf_repo / hf_folder /
        hf_private). Returns what v3_hub.upload_to_hub returns; None when skipped for want of
        a token (one log line says how to give one). Raises UploadError on a bad token (401),
        no write access (403) or a repo that cannot be created. Local files are only read.
        """
        from v3_hub import upload_to_hub
        c = self.config
        log.info("STEP 5/5: upload to the Hugging Face Hub")
        return upload_to_hub(self.base_dir, repo_id=repo_id or c.hf_repo,
                             token=token or self._hf_token, folder=folder or c.hf_folder,
                             private=c.hf_private if private is None else private,
                             show_progress=c.show_progress)

    # -- all ---------------------------------------------------------------------------
    def run_full_pipeline(self, epochs: int = 100, batch_size: int = 32,
                          learning_rate: float = 0.001, *, retrain: bool = False,
                          upload: bool | None = None) -> dict:
        """Steps 1-5 in order. Returns the results (also in results/v3_training_results.json)."""
        self.config = dataclasses.replace(self.config, train=dataclasses.replace(
            self.config.train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate))
        self.pairs()
        self._check_config()  # bad input fails here, before any heavy work
        self.step_1_setup_environment()
        self.step_2_download_binance_data()
        self.step_3_preprocess_features()
        results = self.step_4_train_models(retrain=retrain)
        if not (self.config.upload if upload is None else upload):
            log.info("STEP 5/5: upload switched off")
        elif not self._usable(results):
            log.error("STEP 5/5: no pair trained, nothing to upload: see the reasons in %s",
                      self.results_path)
        else:
            self.step_5_upload_to_huggingface()
        return results

    def _usable(self, results: dict) -> int:
        """How many of this run's pairs have a model (status success or skipped)."""
        return sum(1 for s, i in self.pairs()
                   if results.get(pair_key(s, i), {}).get("status") in ("success", "skipped"))


# ---------------------------------------------------------------------------------------


def _api_urls(urls: list[str] | None = None) -> list[str]:
    """`urls`, else $V3_BINANCE_API_URLS, else the main API then data-api.binance.vision."""
    from v3_binance_data import api_urls_from_env
    return api_urls_from_env(urls)


def _device_name(name: str) -> str:
    from v3_trainer import resolve_device
    return str(resolve_device(name))


def _features_info(data: PreparedData) -> dict:
    return {"n_features": len(data.feature_names), "n_components": data.transform.n_components,
            "explained_variance": float(data.transform.explained_variance_ratio.sum()),
            "n_samples": len(data.ends), "n_train": data.n_train, "n_val": data.n_val,
            "n_test": data.n_test, "seq_len": data.seq_len, "warmup_candles": WARMUP_CANDLES,
            "gap_windows_dropped": data.gap_windows_dropped}


def _fingerprint(data: PreparedData) -> str:
    return f"{data.first_open_time}-{data.last_open_time}-{len(data.ends)}-{data.seq_len}"


def _load_best(model_cfg: ModelConfig, state: dict):
    from v3_lstm_model import V3LSTMModel
    m = V3LSTMModel(model_cfg)
    m.load_state_dict(state)
    return m.eval()


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _same_json(new: dict, old: dict, *, clock=("updated_at", "written_at")) -> bool:
    """`new` would be written as `old` is stored, leaving out the time stamps."""
    import json
    strip = lambda d: {k: v for k, v in d.items() if k not in clock}  # noqa: E731
    dump = lambda d: json.dumps(strip(d), sort_keys=True, default=json_default)  # noqa: E731
    try:
        return dump(new) == dump(old)
    except TypeError:
        return False


# ---------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="v3_colab_training.py",
        description="V3: download Binance candles, build indicator+PCA features, train one "
                    "BiLSTM-attention model per coin and timeframe, report metrics next to the "
                    "persistence baseline, and upload to the Hugging Face Hub.")
    p.add_argument("--demo", action="store_true",
                   help="offline demo: synthetic data, BTCUSDT+ETHUSDT x 15m+1h, a small model, "
                        "5 epochs (under a minute on 2 CPU cores); no upload unless --hf-repo")
    p.add_argument("--coins", nargs="+", metavar="SYMBOL",
                   help="symbols such as BTCUSDT ETHUSDT (or BTC,ETH); default: the guide's 20")
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
    p.add_argument("--download-workers", type=int, metavar="N", help="pairs downloaded at once "
                                                                     "(default 4)")
    p.add_argument("--base-dir", help="output folder (default /content in Colab, else ./v3_output;"
                                      " or $V3_BASE_DIR)")
    p.add_argument("--steps", nargs="+", choices=STEPS, metavar="STEP",
                   help=f"run only these steps, in order (of: {', '.join(STEPS)})")
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
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: re-score the saved models and rewrite results/report.md "
                        "and report.html")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--engine", choices=("auto", "fast", "plain"),
                   help="training engine: auto (default: fast on a GPU, plain on CPU), fast "
                        "(all models trained together, CUDA graphs) or plain (one model at a time)")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def _split_list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v for item in values for v in item.replace(",", " ").split()]


def pipeline_from_args(args: argparse.Namespace) -> tuple[V3CoLabPipeline, list[str]]:
    cfg = demo_config() if args.demo else PipelineConfig()
    train_over = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                    ("learning_rate", args.learning_rate), ("device", args.device),
                                    ("seed", args.seed), ("engine", args.engine)) if v is not None}
    top = {k: v for k, v in (("candles", args.candles), ("source", args.source),
                             ("data_dir", args.data_dir), ("hf_repo", args.hf_repo),
                             ("hf_folder", args.hf_folder),
                             ("api_urls", _split_list(args.api_urls)),
                             ("archive_url", args.archive_url),
                             ("download_workers", args.download_workers),
                             ("walk_forward", args.walk_forward),
                             ("fee_per_side", args.fee_per_side)) if v is not None}
    if args.private:
        top["hf_private"] = True
    if args.refresh:
        top["refresh"] = True
    if args.hf_repo:
        top["upload"] = True
    if args.no_upload:
        top["upload"] = False
    if args.no_progress:
        top["show_progress"] = False
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_over), **top)
    coins = _split_list(args.coins) or (DEMO_COINS if args.demo else None)
    pipe = V3CoLabPipeline(args.base_dir, config=cfg, coins=coins,
                           timeframes=_split_list(args.timeframes))
    steps = list(args.steps) if args.steps else list(STEPS)
    steps = [s for s in STEPS if s in steps]
    return pipe, steps


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("WARNING" if args.quiet else "INFO")
    t0 = time.perf_counter()
    try:
        pipe, steps = pipeline_from_args(args)
        setup_logging("WARNING" if args.quiet else "INFO")  # the pipeline set INFO: --quiet wins
        pipe.pairs()
        pipe._check_config()
        if pipe.config.preset == "demo":
            log.info("demo preset: SYNTHETIC candles, small model (hidden %d, %d layers), %d epochs",
                     pipe.config.model.hidden_size, pipe.config.model.num_layers,
                     pipe.config.train.epochs)
        produced = None
        if args.report_only:
            produced = pipe.write_report(rescore=True)["n_pairs"]
            steps = []
        for step in steps:
            if step == "setup":
                pipe.step_1_setup_environment()
            elif step == "download":
                produced = len(pipe.step_2_download_binance_data())
            elif step == "preprocess":
                produced = len(pipe.step_3_preprocess_features())
            elif step == "train":
                produced = pipe._usable(pipe.step_4_train_models(retrain=args.retrain))
            elif step == "upload":
                if pipe.config.upload and produced == 0:
                    log.error("STEP 5/5: no pair trained, nothing to upload")
                elif pipe.config.upload:
                    pipe.step_5_upload_to_huggingface()
                else:
                    log.info("STEP 5/5: upload switched off (--no-upload, or --demo without --hf-repo)")
    except V3Error as e:
        log.error("%s: %s", type(e).__name__, e)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted: everything finished so far is saved in %s; re-run to resume",
                    pipe.base_dir if "pipe" in locals() else "base_dir")
        return 130
    log.info("done in %.1f s; outputs in %s", time.perf_counter() - t0, pipe.base_dir.resolve())
    if produced == 0:
        log.error("nothing usable was produced: see %s", pipe.results_path)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
