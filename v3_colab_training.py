"""The V3 pipeline: five steps in order, each re-runnable alone, all state kept in `base_dir`.

    from v3_colab_training import V3CoLabPipeline
    p = V3CoLabPipeline()                    # base_dir: /content in Colab, ./v3_output elsewhere
    p.COINS = ["BTCUSDT", "ETHUSDT"]         # optional subset of the guide's 20 coins
    p.run_full_pipeline(epochs=100, batch_size=32, learning_rate=0.001)

Steps and the module behind each: 1 setup (v3_setup), 2 download (v3_binance_data: binance |
binance-archive | csv | synthetic), 3 indicators + PCA (v3_data_processor), 4 training
(v3_engine, v3_train_step; scoring v3_evaluation, report v3_report), 5 Hugging Face upload
(v3_hub). This class only sequences them: it folds COINS / TIMEFRAMES and the caller's
overrides into one checked `PipelineConfig` (v3_config) and keeps the results store. The run
folder's layout is v3_layout.RunLayout.

Command line: `python v3_colab_training.py --help`; `--demo` runs offline in under a minute.
"""
from __future__ import annotations

import sys

from v3_cli import STEPS, build_parser, config_overrides, split_list

if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer before torch loads (lazy on purpose)

import dataclasses  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from v3_binance_data import BinanceDownloader, format_download_table, sources_to_refresh  # noqa: E402
from v3_common import (ConfigError, DamagedFileError, RetryableUploadError,  # noqa: E402
                       StorageError, V3Error, atomic_write_json, default_base_dir, log, pair_key,
                       plural, progress, read_json_or_set_aside, setup_logging, shorten)
from v3_config import (DEMO_COINS, PipelineConfig, check_config,  # noqa: E402,F401
                       check_pairs, demo_config)
from v3_data_processor import WARMUP_CANDLES, prepare_dataset  # noqa: E402
from v3_engine import train_jobs  # noqa: E402
from v3_metrics import summarize_pairs  # noqa: E402
from v3_evaluation import rescore_pair, walk_forward_pair  # noqa: E402
from v3_hub import upload_to_hub  # noqa: E402
from v3_interval_scores import summarize_intervals  # noqa: E402
from v3_layout import RunLayout  # noqa: E402
from v3_market_data import latest_candles, read_klines  # noqa: E402
from v3_pair_download import load_offline_pair  # noqa: E402
from v3_report import summary_sentences, write_report  # noqa: E402
from v3_run_lock import RunLock  # noqa: E402
from v3_setup import setup_environment  # noqa: E402
from v3_train_step import (features_info, finalize_pair, kept_features, plan_pair,  # noqa: E402
                           rebuild_results, with_disk_need)
from v3_results import (DOWNLOADED, FAILED, PREPROCESSED, SKIPPED, SUCCESS, TRAINED,  # noqa: E402
                        ResultsStore, log_summary, now_iso, read_renames, same_json)
from v3_trainer import cpu_threads, resolve_device  # noqa: E402


def _locked(method):
    """A step method runs holding the run folder's lock (v3_run_lock; re-entrant)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.run_lock:
            return method(self, *args, **kwargs)
    return run


class V3CoLabPipeline:
    """The guide's five-step pipeline. `COINS` and `TIMEFRAMES` can be replaced per instance.
    Every step holds the run folder's lock: a second pipeline on the same base_dir raises
    RunLockedError (naming the holder), or waits for it with `wait_for_lock=True`."""

    def __init__(self, base_dir: str | Path | None = None, *, config: PipelineConfig | None = None,
                 coins: list[str] | None = None, timeframes: list[str] | None = None,
                 hf_token: str | None = None, wait_for_lock: bool = False, **overrides):
        self.config = config or PipelineConfig()
        if overrides:  # e.g. source='synthetic', candles=2000
            self.config = dataclasses.replace(self.config, **overrides)
        self.base_dir = Path(base_dir) if base_dir is not None else default_base_dir()
        self.layout = RunLayout(self.base_dir)
        self.store = ResultsStore(self.layout.results_path,
                                  rebuild=lambda: rebuild_results(self.layout))
        self.run_lock = RunLock(self.layout, wait=wait_for_lock)
        # a string stays a string, so that the config check can say that a list is needed
        self.COINS = _as_list(self.config.coins if coins is None else coins)
        self.TIMEFRAMES = _as_list(self.config.timeframes if timeframes is None else timeframes)
        self._hf_token = hf_token  # never printed or stored
        self.device_report: dict = {}
        setup_logging()

    # -- where things are (v3_layout) --------------------------------------------------
    data_dir = property(lambda self: self.layout.data_dir)
    models_dir = property(lambda self: self.layout.models_dir)
    results_dir = property(lambda self: self.layout.results_dir)
    results_path = property(lambda self: self.layout.results_path)

    def model_path(self, symbol: str, interval: str) -> Path:
        return self.layout.model_path(symbol, interval)

    def processed_path(self, symbol: str, interval: str) -> Path:
        return self.layout.processed_path(symbol, interval)

    def predictions_path(self, symbol: str, interval: str) -> Path:
        return self.layout.predictions_path(symbol, interval)

    def load_results(self) -> dict:
        return self.store.load()

    # -- the config: COINS, TIMEFRAMES and the caller's overrides, checked once ---------
    def checked_config(self, **train_overrides) -> PipelineConfig:
        """self.config with COINS / TIMEFRAMES and the given training overrides (None: keep)
        folded in, checked (v3_config.check_config); self.config itself is not changed."""
        cfg = dataclasses.replace(self.config, coins=self.COINS, timeframes=self.TIMEFRAMES)
        return check_config(cfg.with_training(**train_overrides))

    def requested_pairs(self) -> list[tuple[str, str]]:
        """(symbol, interval) for every coin x timeframe as given; ConfigError on bad input."""
        coins, timeframes = check_pairs(self.COINS, self.TIMEFRAMES)
        return [(s, i) for s in coins for i in timeframes]

    def pairs(self) -> list[tuple[str, str]]:
        """The requested pairs, a renamed coin replaced by the symbol step 2 downloaded
        (data/symbol_renames.json: MATICUSDT -> POLUSDT, FTMUSDT -> SUSDT)."""
        renames = self._renames()
        return list(dict.fromkeys((renames.get(s, s), i) for s, i in self.requested_pairs()))

    def _renames(self) -> dict:
        return read_renames(self.layout.renames_path, self.store.load)

    # -- step 1 ------------------------------------------------------------------------
    @_locked
    def step_1_setup_environment(self) -> dict:
        """Create the folders, check the packages, report the device (v3_setup)."""
        self.device_report = setup_environment(self.layout)
        return self.device_report

    # -- step 2 ------------------------------------------------------------------------
    @_locked
    def step_2_download_binance_data(self) -> dict:
        """Fetch candles for every pair into base_dir/data (source: binance, binance-archive, csv
        or synthetic). Ends with a table; one pair failing never stops the others."""
        return self._download(self.checked_config())

    def _download(self, c: PipelineConfig) -> dict:
        pairs = self.requested_pairs()
        log.info("STEP 2/5: download %s x %d candles from %s%s", plural(len(pairs), "pair"),
                 c.candles, c.source,
                 " (SYNTHETIC data, not market prices)" if c.source == "synthetic" else "")
        if c.source in ("binance", "binance-archive"):
            outcomes = self._download_binance(c, pairs)
        else:
            outcomes = [load_offline_pair(s, i, source=c.source, n_candles=c.candles,
                                          data_dir=self.data_dir, csv_dir=c.data_dir,
                                          min_candles=c.features.min_candles())
                        for s, i in progress(pairs, enabled=c.show_progress, desc="download",
                                             unit="pair")]
        renames = self._renames()
        done = {}
        for r in outcomes:
            if r.renamed:
                renames[r.requested_symbol] = r.symbol
            else:
                renames.pop(r.requested_symbol, None)
            if not r.ok:
                self.store.fail(r.symbol, r.interval, "download", r.error)
                self.store.update(r.key, requested_symbol=r.requested_symbol)
                continue
            status = self.store.status(r.key)
            self.store.update(r.key, symbol=r.symbol, interval=r.interval,
                              requested_symbol=r.requested_symbol, data=r.info(), reason=None,
                              failed_step=None, status=status if status in TRAINED else DOWNLOADED)
            done[r.key] = r.info()
        if not self.layout.renames_path.exists() or renames != self._renames():
            atomic_write_json(self.layout.renames_path, renames)
        log.info("download summary (%d of %s ok):\n%s", len(done), plural(len(pairs), "pair"),
                 format_download_table(outcomes))
        return done

    def _download_binance(self, c: PipelineConfig, pairs: list[tuple[str, str]]) -> list:
        """Sources 'binance' and 'binance-archive' through v3_binance_data.BinanceDownloader.
        A file another source wrote (synthetic, csv) is replaced, not appended to."""
        refresh = c.refresh or sources_to_refresh(pairs, lambda sym, i: (
            self.store.entry(pair_key(sym, i)).get("data") or {}).get("source"))
        with BinanceDownloader(c.api_urls,
                               archive_url=c.archive_url, workers=c.download_workers,
                               show_progress=c.show_progress) as dl:
            return dl.download_pairs(pairs, n_candles=c.candles, data_dir=self.data_dir,
                                     refresh=refresh, source=c.source)

    # -- step 3 ------------------------------------------------------------------------
    @_locked
    def step_3_preprocess_features(self, pairs: list[tuple[str, str]] | None = None) -> dict:
        """Indicators, train-only scaling + PCA and windows, saved to base_dir/processed."""
        return self._preprocess(self.checked_config(), pairs)

    def _preprocess(self, c: PipelineConfig, pairs: list[tuple[str, str]] | None = None, *,
                    retrain: bool = False) -> dict:
        """Step 3 for `pairs` (default all). A trained pair whose candle file lost candles and
        gained none keeps its features and model (v3_train_step.kept_features) unless
        `retrain`."""
        pairs = pairs or self.pairs()
        log.info("STEP 3/5: indicators + PCA for %s", plural(len(pairs), "pair"))
        done = {}
        for symbol, interval in progress(pairs, enabled=c.show_progress, desc="features", unit="pair"):
            key = pair_key(symbol, interval)
            src, dst = self.layout.data_path(symbol, interval), self.processed_path(symbol, interval)
            if not src.exists():
                if self.store.status(key) != FAILED:
                    self.store.fail(symbol, interval, "preprocess", ConfigError(
                        f"no data file {src.name}: run step 2 (download) first."))
                continue
            try:
                data = prepare_dataset(latest_candles(read_klines(src), c.candles), c.features,
                                       interval=interval, name=f"{symbol} {interval}",
                                       hint=c.short_data_hint())
                kept = None if retrain else kept_features(self.layout, symbol, interval, data)
                if kept is None:
                    data.save(dst)  # only when it changed
                else:
                    data = kept
                    _touch(dst)  # not stale: step 4 need not warn again
                status = self.store.status(key)
                done[key] = features_info(data)
                self.store.update(key, symbol=symbol, interval=interval, features=done[key],
                                  status=status if status in TRAINED else PREPROCESSED,
                                  reason=None, failed_step=None)
            except V3Error as e:
                self.store.fail(symbol, interval, "preprocess", e)
                continue
        log.info("preprocessed %d of %s", len(done), plural(len(pairs), "pair"))
        return done

    # -- step 4 ------------------------------------------------------------------------
    @_locked
    def step_4_train_models(self, epochs: int | None = None, batch_size: int | None = None,
                            learning_rate: float | None = None, *, retrain: bool = False) -> dict:
        """Train one model per pair; skip pairs already trained; resume interrupted ones."""
        return self._train(self.checked_config(epochs=epochs, batch_size=batch_size,
                                               learning_rate=learning_rate), retrain=retrain)

    @_locked
    def step_3_train_models(self, epochs: int | None = None, batch_size: int | None = None,
                            learning_rate: float | None = None, *, retrain: bool = False) -> dict:
        """The guide's 'resume training' call: preprocess if needed, then continue training."""
        return self.step_4_train_models(epochs, batch_size, learning_rate, retrain=retrain)

    def _train(self, c: PipelineConfig, *, retrain: bool) -> dict:
        # one thread count for all of step 4: training, walk-forward and re-scoring
        with self._threads(c):
            return self._train_pairs(c, retrain=retrain)

    def _train_pairs(self, c: PipelineConfig, *, retrain: bool) -> dict:
        pairs = self.pairs()
        self._write_config(c)
        log.info("STEP 4/5: train %s (epochs %d, batch %d, lr %g, device %s)",
                 plural(len(pairs), "model"), c.train.epochs, c.train.batch_size,
                 c.train.learning_rate, resolve_device(c.train.device))
        stale = [(s, i) for s, i in pairs if self._features_stale(s, i)]
        if stale:
            self._preprocess(c, stale, retrain=retrain)
        jobs = [job for n, (s, i) in enumerate(pairs, 1)
                if (job := self._plan(c, s, i, retrain=retrain, label=f"[{n}/{len(pairs)}]"))]
        finished: list[str] = []

        def done(job, outcome) -> dict:
            fields = finalize_pair(self.layout, c, job, outcome, prior=self.store.entry(job.key),
                                   created_at=now_iso())
            finished.append(job.key)
            return self.store.update(job.key, status=SUCCESS, reason=None, failed_step=None,
                                     skip_reason=None, **fields)

        def failed(job, e) -> None:  # a full disk: with what the pairs not saved yet need
            e = with_disk_need(e, [j for j in jobs if j.key not in finished])
            self.store.fail(job.symbol, job.interval, "train", e)

        train_jobs(jobs, c.train, show_progress=c.show_progress, on_done=done, on_error=failed)
        log_summary(self.store.load(), pairs, self.results_path)
        if c.walk_forward:
            self._walk_forward(c, retrain=retrain)
        try:
            self._report(c)
        except StorageError as e:  # the pairs are done; only the report is missing
            log.error("the report was not written: %s", e)
        return self.store.load()

    def _plan(self, c: PipelineConfig, symbol: str, interval: str, *, retrain: bool,
              label: str):
        """One pair's TrainJob, or None (skipped, recorded; or failed, recorded). Damaged
        features (processed/*.npz) are built again by step 3 first."""
        key = pair_key(symbol, interval)
        if not self.processed_path(symbol, interval).exists():
            if self.store.status(key) != FAILED:
                self.store.fail(symbol, interval, "train", ConfigError(
                    "no data for this pair: run steps 2 and 3 first."))
            return None
        try:
            try:
                plan = plan_pair(self.layout, c, symbol, interval, retrain=retrain,
                                 label=f"{label} {key}", prior=self.store.entry(key))
            except DamagedFileError as e:
                if e.path != self.processed_path(symbol, interval):
                    raise
                log.warning("%s: %s", key, e)
                if key not in self._preprocess(c, [(symbol, interval)], retrain=retrain):
                    return None  # step 3 failed it, with its reason
                plan = plan_pair(self.layout, c, symbol, interval, retrain=retrain,
                                 label=f"{label} {key}", prior=self.store.entry(key))
            if plan.job is None:
                self.store.update(key, status=SKIPPED, skip_reason=plan.skip_reason,
                                  reason=None, failed_step=None, **plan.fields)
        except V3Error as e:
            self.store.fail(symbol, interval, "train", e)
            return None
        return plan.job

    def _features_stale(self, symbol: str, interval: str) -> bool:
        """Features missing or older than their candles (step 4 preprocesses them first)."""
        src, dst = self.layout.data_path(symbol, interval), self.processed_path(symbol, interval)
        return src.exists() and (not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime)

    def _write_config(self, c: PipelineConfig) -> None:
        """results/config.json, rewritten only when the settings change; a damaged one is set
        aside and written afresh. A failed write is logged: training goes on without it."""
        cfg = dict(c.to_dict(), base_dir=str(self.base_dir), warmup_candles=WARMUP_CANDLES)
        path = self.layout.config_path
        try:
            old = read_json_or_set_aside(path, {}, fix="writing it afresh") or {}
            if not same_json(cfg, old):  # unchanged: keep written_at
                atomic_write_json(path, dict(cfg, written_at=now_iso()))
        except StorageError as e:
            log.error("%s; training goes on without it (step 4 writes it again)", e)

    # -- evaluation: re-scoring, walk-forward, the report (v3_evaluation, v3_report) -----
    @_locked
    def rescore_pairs(self, keys: list[str] | None = None) -> dict:
        """Score trained pairs (all, or `keys`) again from their saved model and features, with
        no training. A pair that cannot be re-scored keeps its old numbers and gets a
        `rescore_error` (shown in the report)."""
        c = self.checked_config()
        with self._threads(c):
            return self._rescore(c, keys)

    def _rescore(self, c: PipelineConfig, keys: list[str] | None) -> dict:
        done = {}
        for key, entry in self.store.trained().items():
            if keys is not None and key not in keys:
                continue
            try:
                fields = rescore_pair(self.layout, entry, fee_per_side=c.fee_per_side,
                                      patience=c.train.patience)
            except V3Error as e:  # one unreadable file costs that pair's re-scoring only
                reason = shorten(str(e), 200)
                log.warning("%s: not re-scored: %s: %s (re-train it: --retrain)", key, type(e).__name__,
                            reason)
                self.store.update(key, rescore_error=reason)
                continue
            done[key] = self.store.update(key, rescore_error=None, **fields)
        log.info("re-scored %s from their saved models", plural(len(done), "pair"))
        return done

    @_locked
    def step_4_walk_forward(self, k: int, *, retrain: bool = False) -> dict:
        """Retrain every pair on K successive origins (expanding window; everything refitted on
        each fold's own training rows) and score each fold's next block of test samples;
        per-fold and pooled metrics go into the results under `walk_forward`. A finished fold
        is kept unless `retrain`."""
        c = dataclasses.replace(self.checked_config(), walk_forward=k)
        with self._threads(c):
            return self._walk_forward(c, retrain=retrain)

    def _walk_forward(self, c: PipelineConfig, *, retrain: bool) -> dict:
        pairs = self.pairs()
        log.info("walk-forward: %d folds x %s (expanding window)", c.walk_forward,
                 plural(len(pairs), "pair"))
        done = {}
        for symbol, interval in pairs:
            key = pair_key(symbol, interval)
            src = self.layout.data_path(symbol, interval)
            if not src.exists():
                log.warning("%s: walk-forward skipped, no data file %s (run step 2)", key, src.name)
                continue
            running = lambda folds, key=key: self.store.update(  # noqa: E731
                key, walk_forward={"k": c.walk_forward, "status": "running", "folds": folds})
            try:
                wf = walk_forward_pair(latest_candles(read_klines(src), c.candles), symbol,
                                       interval, c, layout=self.layout, retrain=retrain,
                                       prior=self.store.entry(key).get("walk_forward") or {},
                                       on_fold=running)
            except V3Error as e:
                reason = " ".join(str(e).split())
                log.error("%s %s: walk-forward failed: %s", symbol, interval, reason)
                self.store.update(key, walk_forward={"k": c.walk_forward, "status": FAILED,
                                                     "reason": reason})
                continue
            done[key] = self.store.update(key, walk_forward=wf)["walk_forward"]
        return done

    @_locked
    def write_report(self, *, rescore: bool = False) -> dict:
        """The across-pair summary (into the results JSON under '_summary') and
        results/report.md + report.html with plots. `rescore` first re-scores every pair;
        pairs scored by an older V3 (no baselines or backtest yet) or with another fee are
        re-scored anyway."""
        return self._report(self.checked_config(), rescore=rescore)

    def _report(self, c: PipelineConfig, *, rescore: bool = False) -> dict:
        with self._threads(c):  # re-scoring with training's thread count
            return self._summarize_and_write(c, rescore=rescore)

    @staticmethod
    def _threads(c: PipelineConfig):
        """torch's CPU thread count for step 4's work, put back when it ends (cpu_threads)."""
        return cpu_threads(c.train.threads, resolve_device(c.train.device))

    def _summarize_and_write(self, c: PipelineConfig, *, rescore: bool) -> dict:
        old = [k for k, v in self.store.trained().items()
               if (v.get("backtest") or {}).get("fee_per_side") != c.fee_per_side]
        if rescore or old:
            self._rescore(c, None if rescore else old)
        results = self.store.load()
        entries = {k: v for k, v in self.store.trained().items() if (v.get("test") or {}).get("n")}
        summary = summarize_pairs(entries)
        if any((v.get("baseline") or {}).get("garch") for v in entries.values()):
            summary["intervals"] = summarize_intervals({  # the model's block is test.interval
                k: {"interval": v["test"].get("interval"), "baseline": v["baseline"]}
                for k, v in entries.items()})
        # no clock in the summary: an unchanged run leaves the results file unchanged
        summary["fee_per_side"] = c.fee_per_side
        if results.get("_summary") != summary:
            results["_summary"] = summary
            self.store.write_all(results)
        paths = write_report(self.base_dir, results, plots=c.plots)
        log.info("%s%s", "[SYNTHETIC DATA] " if summary["synthetic"] else "",
                 summary_sentences(summary)[0].replace("**", ""))
        log.info("report: %s (and %s)", paths["md"], paths["html"].name)
        return summary

    # -- step 5 ------------------------------------------------------------------------
    @_locked
    def step_5_upload_to_huggingface(self, repo_id: str | None = None, *, token: str | None = None,
                                     private: bool | None = None,
                                     folder: str | None = None) -> dict | None:
        """Upload every model, the results, the config and a model card in ONE commit.

        Repo default '<your user>/cpb-models', folder 'v3' (config.hf_repo / hf_folder /
        hf_private). Returns what v3_hub.upload_to_hub returns; None when skipped for want of
        a token (one log line says how to give one). Raises UploadError on a bad token (401),
        no write access (403), a model file that does not load, or a repo that cannot be
        created. Local files are only read.
        """
        c = self.config
        log.info("STEP 5/5: upload to the Hugging Face Hub")
        self.store.load()  # a damaged results file is set aside and rebuilt before it goes up
        return upload_to_hub(self.base_dir, repo_id=repo_id or c.hf_repo,
                             token=token or self._hf_token, folder=folder or c.hf_folder,
                             private=c.hf_private if private is None else private,
                             show_progress=c.show_progress)

    # -- all ---------------------------------------------------------------------------
    @_locked
    def run_full_pipeline(self, epochs: int | None = None, batch_size: int | None = None,
                          learning_rate: float | None = None, *, retrain: bool = False,
                          upload: bool | None = None) -> dict:
        """Steps 1-5 in order; None keeps the config's value (the guide's 100, 32, 0.001, or
        the demo's 5 epochs). Returns the results (also in results/v3_training_results.json)."""
        c = self.checked_config(epochs=epochs, batch_size=batch_size,
                                learning_rate=learning_rate)  # bad input fails before any work
        self.step_1_setup_environment()
        self._download(c)
        self._preprocess(c, retrain=retrain)
        results = self._train(c, retrain=retrain)
        if not (c.upload if upload is None else upload):
            log.info("STEP 5/5: upload switched off")
        elif not self.usable(results):
            log.error("STEP 5/5: no pair trained, nothing to upload: see the reasons in %s",
                      self.results_path)
        else:
            self.step_5_upload_to_huggingface()
        return results

    def usable(self, results: dict | None = None) -> int:
        """How many of this run's pairs have a model (status success or skipped)."""
        results = self.store.load() if results is None else results
        return sum(1 for s, i in self.pairs()
                   if results.get(pair_key(s, i), {}).get("status") in TRAINED)


# ---------------------------------------------------------------------------------------


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError as e:  # only costs the same warning once more in step 4
        log.debug("could not touch %s: %s", path, e)


# ---------------------------------------------------------------------------------------
# Command line (the options are in v3_cli)


def pipeline_from_args(args) -> tuple[V3CoLabPipeline, list[str]]:
    """The pipeline and the steps (in order) that the parsed options ask for."""
    cfg = demo_config() if args.demo else PipelineConfig()
    train_over, top = config_overrides(args)
    if "quantile_scale" in top:
        top["model"] = dataclasses.replace(cfg.model, quantile_scale=top.pop("quantile_scale"))
    cfg = dataclasses.replace(cfg.with_training(**train_over), **top)
    pipe = V3CoLabPipeline(args.base_dir, config=cfg, coins=split_list(args.coins),
                           timeframes=split_list(args.timeframes), wait_for_lock=args.wait_lock)
    asked = {s for group in args.steps for s in group} if args.steps else set(STEPS)
    return pipe, [s for s in STEPS if s in asked]


def _run_steps(pipe: V3CoLabPipeline, c: PipelineConfig, steps: list[str], args) -> int | None:
    """Run the steps; the number of pairs the last step produced (None: no step produced)."""
    produced = None
    for step in steps:
        if step == "setup":
            pipe.step_1_setup_environment()
        elif step == "download":
            produced = len(pipe._download(c))
        elif step == "preprocess":
            produced = len(pipe._preprocess(c, retrain=args.retrain))
        elif step == "train":
            produced = pipe.usable(pipe._train(c, retrain=args.retrain))
        elif step == "upload":
            if not c.upload:
                log.info("STEP 5/5: upload switched off (--no-upload, or --demo without --hf-repo)")
            elif produced == 0 or not pipe.usable():
                log.error("STEP 5/5: no pair trained, nothing to upload: see the reasons in %s",
                          pipe.results_path)
                return 0
            elif pipe.step_5_upload_to_huggingface() is None and (args.hf_repo or args.steps):
                # asked for by name, and skipped for want of a token: not a success
                log.error("STEP 5/5: the upload you asked for was skipped: no Hugging Face "
                          "token (set HF_TOKEN or run `hf auth login`; --no-upload to skip)")
                return 0
    return produced


# a step that could not finish: exit 1 (the message says what to repair; re-run to go on),
# where any other V3Error is bad input, a refused token or a folder in use: exit 2
FAILED_STEP_ERRORS = (StorageError, RetryableUploadError, DamagedFileError)


def _report_only(pipe: V3CoLabPipeline, c: PipelineConfig) -> int:
    pipe._report(c, rescore=True)
    failed = [k for k, v in pipe.store.trained().items() if v.get("rescore_error")]
    if failed:
        log.error("could not re-score %s (%s): see the report; re-train with --retrain",
                  plural(len(failed), "pair"), ", ".join(failed))
        return 1
    return 0 if pipe.usable() else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("WARNING" if args.quiet else "INFO")
    t0 = time.perf_counter()
    pipe = None
    try:
        pipe, steps = pipeline_from_args(args)
        setup_logging("WARNING" if args.quiet else "INFO")  # the pipeline set INFO: --quiet wins
        c = pipe.checked_config()  # the one check, before any work
        if c.preset == "demo":
            log.info("demo preset: SYNTHETIC candles, small model (hidden %d, %d layers), %s",
                     c.model.hidden_size, c.model.num_layers, plural(c.train.epochs, "epoch"))
        with pipe.run_lock:  # one run per base_dir (RunLockedError: exit 2)
            if args.report_only:
                return _report_only(pipe, c)
            produced = _run_steps(pipe, c, steps, args)
    except FAILED_STEP_ERRORS as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    except V3Error as e:
        log.error("%s: %s", type(e).__name__, e)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted: everything finished so far is saved in %s; re-run to resume",
                    pipe.base_dir if pipe else "base_dir")
        return 130
    log.info("done in %.1f s; outputs in %s", time.perf_counter() - t0, pipe.base_dir.resolve())
    if pipe.store.unsaved:
        log.error("%s could not be written (the StorageError above says why): fix that and "
                  "re-run; the models saved are rebuilt into it", pipe.results_path)
        return 1
    if produced == 0:
        log.error("nothing usable was produced: see %s", pipe.results_path)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
