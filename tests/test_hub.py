"""Step 5 through the real huggingface_hub client, talking to tests/fake_hub.py on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # before huggingface_hub is imported

import numpy as np
import pytest
import torch

import v3_hub
from conftest import tiny_config
from fake_hub import FakeHub, FakeUser
from v3_colab_training import V3CoLabPipeline, main
from v3_common import (CheckpointError, ConfigError, DownloadError, RetryableUploadError,
                       UploadError, read_json)
from v3_hub import (NO_TOKEN_HINT, check_folder, check_repo_id, load_model_from_hub, resolve_token,
                    upload_to_hub)
from v3_model_card import CARD_MARKER
from test_model_card import parse_card

pytestmark = [
    pytest.mark.timeout(120),
    # huggingface_hub's LFS PUT passes a file object as data=; httpx2 prefers content=
    pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning"),
]

SECRET = "hf_fake-SECRET-token-XyZ0123456789ab"   # alice, write access
READ_ONLY = "hf_READonlyToken0123456789abcdef"  # alice, read access
SCOPED = "hf_fake-FINEgrained-token-012345678"    # carol, fine-grained, may write to 'carol' only
REPO = "alice/cpb-models"
PAIRS = [("BTCUSDT", "15m"), ("BTCUSDT", "1h")]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tiny run (synthetic candles, 1 coin x 2 timeframes), trained once per module.
    Tests only read it; a test that changes files works on a copy (`run_dir`)."""
    base = tmp_path_factory.mktemp("trained") / "out"
    pipe = V3CoLabPipeline(base, config=tiny_config(), coins=["BTCUSDT"], timeframes=["15m", "1h"])
    pipe.run_full_pipeline(epochs=2, batch_size=64, learning_rate=1e-3, upload=False)
    assert len(list((base / "all_models").glob("v3_model_*.pt"))) == 2
    return base


@pytest.fixture
def run_dir(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@pytest.fixture(autouse=True)
def _hub_env(monkeypatch, tmp_path):
    """No real token, no real endpoint, no offline mode, no waits between our retries."""
    from huggingface_hub import constants
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake Hub speaks plain LFS
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    monkeypatch.setattr(v3_hub, "RETRY_WAIT_S", 0.0)


@pytest.fixture
def hub():
    users = {SECRET: FakeUser("alice"), READ_ONLY: FakeUser("alice", role="read"),
             SCOPED: FakeUser("carol", role="fineGrained", write_namespaces=["carol"])}
    with FakeHub(tokens=users) as h:
        yield h


def upload(base, hub, **kw):
    kw.setdefault("token", SECRET)
    return upload_to_hub(base, endpoint=hub.url, show_progress=False, prompt=False, **kw)


def snapshot(base) -> dict:
    """Every local file with its bytes' hash and mtime: the upload must change none."""
    return {str(p.relative_to(base)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(base.rglob("*")) if p.is_file()}


def new_commits(hub, repo_id=REPO) -> list[dict]:
    return hub.repos[repo_id].commits[1:]  # after the 'initial commit' of a new repo


# -- one commit, re-runs, retries ----------------------------------------------------------


@pytest.mark.slow
def test_upload_puts_everything_in_one_commit(trained, hub, caplog):
    before = snapshot(trained)
    with caplog.at_level(logging.INFO, logger="v3"):
        out = upload(trained, hub)
    commits = new_commits(hub)
    assert len(commits) == 1 and hub.count("commit") == 1
    assert hub.count("lfs_put") == 2  # the models travel by LFS, as on the real Hub
    expected = {f"v3/v3_model_{s}_{i}.pt" for s, i in PAIRS} | {
        "v3/training_results.json", "v3/config.json", "README.md"}
    assert set(commits[0]["changed"]) == expected
    files = hub.repos[REPO].files
    for s, i in PAIRS:
        assert files[f"v3/v3_model_{s}_{i}.pt"] == (
            trained / "all_models" / f"v3_model_{s}_{i}.pt").read_bytes()
    assert files["v3/training_results.json"] == (
        trained / "results" / "v3_training_results.json").read_bytes()
    assert files["v3/config.json"] == (trained / "results" / "config.json").read_bytes()
    assert out["repo_id"] == REPO and out["models"] == 2 and out["new_commit"] is True
    assert out["commit"] == commits[0]["oid"] and out["card"] == "README.md"
    assert f"in one commit ({out['commit'][:7]})" in caplog.text
    assert snapshot(trained) == before  # nothing local was written, moved or deleted
    assert not (trained / "upload_staging").exists()


@pytest.mark.slow
def test_second_run_makes_no_new_commit(trained, hub, caplog):
    first = upload(trained, hub)
    with caplog.at_level(logging.INFO, logger="v3"):
        second = upload(trained, hub)
    assert len(new_commits(hub)) == 1 and hub.count("commit") == 1
    assert hub.count("lfs_put") == 2  # nothing sent twice
    assert second["new_commit"] is False and second["commit"] == first["commit"]
    assert "nothing changed, no new commit" in caplog.text


@pytest.mark.slow
def test_rerun_after_a_change_commits_only_the_changed_files(run_dir, hub):
    upload(run_dir, hub)
    results = read_json(run_dir / "results" / "v3_training_results.json")
    results["BTCUSDT_1h"]["note"] = "edited"
    (run_dir / "results" / "v3_training_results.json").write_text(json.dumps(results))
    out = upload(run_dir, hub)
    commits = new_commits(hub)
    assert len(commits) == 2 and out["new_commit"] is True
    # models and config are unchanged and skipped; the results and the card (its table) changed
    assert set(commits[1]["changed"]) <= {"v3/training_results.json", "README.md"}
    assert "v3/training_results.json" in commits[1]["changed"]
    assert hub.count("lfs_put") == 2


@pytest.mark.slow
def test_500_on_the_first_commit_attempt_is_retried(trained, hub, caplog):
    hub.fail_next("commit", 500)
    with caplog.at_level(logging.WARNING, logger="v3"):
        out = upload(trained, hub)
    assert hub.count("commit") == 2  # the failed try and the retry
    assert len(new_commits(hub)) == 1 and out["new_commit"] is True
    assert "commit the upload: HTTP 500" in caplog.text and "(2 of 3)" in caplog.text


@pytest.mark.slow
def test_a_failed_upload_leaves_no_commit_and_a_rerun_finishes_it(trained, hub):
    hub.fail_next("commit", 503, times=3)
    with pytest.raises(UploadError, match=r"did not answer to commit the upload \(HTTP 503"):
        upload(trained, hub)
    assert hub.count("commit") == 3 and new_commits(hub) == []  # bounded: 3 tries, then stop
    out = upload(trained, hub)
    assert len(new_commits(hub)) == 1 and out["new_commit"] is True


@pytest.mark.slow
def test_lost_commit_answer_does_not_duplicate_the_commit(trained, hub, monkeypatch):
    """The commit lands but its answer is lost (a 502 from a proxy): the retry finds every file
    already there and commits nothing twice."""
    real = hub._commit

    def commit_then_fail(*args):
        real(*args)
        from fake_hub import HubError
        raise HubError(502, "bad gateway after the commit")
    monkeypatch.setattr(hub, "_commit", commit_then_fail)
    out = upload(trained, hub)
    assert len(new_commits(hub)) == 1 and hub.count("commit") == 1
    assert out["new_commit"] is True


def test_unreachable_hub_is_retried_a_bounded_number_of_times(trained, caplog):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with caplog.at_level(logging.WARNING, logger="v3"), pytest.raises(UploadError) as e:
        upload_to_hub(trained, token=SECRET, endpoint=dead, prompt=False, max_attempts=2)
    assert "did not answer to check the token (whoami)" in str(e.value)
    assert "after 2 tries" in str(e.value) and SECRET not in str(e.value)
    assert caplog.text.count("trying again") == 1
    assert isinstance(e.value, RetryableUploadError)


def _dead_endpoint() -> str:
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_hub_exits_1_a_failed_step_not_2_bad_input(run_dir, monkeypatch, caplog):
    """Issue 21 item 8: it exited 2, the README's code for bad input."""
    monkeypatch.setenv("HF_ENDPOINT", _dead_endpoint())
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["--steps", "upload", "--base-dir", str(run_dir), "--hf-repo", "alice/x",
                 "--no-progress"]) == 1
    assert "RetryableUploadError: the Hub at http://127.0.0.1:" in caplog.text
    assert "re-run step 5 later" in caplog.text and SECRET not in caplog.text


# -- tokens and access ---------------------------------------------------------------------


def test_invalid_token_is_a_clear_401_error(trained, hub):
    with pytest.raises(UploadError) as e:
        upload(trained, hub, token="hf_not_a_real_token_123")
    msg = str(e.value)
    assert "was rejected (HTTP 401" in msg and "write access" in msg and "HF_TOKEN" in msg
    assert "hf_not_a_real_token_123" not in msg
    assert hub.repos == {}  # failed before anything was created


def test_read_only_token_is_a_clear_403_error(trained, hub):
    with pytest.raises(UploadError, match=r"read-only.*HTTP 403.*write access"):
        upload(trained, hub, token=READ_ONLY)
    assert hub.repos == {} and hub.count("preupload") == 0


def test_token_without_write_access_to_the_repo_fails_before_sending_files(trained, hub):
    hub.add_repo("carolorg/models")  # exists, public: readable, not writable by carol
    with pytest.raises(UploadError) as e:
        upload(trained, hub, token=SCOPED, repo_id="carolorg/models")
    assert "cannot write to carolorg/models (HTTP 403)" in str(e.value)
    assert "write access" in str(e.value)
    assert hub.count("preupload") == 0 and hub.count("commit") == 0


def test_missing_repo_under_someone_elses_namespace(trained, hub):
    with pytest.raises(UploadError) as e:
        upload(trained, hub, repo_id="bob/cpb-models")
    msg = str(e.value)
    assert "bob/cpb-models does not exist" in msg and "'bob' is not your namespace" in msg
    assert "--hf-repo alice/cpb-models" in msg
    assert "bob/cpb-models" not in hub.repos


def test_repo_name_without_namespace_goes_under_the_user(trained, hub):
    out = upload(trained, hub, repo_id="my-models", private=True)
    assert out["repo_id"] == "alice/my-models" and hub.repos["alice/my-models"].private


def test_bad_repo_id_and_folder_are_config_errors(trained, hub):
    with pytest.raises(ConfigError, match="not valid"):
        upload(trained, hub, repo_id="alice/bad name")
    with pytest.raises(ConfigError, match="plain relative path"):
        upload(trained, hub, folder="../up")


def test_check_repo_id_needs_no_token_and_no_network(hub):
    assert check_repo_id(None) is None and check_repo_id("  ") is None  # the default
    assert check_repo_id(" alice/cpb-models ") == "alice/cpb-models"
    assert check_repo_id("my-models") == "my-models"  # goes under the token's user
    for bad in ("bad repo name", "a/b/c", "alice/-x"):
        with pytest.raises(ConfigError, match=r"is not valid.*NAMESPACE/NAME.*alice/cpb-models"):
            check_repo_id(bad)
    assert check_folder("/models/v3/") == "models/v3"
    assert hub.requests == []


def test_bad_repo_id_fails_even_without_a_token(trained, hub, caplog):
    """Issue 12 item 2: with no token the old code skipped quietly and never said the id
    was bad."""
    with pytest.raises(ConfigError, match="'bad repo name' is not valid"):
        upload_to_hub(trained, repo_id="bad repo name", endpoint=hub.url, prompt=False)
    assert hub.requests == [] and NO_TOKEN_HINT not in caplog.text


def test_a_truncated_model_is_refused_and_nothing_is_uploaded(run_dir, hub):
    """Issue 12 item 1: a truncated all_models/*.pt was uploaded as if it were a model."""
    bad = run_dir / "all_models" / "v3_model_BTCUSDT_1h.pt"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(UploadError) as e:
        upload(run_dir, hub)
    msg = str(e.value)
    assert "1 model file in" in msg and "v3_model_BTCUSDT_1h.pt" in msg and "does not load" in msg
    assert "v3_model_BTCUSDT_15m.pt" not in msg  # the good one is not blamed
    assert "re-train that pair with --retrain" in msg and "Nothing was uploaded" in msg
    assert hub.requests == [] and hub.repos == {}  # not even the token was checked


@pytest.mark.slow
def test_messages_count_one_model_in_the_singular(run_dir, hub, caplog):
    (run_dir / "all_models" / "v3_model_BTCUSDT_1h.pt").unlink()
    with caplog.at_level(logging.INFO, logger="v3"):
        out = upload(run_dir, hub)
        upload(run_dir, hub)
    assert out["models"] == 1
    assert "uploaded 1 model, training_results.json" in caplog.text and "1 models" not in caplog.text
    assert new_commits(hub)[0]["title"].startswith("V3: 1 model, ")
    assert "already has these 4 files" in caplog.text


def test_no_models_is_a_clear_error(tmp_path, hub):
    with pytest.raises(UploadError, match="no models in .*train first"):
        upload(tmp_path, hub)


def test_no_token_skips_with_one_line(trained, hub, caplog):
    with caplog.at_level(logging.INFO, logger="v3"):
        out = upload_to_hub(trained, endpoint=hub.url, prompt=False)
    assert out is None and hub.requests == []
    lines = [r.getMessage() for r in caplog.records if r.name == "v3"]
    assert lines == [NO_TOKEN_HINT]
    assert "HF_TOKEN" in lines[0] and "hf auth login" in lines[0]


def test_token_order(monkeypatch, tmp_path):
    from huggingface_hub import constants
    stored = tmp_path / "stored-token"
    stored.write_text("hf_stored\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))
    asked = []
    monkeypatch.setattr(v3_hub.getpass, "getpass", lambda prompt: asked.append(prompt) or "hf_typed")
    assert resolve_token(prompt=True) == "hf_stored"          # the stored login
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_token(prompt=True) == "hf_env"             # HF_TOKEN beats the stored login
    assert resolve_token("hf_arg", prompt=True) == "hf_arg"   # the argument beats everything
    monkeypatch.delenv("HF_TOKEN")
    stored.unlink()
    assert asked == []
    assert resolve_token(prompt=False) is None                 # nobody at a prompt: no question
    assert resolve_token(prompt=True) == "hf_typed" and len(asked) == 1
    assert "hidden" in asked[0]
    assert resolve_token() is None                             # pytest: stdin is not a terminal


@pytest.mark.slow
def test_the_token_never_leaks(run_dir, hub, monkeypatch, capfd, caplog):
    """Through the CLI, with huggingface_hub and httpx2 logging everything: the token is in no
    output, log, file on disk, uploaded file or error message."""
    import v3_colab_training
    import v3_common
    from huggingface_hub.utils import logging as hf_logging
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the endpoint follows HF_ENDPOINT
    # main() sets the 'v3' level to INFO: keep DEBUG so that a debug line would be seen too
    monkeypatch.setattr(v3_colab_training, "setup_logging",
                        lambda level=None: v3_common.setup_logging(logging.DEBUG))
    for name in ("huggingface_hub", "httpx2", "v3"):
        logging.getLogger(name).addHandler(caplog.handler)
    hf_logging.set_verbosity_debug()
    v3_level = logging.getLogger("v3").level
    try:
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv("HF_TOKEN", SECRET)
        assert main(["--steps", "upload", "--base-dir", str(run_dir), "--hf-repo", REPO,
                     "--no-progress"]) == 0
        hub.fail_next("commit", 500)  # a retried failure logs too
        (run_dir / "results" / "config.json").write_text(
            (run_dir / "results" / "config.json").read_text() + "\n")
        assert main(["--steps", "upload", "--base-dir", str(run_dir), "--no-progress"]) == 0
        monkeypatch.setenv("HF_TOKEN", SECRET[::-1])  # a wrong token: the error path
        assert main(["--steps", "upload", "--base-dir", str(run_dir), "--no-progress"]) == 2
    finally:
        hf_logging.set_verbosity_warning()
        logging.getLogger("v3").setLevel(v3_level)
        for name in ("huggingface_hub", "httpx2", "v3"):
            logging.getLogger(name).removeHandler(caplog.handler)
    out, err = capfd.readouterr()
    assert len(new_commits(hub)) == 2 and hub.count("commit") == 3
    assert "HTTP Request" in caplog.text  # the client's own logs were captured
    assert "was rejected (HTTP 401" in caplog.text
    for secret in (SECRET, SECRET[::-1]):
        assert secret not in out and secret not in err and secret not in caplog.text
        for p in run_dir.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p
        for path, data in hub.repos[REPO].files.items():
            assert secret.encode() not in data, path


def test_a_file_holding_the_token_is_not_uploaded(run_dir, hub):
    cfg = read_json(run_dir / "results" / "config.json")
    cfg["oops"] = SECRET
    (run_dir / "results" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UploadError, match="v3/config.json contains the Hugging Face token") as e:
        upload(run_dir, hub)
    assert SECRET not in str(e.value) and hub.count("commit") == 0


# -- the model card ------------------------------------------------------------------------


def test_model_card_metadata_and_table_match_the_results(trained, hub):
    upload(trained, hub)
    card = hub.repos[REPO].files["README.md"].decode()
    meta, rows = parse_card(card)
    assert meta["library_name"] == "pytorch" and meta["license"] == "mit"
    assert {"time-series-forecasting", "cryptocurrency", "synthetic-data"} <= set(meta["tags"])
    results = json.loads(hub.repos[REPO].files["v3/training_results.json"])
    assert set(rows) == set(results) - {"_summary"} == {"BTCUSDT_15m", "BTCUSDT_1h"}
    for key, r in results.items():
        if key.startswith("_"):
            continue
        row = rows[key]
        assert row["status"] == r["status"]
        assert float(row["MAPE %"]) == pytest.approx(r["test"]["mape"], abs=5e-5)
        assert float(row["persistence MAPE %"]) == pytest.approx(
            r["baseline"]["persistence"]["mape"], abs=5e-5)
        assert float(row["RMSE"]) == pytest.approx(r["test"]["rmse"], rel=1e-5)
        assert float(row["persistence RMSE"]) == pytest.approx(
            r["baseline"]["persistence"]["rmse"], rel=1e-5)
        assert float(row["direction %"]) == pytest.approx(
            r["test"]["directional_accuracy"], abs=0.05)
        assert int(row["test samples"]) == r["test"]["n"]
        assert row["data"] == "synthetic"
    cfg = read_json(trained / "results" / "config.json")
    assert f"epochs {cfg['train']['epochs']}, batch size {cfg['train']['batch_size']}" in card
    assert f"{cfg['candles']} latest closed candles" in card
    assert "Not financial advice" in card and "Synthetic data" in card
    assert 'load_model_from_hub("alice/cpb-models", "BTCUSDT", "15m"' in card
    assert "weights_only=True" in card and CARD_MARKER in card


def test_card_goes_into_the_folder_when_the_root_readme_is_not_ours(trained, hub):
    theirs = b"---\nlicense: apache-2.0\n---\n# Someone's v2 models\n"
    hub.add_repo(REPO, {"README.md": theirs, "v2/model.pt": b"old"})
    out = upload(trained, hub)
    files = hub.repos[REPO].files
    assert out["card"] == "v3/README.md" and files["README.md"] == theirs
    assert CARD_MARKER.encode() in files["v3/README.md"] and files["v2/model.pt"] == b"old"


def test_card_replaces_a_root_readme_that_we_wrote(trained, hub):
    hub.add_repo(REPO, {"README.md": f"---\nlicense: mit\n---\n{CARD_MARKER}\nold card\n".encode()})
    out = upload(trained, hub)
    assert out["card"] == "README.md"
    assert b"old card" not in hub.repos[REPO].files["README.md"]


# -- loading back --------------------------------------------------------------------------


@pytest.mark.slow
def test_uploaded_model_predicts_exactly_like_the_local_one(trained, hub, tmp_path):
    from v3_data_processor import PreparedData
    from v3_checkpoint import load_checkpoint, model_from_checkpoint
    from v3_trainer import predict_standardized
    up = upload(trained, hub)
    for symbol, interval in PAIRS:
        m = load_model_from_hub(REPO, symbol, interval, endpoint=hub.url,
                                cache_dir=tmp_path / "cache", token=SECRET)
        local = model_from_checkpoint(load_checkpoint(
            trained / "all_models" / f"v3_model_{symbol}_{interval}.pt"))
        data = PreparedData.load(trained / "processed" / f"{symbol}_{interval}.npz")
        te = data.split("test")
        np.testing.assert_array_equal(predict_standardized(m.model, data, te),
                                      predict_standardized(local, data, te))
        for k, v in data.transform.to_arrays().items():
            np.testing.assert_array_equal(m.transform.to_arrays()[k], v)
        assert (m.symbol, m.interval, m.seq_len) == (symbol, interval, data.seq_len)
        assert m.feature_names == data.feature_names and m.target_std == data.target_std
        assert m.revision == up["commit"] and m.repo_id == REPO
        assert not m.model.training and isinstance(m.model, torch.nn.Module)


def test_load_follows_hf_endpoint_and_revision(trained, hub, tmp_path, monkeypatch):
    first = upload(trained, hub)["commit"]
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    m = load_model_from_hub(REPO, "BTC", "1h", revision=first, cache_dir=tmp_path)
    assert m.symbol == "BTCUSDT" and m.revision == first


def test_load_errors_are_named(trained, hub, tmp_path):
    upload(trained, hub)
    with pytest.raises(CheckpointError, match="has no v3/v3_model_ETHUSDT_15m.pt"):
        load_model_from_hub(REPO, "ETHUSDT", "15m", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(DownloadError, match="cannot read alice/nothing-here"):
        load_model_from_hub("alice/nothing-here", "BTCUSDT", "15m", endpoint=hub.url,
                            cache_dir=tmp_path)
    with pytest.raises(ConfigError):
        load_model_from_hub(REPO, "BTCUSDT", "7m", endpoint=hub.url, cache_dir=tmp_path)


# -- the pipeline and the command line -----------------------------------------------------


def test_pipeline_step_5_uses_the_config(run_dir, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    pipe = V3CoLabPipeline(run_dir, config=tiny_config(hf_repo="alice/v3-test", hf_folder="models/v3",
                                                      hf_private=True),
                           coins=["BTCUSDT"], timeframes=["15m", "1h"], hf_token=SECRET)
    out = pipe.step_5_upload_to_huggingface()
    repo = hub.repos["alice/v3-test"]
    assert out["folder"] == "models/v3" and repo.private
    assert "models/v3/v3_model_BTCUSDT_15m.pt" in repo.files


@pytest.mark.slow
def test_cli_upload_flags_and_exit_codes(run_dir, hub, monkeypatch, caplog):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["--steps", "upload", "--base-dir", str(run_dir), "--hf-repo", "alice/cli",
                 "--hf-folder", "v3b", "--private", "--no-progress"]) == 0
    assert hub.repos["alice/cli"].private and "v3b/config.json" in hub.repos["alice/cli"].files
    monkeypatch.setenv("HF_TOKEN", READ_ONLY)
    assert main(["--steps", "upload", "--base-dir", str(run_dir), "--no-progress"]) == 2
    assert "UploadError" in caplog.text and "read-only" in caplog.text
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["--steps", "upload", "--base-dir", str(run_dir), "--hf-repo", "bob/x",
                 "--no-progress"]) == 2
    assert "'bob' is not your namespace" in caplog.text
    monkeypatch.delenv("HF_TOKEN")
    caplog.clear()
    # an upload asked for by name and skipped for want of a token is not a success
    assert main(["--steps", "upload", "--base-dir", str(run_dir), "--no-progress"]) == 1
    assert NO_TOKEN_HINT in caplog.text and "the upload you asked for was skipped" in caplog.text
