"""The run folder's layout: every path V3 reads or writes under `base_dir`, in one place.

    base_dir/
      data/SYMBOL_INTERVAL.csv              candles (step 2)   data/symbol_renames.json
      processed/SYMBOL_INTERVAL.npz         features + PCA + windows (step 3)
      checkpoints/SYMBOL_INTERVAL_resume.pt training state, for resuming (step 4)
      all_models/v3_model_SYMBOL_INTERVAL.pt the best model of each pair (step 4; uploaded in 5)
      results/v3_training_results.json      every metric, per pair
      results/config.json                   the settings of the run
      results/predictions/SYMBOL_INTERVAL.csv  per-sample test predictions
      results/walk_forward/SYMBOL_INTERVAL_foldK.csv
      results/report.md, report.html, plots/*.png
      .v3.lock, .v3.lock.holder             the run folder's lock and who holds it (v3_run_lock)

Pipeline, hub, report and predict ask a `RunLayout` for paths instead of spelling them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from v3_common import pair_key

RESULTS_FILE = "v3_training_results.json"
CONFIG_FILE = "config.json"
RENAMES_FILE = "symbol_renames.json"  # in data/: requested -> traded symbol (MATICUSDT -> POLUSDT)
LOCK_FILE = ".v3.lock"
MODEL_GLOB = "v3_model_*.pt"
MODEL_NAME_RE = re.compile(r"v3_model_([A-Z0-9]+)_(\w+)\.pt$")


def model_filename(symbol: str, interval: str) -> str:
    """'v3_model_BTCUSDT_15m.pt': a model's file name, locally and on the Hub."""
    return f"v3_model_{pair_key(symbol, interval)}.pt"


@dataclass(frozen=True)
class RunLayout:
    """Where each file of a run lives; `base_dir` is the only state."""
    base_dir: Path

    def __post_init__(self):
        object.__setattr__(self, "base_dir", Path(self.base_dir))

    # folders
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def processed_dir(self) -> Path:
        return self.base_dir / "processed"

    @property
    def checkpoints_dir(self) -> Path:
        return self.base_dir / "checkpoints"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "all_models"

    @property
    def results_dir(self) -> Path:
        return self.base_dir / "results"

    @property
    def predictions_dir(self) -> Path:
        return self.results_dir / "predictions"

    @property
    def plots_dir(self) -> Path:
        return self.results_dir / "plots"

    def folders(self) -> tuple[Path, ...]:
        """The folders step 1 creates."""
        return (self.data_dir, self.models_dir, self.predictions_dir, self.processed_dir,
                self.checkpoints_dir)

    # files
    @property
    def results_path(self) -> Path:
        return self.results_dir / RESULTS_FILE

    @property
    def config_path(self) -> Path:
        return self.results_dir / CONFIG_FILE

    @property
    def renames_path(self) -> Path:
        return self.data_dir / RENAMES_FILE

    @property
    def lock_path(self) -> Path:
        """The run folder's lock (a FileLock: held while a step runs)."""
        return self.base_dir / LOCK_FILE

    @property
    def lock_holder_path(self) -> Path:
        """Who holds the lock (pid, host, since, command), for the second run's message."""
        return self.base_dir / f"{LOCK_FILE}.holder"

    @property
    def report_md(self) -> Path:
        return self.results_dir / "report.md"

    @property
    def report_html(self) -> Path:
        return self.results_dir / "report.html"

    def data_path(self, symbol: str, interval: str) -> Path:
        return self.data_dir / f"{pair_key(symbol, interval)}.csv"

    def processed_path(self, symbol: str, interval: str) -> Path:
        return self.processed_dir / f"{pair_key(symbol, interval)}.npz"

    def resume_path(self, symbol: str, interval: str) -> Path:
        return self.checkpoints_dir / f"{pair_key(symbol, interval)}_resume.pt"

    def model_path(self, symbol: str, interval: str) -> Path:
        return self.models_dir / model_filename(symbol, interval)

    def predictions_path(self, symbol: str, interval: str) -> Path:
        return self.predictions_dir / f"{pair_key(symbol, interval)}.csv"

    def walk_forward_path(self, symbol: str, interval: str, fold: int) -> Path:
        """`fold` counts from 0; the file name from 1."""
        return self.results_dir / "walk_forward" / f"{pair_key(symbol, interval)}_fold{fold + 1}.csv"

    def model_files(self) -> list[Path]:
        return sorted(self.models_dir.glob(MODEL_GLOB))

    def relative(self, path: Path) -> str:
        """`path` relative to base_dir, as stored in the results JSON."""
        return str(Path(path).relative_to(self.base_dir))
