"""The settings of a run: one frozen `PipelineConfig`, checked once by `check_config`.

    from v3_config import PipelineConfig, check_config, demo_config
    cfg = check_config(dataclasses.replace(demo_config(), coins=("btc", "ETHUSDT")))

`check_config` raises a named error (ConfigError) for anything that cannot work, before any
heavy work, and returns the config with coins and timeframes normalised ('btc' -> 'BTCUSDT').
The pipeline calls it once per run; every step then receives the same checked value.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from v3_binance_data import api_urls_from_env
from v3_cli import SOURCES
from v3_common import (DEFAULT_COINS, DEFAULT_TIMEFRAMES, INTERVAL_MS, ConfigError,
                       check_interval, normalize_symbol, utc_minute)
from v3_data_processor import WARMUP_CANDLES, FeatureConfig, check_feature_config
from v3_evaluation import walk_forward_folds
from v3_hub import check_folder, check_repo_id
from v3_lstm_model import ModelConfig, check_model_config
from v3_market_data import SYNTHETIC_END_MS
from v3_trainer import TrainConfig, check_train_config, resolve_device

PRESETS = ("guide", "demo")
MAX_CANDLES = 5_000_000  # per pair: more than Binance has for any pair (1m since 2017)
SYNTHETIC_FIRST_MS = 1_483_228_800_000  # 2017-01-01 00:00 UTC: synthetic series start no earlier
DEMO_COINS = ("BTCUSDT", "ETHUSDT")
# training settings that run_full_pipeline() and step_4_train_models() take
RUN_TRAINING_ARGS = ("epochs", "batch_size", "learning_rate")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run depends on; written to results/config.json and into every checkpoint."""
    coins: tuple[str, ...] = tuple(DEFAULT_COINS)  # the guide's 20 (V3CoLabPipeline.COINS)
    timeframes: tuple[str, ...] = tuple(DEFAULT_TIMEFRAMES)  # (V3CoLabPipeline.TIMEFRAMES)
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
    plots: bool = True                # the report's PNG plots (False: its tables only, faster)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def short_data_hint(self) -> str:
        """What to do when a pair has too few candles: the fix that exists for its source."""
        need = self.features.min_candles()
        if self.source == "csv":
            return f"Give a longer SYMBOL_INTERVAL.csv (at least {need} candles)."
        if self.source == "synthetic":
            return f"Use --candles {need} or more."
        return f"Download more candles (--candles {max(need, self.candles)} or more)."

    def with_training(self, **overrides) -> "PipelineConfig":
        """A copy with the training settings replaced by those given (None: keep)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **given)) \
            if given else self


def demo_config() -> PipelineConfig:
    """The offline demo: synthetic candles, a small model, a few epochs (< 1 min on 2 cores)."""
    return PipelineConfig(
        coins=DEMO_COINS, candles=2000, source="synthetic", preset="demo", upload=False,
        model=ModelConfig(hidden_size=32, num_layers=2),
        train=TrainConfig(epochs=5, patience=5))


def config_with(cfg: PipelineConfig, overrides: dict) -> PipelineConfig:
    """`cfg` with PipelineConfig fields replaced (V3CoLabPipeline(candles=2000)); a training
    setting such as epochs, or an unknown name, is a ConfigError that says where it goes."""
    top = {f.name for f in dataclasses.fields(PipelineConfig)}
    bad = [k for k in overrides if k not in top]
    if not bad:
        return dataclasses.replace(cfg, **overrides) if overrides else cfg
    train = [k for k in bad if k in {f.name for f in dataclasses.fields(TrainConfig)}]
    if train:
        given = ", ".join(f"{k}={overrides[k]!r}" for k in train)
        run = ", ".join(f"{k}={overrides[k]!r}" for k in train if k in RUN_TRAINING_ARGS)
        fix = f"run_full_pipeline({run}) (or step_4_train_models), or " if run else ""
        raise ConfigError(f"V3CoLabPipeline({given}): training settings are not pipeline "
                          f"settings: pass them to {fix}the config: "
                          f"config=PipelineConfig(train=TrainConfig({given})).")
    raise ConfigError(f"V3CoLabPipeline() got {', '.join(map(repr, bad))}: not a setting of "
                      f"PipelineConfig; it has {', '.join(sorted(top))}.")


def check_pairs(coins, timeframes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Coins and timeframes as V3 uses them (normalised, de-duplicated); ConfigError on bad input."""
    if isinstance(coins, str) or not coins:
        raise ConfigError(f"COINS must be a non-empty list of symbols such as ['BTCUSDT'], "
                          f"got {coins!r}.")
    if isinstance(timeframes, str) or not timeframes:
        raise ConfigError(f"TIMEFRAMES must be a non-empty list such as ['15m', '1h'], "
                          f"got {timeframes!r}.")
    return (tuple(dict.fromkeys(normalize_symbol(c) for c in coins)),
            tuple(dict.fromkeys(check_interval(t) for t in timeframes)))


def check_config(c: PipelineConfig) -> PipelineConfig:
    """The one check of a run's settings, before any work: raises ConfigError naming the
    setting, what was given and how to fix it; returns the config with normalised pairs."""
    coins, timeframes = check_pairs(c.coins, c.timeframes)
    _check_source(c)
    if not isinstance(c.download_workers, int) or isinstance(c.download_workers, bool) \
            or not 1 <= c.download_workers <= 16:
        raise ConfigError(f"download_workers={c.download_workers!r}: use 1..16 (default 4; "
                          f"Binance's limits favour a few connections; --download-workers).")
    check_feature_config(c.features)
    need = c.features.min_candles()
    if not isinstance(c.candles, int) or c.candles < need:
        raise ConfigError(
            f"candles={c.candles!r} is too few: need >= {need} per pair (indicator warm-up "
            f"{WARMUP_CANDLES} + window {c.features.seq_len} + enough windows for the "
            f"70/15/15 splits). The guide uses 3000.")
    _check_candle_cap(c, timeframes)
    check_model_config(c.model)
    check_train_config(c.train)
    if c.train.stop_on == "pinball" and not c.model.quantiles:
        raise ConfigError("stop_on='pinball' stops on the quantile head's validation loss, but "
                          "the model has no quantile head (quantiles=()): use stop_on='loss'.")
    resolve_device(c.train.device)  # 'cuda' without a GPU, or a typo, fails here, not in step 4
    check_folder(c.hf_folder)       # a bad Hub folder or repo id fails now, not after training
    check_repo_id(c.hf_repo)
    if not (isinstance(c.fee_per_side, (int, float)) and 0 <= c.fee_per_side < 0.1):
        raise ConfigError(f"fee_per_side={c.fee_per_side!r} must be a fraction in [0, 0.1) "
                          f"(0.001 = 0.1 % per side, Binance's spot taker fee).")
    if not isinstance(c.walk_forward, int) or c.walk_forward < 0:
        raise ConfigError(f"walk_forward={c.walk_forward!r} must be a number of folds >= 1 "
                          f"(or 0 for none), e.g. --walk-forward 3.")
    _check_walk_forward(c)
    if c.preset not in PRESETS:
        raise ConfigError(f"preset {c.preset!r} is not one of {', '.join(PRESETS)}.")
    return dataclasses.replace(c, coins=coins, timeframes=timeframes)


def _check_candle_cap(c: PipelineConfig, timeframes: tuple[str, ...]) -> None:
    """ConfigError for more candles than any source can give: MAX_CANDLES for all, and for
    synthetic candles (which end at a fixed time) a start before SYNTHETIC_FIRST_MS."""
    if c.candles > MAX_CANDLES:
        raise ConfigError(
            f"candles={c.candles:,} is more than V3 takes ({MAX_CANDLES:,} per pair): no Binance "
            f"pair has that many (1m candles since 2017 are under 5 million), and one pair's "
            f"indicators alone would need {c.candles * 50 * 8 / 1e9:,.0f} GB of memory. Use "
            f"--candles {MAX_CANDLES} or fewer (the guide uses 3000).")
    if c.source != "synthetic":
        return
    for tf in sorted(timeframes, key=INTERVAL_MS.get, reverse=True):  # the longest first
        most = (SYNTHETIC_END_MS - SYNTHETIC_FIRST_MS) // INTERVAL_MS[tf] + 1
        if c.candles > most:
            first = SYNTHETIC_END_MS - (c.candles - 1) * INTERVAL_MS[tf]
            year = (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=first)).year
            raise ConfigError(
                f"candles={c.candles} synthetic {tf} candles would start in {year}: synthetic "
                f"series end at {utc_minute(SYNTHETIC_END_MS)} and start no earlier than "
                f"{utc_minute(SYNTHETIC_FIRST_MS)}, which is {most} {tf} candles. Use --candles "
                f"{most} or fewer.")


def _check_walk_forward(c: PipelineConfig) -> None:
    """ConfigError when `walk_forward` folds cannot fit in `candles` candles per pair, even
    with no gaps (gaps only take samples away): v3_evaluation.walk_forward_folds' own rule,
    on the most samples that many candles can give."""
    k, f = c.walk_forward, c.features
    n = c.candles - WARMUP_CANDLES - f.seq_len   # samples from gap-free candles
    if not k or _folds_fit(k, n, f):
        return
    test = n - int(n * f.train_frac) - int(n * f.val_frac)
    most = max((j for j in range(1, k) if _folds_fit(j, n, f)), default=0)
    left = n - k * test
    # each fold's test block is a test split (a share of the samples): more candles do not
    # make room for more folds, fewer folds do
    raise ConfigError(
        f"walk_forward={k} does not fit: each fold tests {test} samples (the test split of the "
        f"{n} that {c.candles} candles give after the warm-up {WARMUP_CANDLES} and the window "
        f"{f.seq_len}), so {k} folds leave the first fold "
        + (f"{left} samples" if left > 0 else "nothing") + " to train and validate on. "
        + (f"Use --walk-forward {most} or fewer." if most else
           "Not one fold fits: use more candles (--candles)."))


def _folds_fit(k: int, n_samples: int, f: FeatureConfig) -> bool:
    test = n_samples - int(n_samples * f.train_frac) - int(n_samples * f.val_frac)
    try:
        walk_forward_folds(np.arange(n_samples), k, test_size=test, train_frac=f.train_frac,
                           val_frac=f.val_frac, min_samples=f.min_split_samples)
    except ConfigError:
        return False
    return True


def _check_source(c: PipelineConfig) -> None:
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
        api_urls_from_env(c.api_urls)
        if c.archive_url is not None and not str(c.archive_url).startswith(("http://",
                                                                             "https://")):
            raise ConfigError(f"archive URL {c.archive_url!r} is not an http(s) URL: give the "
                              f"archive's root such as https://data.binance.vision "
                              f"(--archive-url or V3_BINANCE_ARCHIVE_URL).")
