"""v3_colab_cell: the three Colab cells, run the way a user runs them.

The notebook test executes the committed V3_colab.ipynb in a real Jupyter kernel (nbclient +
ipykernel, the same Python as pytest). Cell 2 fetches from a small HTTP server on 127.0.0.1
that serves this checkout; the content folder is a temporary directory (V3_BASE_DIR); the run
uses the demo preset; proxies point nowhere, so nothing can reach the network; there is no
Hugging Face token. A fake `pip` package first on PYTHONPATH records any install command.
The cells are plain Python, so the other tests run one cell with `python -c`.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import v3_colab_cell
from v3_colab_cell import (NOTEBOOK_NAME, REPO_URL, CellConfigError, cells, check_repo_url,
                           colab_url, main, notebook_json, package_floors, pipeline_modules)
from v3_common import DEFAULT_COINS, DEFAULT_TIMEFRAMES

ROOT = Path(v3_colab_cell.__file__).resolve().parent
MODULES = pipeline_modules(ROOT)
KERNEL = "v3-test-python"


# ---------------------------------------------------------------------------------------
# Fixtures: a repository server, a fake pip, an offline environment.


class _RepoHandler(SimpleHTTPRequestHandler):
    def __init__(self, request, client_address, server):
        super().__init__(request, client_address, server, directory=str(server.root))

    def log_message(self, format, *args):  # quiet; keep the paths asked for
        self.server.paths.append(self.path)


@pytest.fixture
def repo_server():
    """An HTTP server on 127.0.0.1 serving `server.root` (the checkout unless changed)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RepoHandler)
    server.root, server.paths = ROOT, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_pip(tmp_path):
    """A `pip` package that records its arguments (one JSON line per call) instead of
    installing; exits with $FAKE_PIP_RC. Put first on PYTHONPATH, `python -m pip` finds it."""
    pkg = tmp_path / "fake_pip" / "pip"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import json, os, sys\n"
        "with open(os.environ['FAKE_PIP_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "sys.exit(int(os.environ.get('FAKE_PIP_RC', '0')))\n")
    return pkg.parent, tmp_path / "pip_calls.jsonl"


def _pip_calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _offline_env(tmp_path: Path, fake_pip, **v3: str) -> dict[str, str]:
    """os.environ without V3_/HF_/Colab/Jupyter settings, proxies to a closed port (only
    127.0.0.1 is reachable), no Hugging Face token, the fake pip first on PYTHONPATH."""
    drop = ("V3_", "HF_", "HUGGING_FACE", "COLAB_", "JUPYTER", "PYTHONPATH", "FAKE_PIP")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(drop) and k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[k] = "http://127.0.0.1:9"
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no stored login
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["PYTHONPATH"] = str(fake_pip[0])
    env["FAKE_PIP_LOG"] = str(fake_pip[1])
    env.update(v3)
    return env


def _run_cell(n: int, env: dict, *, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    src = cells(root=ROOT)[n - 1]
    return subprocess.run([sys.executable, "-c", prelude + src], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------
# The notebook in a real kernel.


def _kernelspec(tmp_path: Path) -> Path:
    """A kernelspec that starts ipykernel with this very Python (the venv), found through
    JUPYTER_PATH under a name no other installation uses."""
    d = tmp_path / "jupyter" / "kernels" / KERNEL
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "V3 test Python", "language": "python"}))
    return tmp_path / "jupyter"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append(o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            out.append(o["data"].get("text/plain", ""))
        elif o["output_type"] == "error":
            out.append(f"{o['ename']}: {o['evalue']}")
    return "".join(out)


@pytest.mark.slow
def test_notebook_runs_in_a_kernel_like_in_colab(tmp_path, monkeypatch, repo_server, fake_pip):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    content, workdir = tmp_path / "content", tmp_path / "work"
    workdir.mkdir()
    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(content), V3_REPO_URL=repo_server.url,
                       V3_DEMO="1", V3_COINS="BTCUSDT", V3_TIMEFRAMES="1h", V3_EPOCHS="1",
                       V3_CANDLES="520", V3_HF_REPO="tester/cpb-models")
    env["JUPYTER_PATH"] = str(_kernelspec(tmp_path))
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "jupyter_runtime")
    for k in list(os.environ):
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the kernel inherits this environment

    nb = nbformat.read(ROOT / NOTEBOOK_NAME, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert len(code) == 3
    client = NotebookClient(nb, timeout=240, kernel_name=KERNEL, allow_errors=False,
                            resources={"metadata": {"path": str(workdir)}})

    def run(i: int) -> str:  # raises CellExecutionError if the cell fails
        client.execute_cell(nb.cells[i], i)
        return _text(nb.cells[i])

    def probe(source: str) -> str:
        nb.cells.append(nbformat.v4.new_code_cell(source))
        return run(len(nb.cells) - 1)

    changed = tmp_path / "changed_repo"
    changed.mkdir()
    for name in MODULES:
        shutil.copy2(ROOT / name, changed / name)
    with open(changed / "v3_common.py", "a") as f:
        f.write('\nV3_TEST_MARKER = "second fetch"\n')

    with client.setup_kernel():
        c1, c2, c3 = (run(i) for i in code)
        results = json.loads((content / "results" / "v3_training_results.json").read_text())
        model = (content / "all_models" / "v3_model_BTCUSDT_1h.pt").read_bytes()
        where = probe("import sys, v3_colab_training\n"
                      "print(sys.executable)\nprint(v3_colab_training.__file__)")
        repo_server.root = changed  # the user pushed a change to v3_common.py
        r1, r2, r3 = (run(i) for i in code)  # ...and re-runs every cell
        marker = probe("import sys\nprint(sys.modules['v3_common'].V3_TEST_MARKER)")

    # cell 1: nothing to install (both packages are here), never torch, folders, GPU hint
    assert "nothing to install" in c1 and "nothing to install" in r1
    assert _pip_calls(fake_pip[1]) == [] and "pip install" not in c1 + r1
    assert "No GPU" in c1 and "Change runtime type" in c1
    assert all((content / d).is_dir() for d in ("data", "all_models", "results"))

    # cell 2: every module fetched from the server, checked and written; then unchanged
    assert f"{len(MODULES)} modules ready in {content}" in c2
    for name in MODULES:
        assert (content / name).read_bytes() == (changed / name).read_bytes()  # the latest
        assert f"/{name}" in repo_server.paths
        assert any(line.split()[:1] == [name] and line.endswith("new") for line in c2.splitlines())
        state = "updated" if name == "v3_common.py" else "unchanged"
        assert any(line.split()[:1] == [name] and line.endswith(state) for line in r2.splitlines())
    assert set(repo_server.paths) == {f"/{m}" for m in MODULES}

    # the kernel is this Python, and it imported the fetched copies, not the checkout
    exe, module_file = where.split()
    assert exe == sys.executable
    assert Path(module_file).parent == content
    assert marker.strip() == "second fetch"  # re-running cells 2 and 3 picked up new code

    # cell 3: the demo trained the pair, wrote models and results, skipped the upload
    assert "STEP 4/5" in c3 and "1 of 1 models ready" in c3
    assert "SYNTHETIC" in c3
    step5 = c3[c3.index("STEP 5/5"):].lower()
    assert "token" in step5 and "skipped" in step5
    assert (content / "results" / "predictions" / "BTCUSDT_1h.csv").is_file()
    assert results["BTCUSDT_1h"]["status"] == "success"
    assert results["BTCUSDT_1h"]["synthetic"] is True
    # re-run: nothing retrained, same model
    assert "already trained" in r3 and "1 of 1 models ready" in r3
    assert json.loads((content / "results" / "v3_training_results.json").read_text())[
        "BTCUSDT_1h"]["status"] == "skipped"
    assert (content / "all_models" / "v3_model_BTCUSDT_1h.pt").read_bytes() == model


# ---------------------------------------------------------------------------------------
# Cell 1: install only what is missing, never torch.


# The kernel test runs cell 1 with the real torch (the GPU report); these hide it, which is
# quicker and shows that even a missing torch is never installed.
NO_TORCH = "import sys\nsys.modules['torch'] = None\n"


def test_cell1_installs_nothing_when_every_package_is_present(tmp_path, fake_pip):
    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(tmp_path / "content"))
    r = _run_cell(1, env, cwd=tmp_path, prelude=NO_TORCH)
    assert r.returncode == 0, r.stderr
    assert ("nothing to install: python-binance, huggingface-hub, arch, tenacity already present"
            in r.stdout)
    assert "torch is not installed: Colab has it" in r.stdout
    assert _pip_calls(fake_pip[1]) == []


@pytest.mark.parametrize("hidden, expected", [
    (["binance"], ["python-binance"]),
    (["binance", "huggingface_hub"], ["python-binance", "huggingface-hub"]),
])
@pytest.mark.slow
def test_cell1_installs_only_the_missing_packages_never_torch(tmp_path, fake_pip, hidden, expected):
    floors = package_floors(ROOT)
    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(tmp_path / "content"))
    # a module set to None in sys.modules is one that importlib cannot find
    prelude = NO_TORCH + "".join(f"sys.modules[{m!r}] = None\n" for m in hidden)
    r = _run_cell(1, env, cwd=tmp_path, prelude=prelude)
    assert r.returncode == 0, r.stderr
    want = [f"{p}>={floors[p]}" for p in expected]
    assert _pip_calls(fake_pip[1]) == [["install", "-q", *want]]
    assert f"$ pip install -q {' '.join(want)}" in r.stdout
    assert "torch" not in json.dumps(_pip_calls(fake_pip[1]))


def test_cell1_reports_a_failed_install(tmp_path, fake_pip):
    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(tmp_path / "content"), FAKE_PIP_RC="1")
    r = _run_cell(1, env, cwd=tmp_path, prelude=NO_TORCH + "sys.modules['binance'] = None\n")
    assert r.returncode != 0
    assert "RuntimeError: pip install python-binance>=" in r.stderr
    assert "failed (exit 1)" in r.stderr


def test_cell1_content_folder_defaults_like_the_pipeline(tmp_path, fake_pip):
    """Without V3_BASE_DIR (and outside Colab) the cells use ./v3_output, as v3_common does."""
    env = _offline_env(tmp_path, fake_pip)
    r = _run_cell(1, env, cwd=tmp_path, prelude=NO_TORCH)
    assert r.returncode == 0, r.stderr
    assert all((tmp_path / "v3_output" / d).is_dir() for d in ("data", "all_models", "results"))


# ---------------------------------------------------------------------------------------
# Cell 2: fetch from one URL; refuse what is not Python; keep the old files then.


@pytest.mark.slow
def test_cell2_fetches_every_module_and_is_idempotent(tmp_path, fake_pip, repo_server):
    content = tmp_path / "content"
    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(content), V3_REPO_URL=repo_server.url)
    first = _run_cell(2, env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"fetching {len(MODULES)} modules from {repo_server.url}" in first.stdout
    again = _run_cell(2, env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for name in MODULES:
        assert (content / name).read_bytes() == (ROOT / name).read_bytes()
        assert f"{name}" in again.stdout
    assert again.stdout.count("unchanged") == len(MODULES)
    assert not list(content.glob(".*.part"))


@pytest.mark.parametrize("body, message", [
    (b"", "returned an empty file, not Python"),
    (b"  \n\n", "returned an empty file, not Python"),
    (b"<!DOCTYPE html>\n<html><body>Sign in to GitHub</body></html>\n", "returned an HTML page"),
    (b"def broken(:\n    pass\n", "is not valid Python (line 1"),
    (None, "answered HTTP 404"),
])
@pytest.mark.slow
def test_cell2_refuses_a_bad_download_and_keeps_the_old_files(tmp_path, fake_pip, repo_server,
                                                            body, message):
    bad = MODULES[-1]  # the last one: the others were fetched fine, and must not be written
    served = tmp_path / "served"
    served.mkdir()
    for name in MODULES:
        shutil.copy2(ROOT / name, served / name)
    if body is None:
        (served / bad).unlink()
    else:
        (served / bad).write_bytes(body)
    repo_server.root = served
    content = tmp_path / "content"
    content.mkdir()
    (content / "v3_common.py").write_text("OLD = 1\n")  # what a previous run left

    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(content), V3_REPO_URL=repo_server.url)
    r = _run_cell(2, env, cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ComponentDownloadError: {bad}: {repo_server.url}/{bad} ")
    assert message in last
    assert "Check REPO_URL" in last
    assert sorted(p.name for p in content.iterdir()) == ["v3_common.py"]
    assert (content / "v3_common.py").read_text() == "OLD = 1\n"


# ---------------------------------------------------------------------------------------
# The generator and the committed notebook.


def test_committed_notebook_is_in_sync_with_the_generator():
    committed = (ROOT / NOTEBOOK_NAME).read_text(encoding="utf-8")
    assert committed == notebook_json(root=ROOT), (
        f"{NOTEBOOK_NAME} is out of date: run `python v3_colab_cell.py --notebook {NOTEBOOK_NAME}` "
        f"and commit it.")


@pytest.mark.slow
def test_notebook_is_valid_nbformat_v4_with_a_gpu_runtime():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / NOTEBOOK_NAME, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["accelerator"] == "GPU"
    assert nb.metadata["colab"]["gpuType"] == "T4"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code == [c.rstrip("\n") for c in cells(root=ROOT)]
    assert colab_url(REPO_URL) in nb.cells[0].source


def _cell2_modules(source: str) -> list[str]:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["MODULES"]:
            return ast.literal_eval(node.value)
    raise AssertionError("cell 2 has no MODULES = [...]")


def test_cell2_lists_every_module_the_pipeline_can_import():
    """Fails when a top-level v3_*.py that v3_colab_training reaches (directly or through
    another module, at the top or inside a function) is missing from the notebook's cell 2."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / NOTEBOOK_NAME, as_version=4)
    listed = _cell2_modules([c for c in nb.cells if c.cell_type == "code"][1].source)
    missing = sorted(set(MODULES) - set(listed))
    assert not missing, (f"cell 2 does not fetch {missing}: run `python v3_colab_cell.py "
                         f"--notebook {NOTEBOOK_NAME}`")
    assert all((ROOT / m).is_file() for m in listed)
    for must in ("v3_colab_training.py", "v3_common.py", "v3_trainer.py", "v3_hub.py",
                 "v3_binance_data.py", "v3_market_data.py"):
        assert must in listed


def test_pipeline_modules_follows_every_kind_of_import(tmp_path):
    (tmp_path / "v3_colab_training.py").write_text(
        "import os\nfrom v3_a import x\n"
        "def later():\n    import v3_b as b\n    return b\n"
        "def dynamic():\n    import importlib\n    return importlib.import_module('v3_d')\n"
        "NAME = 'v3_not_a_module'\n")
    (tmp_path / "v3_a.py").write_text("x = 1\n")
    (tmp_path / "v3_b.py").write_text("from v3_c.sub import y\n")
    (tmp_path / "v3_c.py").write_text("y = 2\n")
    (tmp_path / "v3_d.py").write_text("")
    (tmp_path / "v3_unused.py").write_text("import v3_a\n")
    assert pipeline_modules(tmp_path, entries=("v3_colab_training",)) == [
        "v3_a.py", "v3_b.py", "v3_c.py", "v3_colab_training.py", "v3_d.py"]
    with pytest.raises(CellConfigError, match="entry module .*v3_nope.py does not exist"):
        pipeline_modules(tmp_path, entries=("v3_nope",))


def test_package_floors_come_from_requirements(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch>=2.3\npython_binance>=1.0.20\n"
                                               "huggingface-hub >= 0.30\narch>=6.0\n"
                                               "tenacity>=8.2\n")
    assert package_floors(tmp_path) == {"python-binance": "1.0.20", "huggingface-hub": "0.30",
                                        "arch": "6.0", "tenacity": "8.2"}
    (tmp_path / "requirements.txt").write_text("python-binance>=1.0.20\narch>=6\ntenacity>=8\n")
    with pytest.raises(CellConfigError, match="no '>=' floor for huggingface-hub"):
        package_floors(tmp_path)
    assert "torch" not in package_floors(ROOT)


def test_cells_are_plain_python_without_exec_or_torch_installs():
    c1, c2, c3 = cells(root=ROOT)
    for src in (c1, c2, c3):
        compile(src, "cell", "exec")
        assert "exec(" not in src
        assert not any(line.lstrip().startswith(("!", "%")) for line in src.splitlines())
    assert "torch" not in c1.split("NEEDED = ")[1].splitlines()[0]
    assert f'REPO_URL = "{REPO_URL}"' in c2.splitlines()[2]  # at the top, easy to change
    assert "from v3_colab_training import" in c3 and ".run_full_pipeline(" in c3


def test_cell3_defaults_are_the_guides_coins_and_timeframes():
    tree = ast.parse(cells(root=ROOT)[2])
    first = {n.targets[0].id: n.value for n in tree.body[:6] if isinstance(n, ast.Assign)}
    assert ast.literal_eval(first["COINS"]) == DEFAULT_COINS
    assert ast.literal_eval(first["TIMEFRAMES"]) == DEFAULT_TIMEFRAMES
    assert ast.literal_eval(first["EPOCHS"]) == 100
    assert ast.literal_eval(first["HF_REPO"]) is None


def test_colab_url_and_repo_url_checks():
    assert colab_url(REPO_URL) == ("https://colab.research.google.com/github/caizongxun/cpbv2/"
                                   "blob/main/V3_colab.ipynb")
    assert colab_url("https://raw.githubusercontent.com/me/fork/refs/heads/dev/x/") == (
        "https://colab.research.google.com/github/me/fork/blob/dev/x/V3_colab.ipynb")
    assert colab_url("http://127.0.0.1:8000") is None
    assert check_repo_url("https://example.org/v3/") == "https://example.org/v3"
    with pytest.raises(CellConfigError, match="'ftp://x' is not an http"):
        check_repo_url("ftp://x")


@pytest.mark.slow
def test_cli_prints_cells_and_writes_the_notebook(tmp_path, capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert [f"Colab cell {n} of 3" in out for n in (1, 2, 3)] == [True] * 3
    assert main(["--cell", "2"]) == 0
    out = capsys.readouterr().out
    assert out == cells(root=ROOT)[1]
    fork = "https://raw.githubusercontent.com/me/fork/dev"
    assert main(["--notebook", str(tmp_path / "nb.ipynb"), "--repo-url", fork]) == 0
    text = (tmp_path / "nb.ipynb").read_text()
    assert f'REPO_URL = \\"{fork}\\"' in text
    assert "https://colab.research.google.com/github/me/fork/blob/dev/V3_colab.ipynb" in text
    assert main(["--repo-url", "not a url"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err


def test_readme_colab_section_links_the_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- section: colab -->")[1].split("<!-- /section: colab -->")[0]
    assert colab_url(REPO_URL) in section
    assert "python v3_colab_cell.py" in section and NOTEBOOK_NAME in section
    for var in ("V3_BASE_DIR", "V3_REPO_URL", "V3_DEMO", "HF_TOKEN"):
        assert var in section


@pytest.mark.parametrize("name", ["V3_EPOCHS", "V3_CANDLES"])
def test_cell3_names_an_environment_variable_that_is_not_a_number(tmp_path, fake_pip, name):
    """Issue 21 item 7: V3_EPOCHS=abc raised a raw ValueError ("invalid literal for int()")."""
    env = _offline_env(tmp_path, fake_pip, V3_BASE_DIR=str(tmp_path / "content"),
                       V3_DEMO="1", **{name: "abc"})
    out = _run_cell(3, env, cwd=ROOT)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == (
        f"v3_common.ConfigError: {name}='abc' is not a whole number: set it to one (for example "
        f"{name}=50) or unset it (os.environ.pop('{name}'))")
    assert "invalid literal" not in out.stderr and not (tmp_path / "content" / "data").exists()
