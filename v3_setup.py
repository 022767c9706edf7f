"""Step 1: the run folder's folders, the packages V3 imports, and the device it will train on.

    report = setup_environment(RunLayout(base_dir))   # {'device', 'name', 'memory_gb', ...}
"""
from __future__ import annotations

import importlib
import warnings

import torch

from v3_common import log, storage_error
from v3_layout import RunLayout

PACKAGES = (("torch", "torch"), ("numpy", "numpy"), ("pandas", "pandas"),
            ("sklearn", "scikit-learn"), ("tqdm", "tqdm"), ("binance", "python-binance"),
            ("huggingface_hub", "huggingface-hub"), ("matplotlib", "matplotlib"))


def setup_environment(layout: RunLayout) -> dict:
    """Create the folders (StorageError when one cannot be), check the packages, report the
    device: {'device': 'cuda' or 'cpu', 'name', 'memory_gb', 'packages': {pip name: version},
    'missing': [pip names]}."""
    log.info("STEP 1/5: setup (base_dir %s)", layout.base_dir.resolve())
    for d in layout.folders():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(d, e) from e
    versions, missing = {}, []
    for mod, pip_name in PACKAGES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                versions[pip_name] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError:
            missing.append(pip_name)
    if missing:
        log.warning("missing packages: %s. Install them with: pip install %s",
                    ", ".join(missing), " ".join(missing))
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report = {"device": "cuda", "name": props.name,
                  "memory_gb": round(props.total_memory / 1e9, 2)}
        log.info("GPU: %s (%.2f GB)", props.name, props.total_memory / 1e9)
    else:
        report = {"device": "cpu", "name": "cpu", "memory_gb": None}
        log.info("No GPU found: training will run on the CPU and will be slow "
                 "(in Colab: Runtime > Change runtime type > GPU).")
    report.update(packages=versions, missing=missing)
    return report
