"""The three Colab cells (install, fetch, run) as data, and the notebook made from them.

    python v3_colab_cell.py                              # print the three cells, ready to paste
    python v3_colab_cell.py --cell 3                     # print one of them
    python v3_colab_cell.py --notebook V3_colab.ipynb    # write the Colab notebook (GPU runtime)
    python v3_colab_cell.py --repo-url https://raw.githubusercontent.com/<you>/<repo>/<branch> ...

Cell 1 installs only what Colab lacks (python-binance, huggingface-hub, arch, tenacity; never torch), creates
the folders and reports the GPU. Cell 2 fetches every module the pipeline imports from one
repository URL (REPO_URL at the top of the cell) and checks that each is Python. Cell 3 has a
few lines to edit, then runs `V3CoLabPipeline(...).run_full_pipeline(...)`. Every cell is safe
to re-run.

Environment variables the cells read (all optional; the tests use them):
    V3_BASE_DIR     the content folder (default /content in Colab, else ./v3_output)
    V3_REPO_URL     replaces REPO_URL in cell 2 (the raw-file root of a repository and branch)
    V3_COINS        cell 3's COINS, comma- or space-separated (BTCUSDT,ETHUSDT)
    V3_TIMEFRAMES   cell 3's TIMEFRAMES (15m,1h)
    V3_EPOCHS       cell 3's EPOCHS
    V3_HF_REPO      cell 3's HF_REPO
    V3_DEMO=1       the demo preset: synthetic candles, a small model, BTCUSDT+ETHUSDT and the
                    preset's 5 epochs unless V3_COINS / V3_EPOCHS say otherwise, no upload
                    unless HF_REPO is set
    V3_CANDLES      candles per pair (default 3000; the demo 2000)

The module list of cell 2 is derived from the repository (the modules `v3_colab_training`
imports, directly or not, at the top of a file or inside a function), and so are the
version floors of cell 1 (requirements.txt). Regenerate the notebook after changing either;
tests/test_colab_cell.py fails until the committed notebook matches.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

from v3_common import atomic_write_bytes

HERE = Path(__file__).resolve().parent
REPO_URL = "https://raw.githubusercontent.com/caizongxun/cpbv2/main"  # the guide's repository
NOTEBOOK_NAME = "V3_colab.ipynb"
ENTRY_MODULES = ("v3_colab_training", "v3_predict")  # cell 2 fetches these and all they import
# (pip name, import name) of what V3 needs and Colab may lack; torch is never on this list.
COLAB_PACKAGES = (("python-binance", "binance"), ("huggingface-hub", "huggingface_hub"),
                  ("arch", "arch"), ("tenacity", "tenacity"))  # installed only when missing
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


class CellConfigError(ValueError):
    """The generator was given something it cannot build cells from (a bad URL, a bad repo)."""


# ---------------------------------------------------------------------------------------
# What the cells are made from, derived from the repository.


def _imported_v3_names(source: str, filename: str) -> set[str]:
    """Names `v3_*` that a module imports anywhere (top level or inside functions), plus
    string constants such as importlib.import_module('v3_x')."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"v3_[A-Za-z0-9_]+", node.value):
                names.add(node.value)
    return {n for n in names if n.startswith("v3_")}


def pipeline_modules(root: str | Path = HERE, *,
                     entries: tuple[str, ...] = ENTRY_MODULES) -> list[str]:
    """File names of every top-level v3_*.py module the entry modules can import, sorted."""
    root = Path(root)
    todo, seen = list(entries), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = root / f"{name}.py"
        if not path.is_file():
            if name in entries:
                raise CellConfigError(f"entry module {path} does not exist: run the generator "
                                      f"from a V3 checkout.")
            continue  # a string such as 'v3_model' that names no module here
        seen.add(name)
        todo.extend(_imported_v3_names(path.read_text(encoding="utf-8"), str(path)) - seen)
    return sorted(f"{n}.py" for n in seen)


def package_floors(root: str | Path = HERE) -> dict[str, str]:
    """{'python-binance': '1.0.19', ...}: the floors requirements.txt gives COLAB_PACKAGES."""
    req = Path(root) / "requirements.txt"
    floors = {}
    for line in req.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", line)
        if m:
            floors[m.group(1).lower().replace("_", "-")] = m.group(2)
    missing = [pip for pip, _ in COLAB_PACKAGES if pip not in floors]
    if missing:
        raise CellConfigError(f"{req} gives no '>=' floor for {', '.join(missing)}: add a line "
                              f"such as '{missing[0]}>=1.0'.")
    return {pip: floors[pip] for pip, _ in COLAB_PACKAGES}


def check_repo_url(repo_url: str) -> str:
    if not re.fullmatch(r"https?://[^\s'\"\\]+", repo_url or ""):
        raise CellConfigError(f"repository URL {repo_url!r} is not an http(s) URL: give the raw-"
                              f"file root of a repository and branch, such as {REPO_URL}.")
    return repo_url.rstrip("/")


def colab_url(repo_url: str = REPO_URL, notebook: str = NOTEBOOK_NAME) -> str | None:
    """'Open in Colab' link for a raw.githubusercontent.com root; None for other hosts."""
    m = re.fullmatch(
        r"https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/(?:refs/heads/)?(.+?)/?", repo_url)
    if not m:
        return None
    owner, repo, branch = m.groups()
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/{notebook}"


# ---------------------------------------------------------------------------------------
# The cells. Plain Python (no `!` magics), so each also runs as `python -c`.

_BASE_DIR_LINES = '''\
# The content folder: $V3_BASE_DIR, else /content in Colab, else ./v3_output.
IN_COLAB = "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))
BASE_DIR = Path(os.environ.get("V3_BASE_DIR") or ("/content" if IN_COLAB else "v3_output"))
BASE_DIR = BASE_DIR.resolve()'''

CELL_1 = '''\
# V3 cell 1 of 3: install what Colab lacks, create the folders, check the GPU. Safe to re-run.
import importlib, importlib.metadata, importlib.util, os, re, subprocess, sys
from pathlib import Path

@@BASE_DIR_LINES@@

# Colab already has torch, numpy, pandas, scikit-learn and tqdm. This cell never installs torch.
# pip name: (import name, lowest version V3 works with, from requirements.txt)
NEEDED = @@NEEDED@@


def _version(v):
    return tuple(int(x) for x in re.findall(r"\\d+", v)[:3])


def _installed(pip_name, module):
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


to_install = []
for pip_name, (module, floor) in NEEDED.items():
    have = _installed(pip_name, module)  # None: missing; "?": present, version unknown
    if have is None or (have != "?" and _version(have) < _version(floor)):
        to_install.append(f"{pip_name}>={floor}")
if to_install:
    cmd = [sys.executable, "-m", "pip", "install", "-q", *to_install]
    print("$ pip install -q " + " ".join(to_install))
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise RuntimeError(f"pip install {' '.join(to_install)} failed (exit {rc}): see pip's "
                           f"message above, fix it (internet? disk?), then re-run this cell.")
    importlib.invalidate_caches()
else:
    print("nothing to install: " + ", ".join(NEEDED) + " already present")
for pip_name, (module, floor) in NEEDED.items():
    have = _installed(pip_name, module)
    print(f"  {pip_name} {have}" if have else
          f"  {pip_name} still missing: Runtime > Restart session, then re-run this cell")

for sub in ("data", "all_models", "results"):
    (BASE_DIR / sub).mkdir(parents=True, exist_ok=True)
print(f"folders ready: {BASE_DIR}/data, all_models, results")

try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: Colab has it; elsewhere install it from https://pytorch.org")
if torch is not None and torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 1e9:.2f} GB (torch {torch.__version__})")
elif torch is not None:
    print(f"No GPU (torch {torch.__version__}): training would run on the CPU, very slowly. "
          "In Colab: Runtime > Change runtime type > T4 GPU, then run the cells again.")
'''

CELL_2 = '''\
# V3 cell 2 of 3: fetch the V3 modules. Safe to re-run: a failed fetch keeps the files you had.
# To run your fork, set REPO_URL to https://raw.githubusercontent.com/<user>/<repo>/<branch>
REPO_URL = "@@REPO_URL@@"

import hashlib, importlib, importlib.util, os, sys, time, urllib.error, urllib.request
from pathlib import Path

REPO_URL = (os.environ.get("V3_REPO_URL") or REPO_URL).rstrip("/")  # the environment wins
@@BASE_DIR_LINES@@

# Every module the pipeline imports (generated from the repository by v3_colab_cell.py).
MODULES = @@MODULES@@


class ComponentDownloadError(RuntimeError):
    """A module could not be fetched from REPO_URL, or what came back is not Python."""


def fetch_module(name, tries=3):
    """The bytes of REPO_URL/name, checked to be non-empty Python (not an HTML page)."""
    url = f"{REPO_URL}/{name}"
    fix = (f"Check REPO_URL (now {REPO_URL}): it must be the raw-file root of a public "
           f"repository and branch, like https://raw.githubusercontent.com/<user>/<repo>/<branch>, "
           f"with {name} pushed there.")
    for attempt in range(1, tries + 1):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
            break
        except urllib.error.HTTPError as e:  # 404: wrong URL or file not pushed; 429/5xx: retry
            if e.code in (429, 500, 502, 503, 504) and attempt < tries:
                time.sleep(2 * attempt)
                continue
            raise ComponentDownloadError(
                f"{name}: {url} answered HTTP {e.code} {e.reason}. {fix}") from None
        except OSError as e:  # no connection, DNS, timeout
            if attempt < tries:
                time.sleep(2 * attempt)
                continue
            raise ComponentDownloadError(f"{name}: could not reach {url} ({e}). Check the "
                                         f"internet connection, then re-run this cell.") from None
    text = body.decode("utf-8", errors="replace").lstrip("\\ufeff")
    if not text.strip():
        raise ComponentDownloadError(f"{name}: {url} returned an empty file, not Python. {fix}")
    if text.lstrip().startswith("<"):
        raise ComponentDownloadError(f"{name}: {url} returned an HTML page, not Python (a login, "
                                     f"error or github.com page instead of the raw file). {fix}")
    try:
        compile(text, name, "exec")
    except SyntaxError as e:
        raise ComponentDownloadError(f"{name}: {url} is not valid Python (line {e.lineno}: "
                                     f"{e.msg}). {fix}") from None
    return body


print(f"fetching {len(MODULES)} modules from {REPO_URL}")
fetched = {name: fetch_module(name) for name in MODULES}  # all checked before any is written
BASE_DIR.mkdir(parents=True, exist_ok=True)
for name, body in fetched.items():
    path = BASE_DIR / name
    old = path.read_bytes() if path.exists() else None
    if old == body:
        state = "unchanged"
    else:
        tmp = path.with_name(f".{name}.part")
        tmp.write_bytes(body)
        os.replace(tmp, path)  # atomic: an interruption never leaves half a module
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        state = "new" if old is None else "updated"
    digest = hashlib.sha256(body).hexdigest()[:12]
    print(f"  {name:<24} {len(body):>7,} bytes  sha256 {digest}  {state}")

if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))
for module in [m for m in sys.modules if m.startswith("v3_")]:
    del sys.modules[module]  # the next import reads the files just fetched
importlib.invalidate_caches()
print(f"{len(MODULES)} modules ready in {BASE_DIR}")
'''

CELL_3 = '''\
# V3 cell 3 of 3: train one model per coin and timeframe, then upload them to the Hugging Face
# Hub. Edit these lines, then run. Re-running resumes: trained pairs are skipped.
COINS = [
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "LTCUSDT", "ADAUSDT", "SOLUSDT",
    "DOGEUSDT", "AVAXUSDT", "LINKUSDT", "MATICUSDT", "ATOMUSDT", "NEARUSDT", "FTMUSDT",
    "ARBUSDT", "OPUSDT", "STXUSDT", "INJUSDT", "LUNCUSDT", "LUNAUSDT",
]  # delete the ones you do not want
TIMEFRAMES = ["15m", "1h"]
EPOCHS = 100
HF_REPO = None  # e.g. "your-name/cpb-models"; None: <your user>/cpb-models
# The Hub token comes from the Colab secret HF_TOKEN (key icon, left bar) or $HF_TOKEN; it is
# never printed. With no token, the upload step is skipped with a hint.

import importlib, os, sys
from pathlib import Path

@@BASE_DIR_LINES@@

# Optional overrides (README): V3_COINS, V3_TIMEFRAMES, V3_EPOCHS, V3_HF_REPO, V3_DEMO, V3_CANDLES
env = os.environ
DEMO = env.get("V3_DEMO", "0").strip().lower() not in ("", "0", "false", "no")
if env.get("V3_COINS"):
    COINS = env["V3_COINS"].replace(",", " ").split()
if env.get("V3_TIMEFRAMES"):
    TIMEFRAMES = env["V3_TIMEFRAMES"].replace(",", " ").split()
if env.get("V3_HF_REPO"):
    HF_REPO = env["V3_HF_REPO"]

if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))
for module in [m for m in sys.modules if m.startswith("v3_")]:
    del sys.modules[module]  # always run the modules cell 2 fetched last
importlib.invalidate_caches()
from v3_colab_training import (DEMO_COINS, ConfigError, PipelineConfig, V3CoLabPipeline,
                               demo_config)


def env_int(name, default):
    """A whole-number override from the environment (V3_EPOCHS, V3_CANDLES), or default."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number: set it to one (for example "
                          f"{name}=50) or unset it (os.environ.pop({name!r}))") from None


config = demo_config() if DEMO else PipelineConfig()  # demo: synthetic candles, small model
if DEMO and not env.get("V3_COINS"):
    COINS = DEMO_COINS
# None keeps the demo preset's 5 epochs
EPOCHS = env_int("V3_EPOCHS", None if DEMO else EPOCHS)
pipeline = V3CoLabPipeline(
    BASE_DIR, config=config, coins=COINS, timeframes=TIMEFRAMES, hf_repo=HF_REPO,
    upload=config.upload or HF_REPO is not None,  # the demo uploads only to a repo you name
    candles=env_int("V3_CANDLES", config.candles))
try:
    results = pipeline.run_full_pipeline(epochs=EPOCHS, batch_size=32, learning_rate=0.001)
except KeyboardInterrupt:
    print("stopped: everything finished so far is saved; run this cell again to resume")
else:
    keys = [f"{symbol}_{interval}" for symbol, interval in pipeline.pairs()]
    ready = [k for k in keys if results.get(k, {}).get("status") in ("success", "skipped")]
    print(f"{len(ready)} of {len(keys)} models ready in {pipeline.models_dir}; "
          f"results in {pipeline.results_path}")
'''


def cells(*, repo_url: str = REPO_URL, root: str | Path = HERE) -> list[str]:
    """The three cells' sources, for this repository and this REPO_URL."""
    repo_url = check_repo_url(repo_url)
    floors = package_floors(root)
    needed = "{" + ", ".join(f'"{pip}": ("{mod}", "{floors[pip]}")'
                             for pip, mod in COLAB_PACKAGES) + "}"
    modules = pipeline_modules(root)
    modules_lit = "[\n" + "".join(f'    "{m}",\n' for m in modules) + "]"
    out = []
    for src in (CELL_1, CELL_2, CELL_3):
        src = (src.replace("@@BASE_DIR_LINES@@", _BASE_DIR_LINES)
                  .replace("@@NEEDED@@", needed)
                  .replace("@@REPO_URL@@", repo_url)
                  .replace("@@MODULES@@", modules_lit))
        out.append(src.rstrip("\n") + "\n")
    return out


# ---------------------------------------------------------------------------------------
# The notebook (nbformat v4, written with the standard library; Colab metadata for a GPU).

CELL_TITLES = (
    "## Cell 1: install what Colab lacks, create the folders, check the GPU",
    "## Cell 2: fetch the V3 modules\nTo run your fork, change `REPO_URL` at the top.",
    "## Cell 3: train and upload\nEdit `COINS`, `TIMEFRAMES`, `EPOCHS` and `HF_REPO`, then run. "
    "Re-running resumes where it stopped.",
)


def _intro(repo_url: str) -> str:
    link = colab_url(repo_url)
    badge = f"[![Open In Colab]({COLAB_BADGE})]({link})\n\n" if link else ""
    return (
        f"# V3: train the 40 crypto forecasters on a Colab GPU\n\n{badge}"
        "1. **Runtime > Change runtime type > T4 GPU** (the notebook asks for one).\n"
        "2. To upload the models, add your Hugging Face token (write access, from "
        "https://huggingface.co/settings/tokens) as the Colab secret `HF_TOKEN` "
        "(key icon on the left). Without it everything runs and the upload is skipped.\n"
        "3. Run the three cells in order. Any cell can be re-run; training resumes.\n\n"
        "Outputs go to `/content`: `data/`, `all_models/v3_model_*.pt`, "
        "`results/v3_training_results.json` (every metric next to the naive "
        "'next close = last close' baseline).\n\n"
        "Optional environment variables: `V3_BASE_DIR` (content folder), `V3_REPO_URL`, "
        "`V3_COINS`, `V3_TIMEFRAMES`, `V3_EPOCHS`, `V3_HF_REPO`, `V3_CANDLES`, and `V3_DEMO=1` "
        "(synthetic candles and a small model). This notebook is generated by "
        "`python v3_colab_cell.py --notebook V3_colab.ipynb`."
    )


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def notebook(*, repo_url: str = REPO_URL, root: str | Path = HERE) -> dict:
    repo_url = check_repo_url(repo_url)
    nb_cells = [{"cell_type": "markdown", "id": "v3-intro", "metadata": {},
                 "source": _lines(_intro(repo_url))}]
    for n, (title, src) in enumerate(zip(CELL_TITLES, cells(repo_url=repo_url, root=root)), 1):
        nb_cells.append({"cell_type": "markdown", "id": f"v3-cell-{n}-title", "metadata": {},
                         "source": _lines(title)})
        nb_cells.append({"cell_type": "code", "execution_count": None, "id": f"v3-cell-{n}",
                         "metadata": {}, "outputs": [], "source": _lines(src.rstrip("\n"))})
    return {
        "cells": nb_cells,
        "metadata": {
            "accelerator": "GPU",
            "colab": {"gpuType": "T4", "name": NOTEBOOK_NAME, "provenance": []},
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_json(*, repo_url: str = REPO_URL, root: str | Path = HERE) -> str:
    """The notebook as Jupyter writes it (1-space indent, sorted keys), ending in a newline."""
    return json.dumps(notebook(repo_url=repo_url, root=root), indent=1, sort_keys=True,
                      ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="v3_colab_cell.py", description=(
        "Print V3's three Colab cells, or write them as a Colab notebook with a GPU runtime."))
    p.add_argument("--notebook", metavar="PATH",
                   help=f"write the notebook here (e.g. {NOTEBOOK_NAME})")
    p.add_argument("--cell", type=int, choices=(1, 2, 3), help="print only this cell")
    p.add_argument("--repo-url", default=REPO_URL,
                   help=f"raw-file root the cells fetch from (default {REPO_URL})")
    args = p.parse_args(argv)
    try:
        if args.notebook:
            text = notebook_json(repo_url=args.repo_url)
            atomic_write_bytes(args.notebook, text.encode("utf-8"))
            print(f"wrote {args.notebook} ({len(text):,} bytes, "
                  f"{len(pipeline_modules())} modules fetched by cell 2)")
            return 0
        srcs = cells(repo_url=args.repo_url)
    except CellConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = [args.cell] if args.cell else [1, 2, 3]
    for n in chosen:
        if len(chosen) > 1:
            print(f"# ---------------- Colab cell {n} of 3 ----------------")
        print(srcs[n - 1], end="")
        if n != chosen[-1]:
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
