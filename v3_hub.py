"""Step 5: publish the models to a Hugging Face model repo in one commit, and load one back.

    from v3_hub import upload_to_hub, load_model_from_hub
    upload_to_hub("/content", repo_id="me/cpb-models")          # one commit under v3/
    m = load_model_from_hub("me/cpb-models", "BTCUSDT", "15m")  # m.model, m.transform, ...

What goes up, in ONE commit (the Hub limits commits per repo per hour): every
`all_models/v3_model_*.pt` (each must load first: a truncated file is refused, nothing is
sent), `results/v3_training_results.json` as `training_results.json`, `results/config.json`,
and the model card (v3_model_card.py). The card is the repo's root `README.md`, unless the
root already has a README that V3 did not write (no CARD_MARKER line): then it goes to
`<folder>/README.md` and the root is left alone. Local files are only read.

Re-running is safe: the Hub reports which files it already has, unchanged files are dropped
from the commit, and a run with nothing new makes no commit at all. Transient failures (HTTP
5xx/429/408, connection errors) are retried MAX_ATTEMPTS times in all, with growing waits;
after the last, RetryableUploadError (an UploadError: re-run later; exit code 1).

The token, in this order: the `token` argument, the HF_TOKEN environment variable, the stored
login (`hf auth login`), the Colab secret HF_TOKEN (only inside the notebook UI, not from a
`!python` command), then a hidden prompt when a person is at one. With none, the upload is
skipped with one line saying how to give one (upload_to_hub returns None; the caller decides
the exit code). The token is never printed, logged, written to a file or put in an exception
message. The endpoint follows HF_ENDPOINT (huggingface_hub's default otherwise).
`check_repo_id` and `check_folder` check the settings without a token or the network, so a
caller can refuse a bad --hf-repo before any work.
"""
from __future__ import annotations

import getpass
import importlib
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                   enable_progress_bars, validate_repo_id)

from v3_checkpoint import LoadedModel, load_checkpoint, load_model_file
from v3_common import (CheckpointError, ConfigError, DownloadError, RetryableUploadError,
                       UploadError, check_interval, log, normalize_symbol, plural, read_json,
                       shorten)
from v3_layout import RunLayout, model_filename
from v3_model_card import (CARD_LICENSE, CARD_MARKER, CONFIG_NAME, DEFAULT_FOLDER, RESULTS_NAME,
                           build_model_card)

DEFAULT_REPO_NAME = "cpb-models"
MAX_ATTEMPTS = 3          # tries per Hub call when the failure is transient
RETRY_WAIT_S = 2.0        # wait before the 2nd try; doubled before each next one
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
TOKEN_URL = "https://huggingface.co/settings/tokens"
NO_TOKEN_HINT = (f"no Hugging Face token found: upload skipped. Give one with write access "
                 f"(from {TOKEN_URL}) as the HF_TOKEN environment variable, with `hf auth login`, "
                 f"or as the Colab secret HF_TOKEN (read only by code run in a notebook cell, not "
                 f"by `!python`); then re-run step 5.")


# ---------------------------------------------------------------------------------------
# The token


def resolve_token(explicit: str | None = None, *, prompt: bool | None = None) -> str | None:
    """The token to use, or None. `prompt`: None asks only when a person is at a prompt."""
    return _find_token(explicit, prompt=prompt)[0]


def _find_token(explicit: str | None, *, prompt: bool | None) -> tuple[str | None, str]:
    """(token, where it came from): the source is safe to show, the token never is."""
    if explicit and explicit.strip():
        return explicit.strip(), "the token argument"
    env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if env and env.strip():
        return env.strip(), "HF_TOKEN"
    stored = get_token()  # the stored login, then (inside the Colab UI) the Colab secret
    if stored:
        source = ("the stored login (hf auth login)" if Path(constants.HF_TOKEN_PATH).exists()
                  else "the Colab secret HF_TOKEN")
        return stored, source
    if _person_at_prompt() if prompt is None else prompt:
        typed = _ask_token()
        if typed:
            return typed, "the prompt"
    return None, ""


def _person_at_prompt() -> bool:
    """True in a terminal or a notebook front end (Colab, Jupyter); False in scripts and CI."""
    try:
        if sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty():
            return True
    except (AttributeError, ValueError, OSError):  # a closed or replaced stream
        pass
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def _ask_token() -> str | None:
    try:
        typed = getpass.getpass("Hugging Face token with write access (input hidden; Enter skips "
                                "the upload): ")
    except (EOFError, NotImplementedError, OSError):  # no stdin (nbclient, a closed pipe)
        return None
    return typed.strip() or None


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


# ---------------------------------------------------------------------------------------
# Errors and retries


def _status(e: BaseException) -> int | None:
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return e.response.status_code
    return None


def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of whichever HTTP library huggingface_hub uses (httpx2, httpx
    or requests, whichever is installed), for an `except` clause around a Hub call."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx", "requests"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
        for attr in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(mod, attr, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def _transient(e: BaseException) -> bool:
    if isinstance(e, HfHubHTTPError):
        return _status(e) in TRANSIENT_STATUS
    if isinstance(e, LocalEntryNotFoundError):  # hf_hub_download: the Hub did not answer
        return True
    return isinstance(e, transport_errors())


def _describe(e: BaseException, token: str | None) -> str:
    status = _status(e)
    if status is not None:
        server = e.response.headers.get("X-Error-Message") if e.response is not None else None
        text = f"HTTP {status}" + (f" ({server})" if server else "")
    else:
        text = " ".join(str(e).split())[:200] or type(e).__name__
        text = f"{type(e).__name__}: {text}"
    return _scrub(text, token)


def _with_retries(what: str, fn: Callable[[], Any], *, attempts: int, wait_s: float,
                  token: str | None) -> Any:
    """fn(), tried up to `attempts` times while its failure is transient."""
    for n in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if n == attempts or not _transient(e):
                raise
            delay = wait_s * 2 ** (n - 1)
            log.warning("%s: %s; trying again in %.0f s (%d of %d)", what, _describe(e, token),
                        delay, n + 1, attempts)
            time.sleep(delay)


@dataclass(frozen=True)
class _Who:
    user: str
    orgs: tuple[str, ...]
    source: str            # where the token came from, for messages
    endpoint: str


def _upload_error(e: BaseException, *, what: str, repo_id: str, who: _Who, token: str,
                  attempts: int) -> UploadError:
    """One clear UploadError for a failed Hub call; never carries the token."""
    status = _status(e)
    ns = repo_id.split("/")[0]
    if status == 401:
        msg = (f"the Hugging Face token from {who.source} was rejected (HTTP 401: invalid, "
               f"expired or revoked). Make a new token with write access at {TOKEN_URL} and set "
               f"it as HF_TOKEN (or run `hf auth login`), then re-run step 5.")
    elif status == 403:
        msg = (f"the token from {who.source} (user {who.user!r}) cannot write to {repo_id} "
               f"(HTTP 403). Make a token with write access at {TOKEN_URL} (a fine-grained token "
               f"needs write access to {ns!r}), or upload to a repo you own: "
               f"--hf-repo {who.user}/{DEFAULT_REPO_NAME}.")
    elif status == 404:
        msg = (f"{repo_id} was not found on {who.endpoint} (HTTP 404) while trying to {what}. "
               f"Check the repo id (--hf-repo NAMESPACE/NAME).")
    elif _transient(e):
        return RetryableUploadError(_scrub(
            f"the Hub at {who.endpoint} did not answer to {what} ({_describe(e, token)}) after "
            f"{attempts} tries. Nothing was changed locally; re-run step 5 later: files "
            f"already on the Hub are skipped.", token))
    else:
        msg = f"could not {what} on {repo_id}: {_describe(e, token)}."
    return UploadError(_scrub(msg, token))


# ---------------------------------------------------------------------------------------
# Upload


@dataclass(frozen=True)
class _LocalFiles:
    models: list[Path]
    results: Path | None
    config: Path | None


def _local_files(base_dir: Path) -> _LocalFiles:
    """The run's files to upload; UploadError when there is no model or one does not load."""
    layout = RunLayout(base_dir)
    models = layout.model_files()
    if not models:
        raise UploadError(f"no models in {layout.models_dir} ({model_filename('*', '*')}): train "
                          f"first (step 4), or point base_dir at the folder that holds "
                          f"{layout.models_dir.name}/.")
    _refuse_unreadable(models)
    return _LocalFiles(models, layout.results_path if layout.results_path.exists() else None,
                       layout.config_path if layout.config_path.exists() else None)


def _refuse_unreadable(models: list[Path]) -> None:
    """Every model must load (weights_only=True) before anything is sent: a truncated file
    would be published as if it were a model."""
    bad = []
    for path in models:
        try:
            load_model_file(path)
        except CheckpointError as e:
            bad.append((path, e))
    if bad:
        why = "; ".join(shorten(str(e).replace(str(p), p.name), 160) for p, e in bad)
        why += "" if why.endswith(".") else "."
        raise UploadError(
            f"{plural(len(bad), 'model file')} in {models[0].parent} "
            f"{'does' if len(bad) == 1 else 'do'} not load: {why} Nothing was uploaded: "
            f"re-train {'that pair' if len(bad) == 1 else 'those pairs'} with --retrain "
            f"(step 4), then re-run step 5.")


def check_folder(folder: str) -> str:
    """The Hub folder as a plain relative path ('v3', 'models/v3'); ConfigError otherwise.
    No token, no network: callers check it before any work."""
    f = (folder or "").strip().strip("/")
    if not f or any(part in ("", ".", "..") for part in f.split("/")) or "\\" in f:
        raise ConfigError(f"Hub folder {folder!r} is not a plain relative path such as "
                          f"'{DEFAULT_FOLDER}' (no leading '/', no '..').")
    return f


def check_repo_id(repo_id: str | None) -> str | None:
    """The repo id with surrounding spaces removed, or None (empty or None: the default
    '<your user>/cpb-models'). ConfigError when it cannot be a Hub model repo id: NAMESPACE/NAME
    or a bare NAME, made of letters, digits, '-', '_' and '.'. Only the format is checked (no
    token, no network), so a caller can refuse a bad --hf-repo before any work."""
    if repo_id is None or not str(repo_id).strip():
        return None
    rid = str(repo_id).strip()
    try:
        validate_repo_id(rid)
    except HFValidationError as e:
        raise ConfigError(f"Hub repo id {repo_id!r} is not valid: {e} Use NAMESPACE/NAME, e.g. "
                          f"'alice/{DEFAULT_REPO_NAME}' (letters, digits, '-', '_' and '.'; no "
                          f"spaces), or a bare NAME for a repo under your own user.") from None
    return rid


def _full_repo_id(repo_id: str | None, user: str) -> str:
    """NAMESPACE/NAME: a bare name (or the default) goes under the token's user."""
    rid = check_repo_id(repo_id) or f"{user}/{DEFAULT_REPO_NAME}"
    return rid if "/" in rid else f"{user}/{rid}"


def hub_endpoint(endpoint: str | None = None) -> str | None:
    """The endpoint to pass to huggingface_hub: the argument, else HF_ENDPOINT as it is now
    (huggingface_hub reads it only at import), else None for the library's default."""
    e = endpoint or os.environ.get("HF_ENDPOINT")
    return e.rstrip("/") if e else None


@contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """Switch huggingface_hub's own transfer bars off for the duration, when asked."""
    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def upload_to_hub(base_dir: str | Path, *, repo_id: str | None = None, token: str | None = None,
                  folder: str = DEFAULT_FOLDER, private: bool = False,
                  prompt: bool | None = None, endpoint: str | None = None,
                  license: str = CARD_LICENSE, show_progress: bool = True,
                  max_attempts: int = MAX_ATTEMPTS, retry_wait_s: float | None = None) -> dict | None:
    """Upload every model, the results, the config and a model card in one commit.

    Returns None when skipped (no token), else {'repo_id', 'folder', 'url', 'models',
    'files' (paths in the repo), 'card', 'commit' (the head commit after the upload),
    'new_commit' (False when nothing had changed), 'private'}. Raises UploadError with a clear
    message for a model file that does not load, a bad token (401), no write access (403), a
    repo that cannot be created, or a Hub that keeps failing; ConfigError for a bad repo id or
    folder (checked first, token or not).
    """

    folder = check_folder(folder)
    repo_id = check_repo_id(repo_id)
    local = _local_files(Path(base_dir))
    tok, source = _find_token(token, prompt=prompt)
    if not tok:
        log.info(NO_TOKEN_HINT)
        return None
    api = HfApi(endpoint=hub_endpoint(endpoint), token=tok, library_name="v3-cpb")
    hub = _Session(api, tok, _Who(user="?", orgs=(), source=source, endpoint=api.endpoint),
                   attempts=max_attempts,
                   wait_s=RETRY_WAIT_S if retry_wait_s is None else retry_wait_s,
                   repo_id=repo_id or "?")
    with _hf_progress(show_progress):
        repo_id = _sign_in(hub, repo_id)
        _ensure_repo(api, repo_id, private=private, who=hub.who, call=hub.call)
        _check_write(api, repo_id, call=hub.call)
        card_path = _card_path(api, repo_id, folder, call=hub.call)
        before = hub.call("read the repo's head commit", lambda: api.repo_info(repo_id).sha,
                          repo_id)
        uploads = _uploads(local, folder, card_path, repo_id=repo_id, license=license)
        _refuse_if_token_inside(uploads, tok)
        info = _commit(hub, repo_id, uploads, n_models=len(local.models))
    new_commit = info.oid != before
    url = f"{api.endpoint}/{repo_id}/tree/main/{folder}"
    if new_commit:
        log.info("uploaded %s, %s, %s and the model card (%s) to %s in one commit (%s)",
                 plural(len(local.models), "model"),
                 RESULTS_NAME if local.results else "no results",
                 CONFIG_NAME if local.config else "no config", card_path, url, info.oid[:7])
    else:
        log.info("%s already has these %s: nothing changed, no new commit (head %s)",
                 repo_id, plural(len(uploads), "file"), (info.oid or "")[:7])
    return {"repo_id": repo_id, "folder": folder, "url": url, "models": len(local.models),
            "files": [p for p, _ in uploads], "card": card_path, "commit": info.oid,
            "new_commit": new_commit, "private": private}


@dataclass
class _Session:
    """One upload's client, token and user, and its way of calling the Hub."""
    api: Any
    token: str
    who: _Who
    attempts: int
    wait_s: float
    repo_id: str             # for error messages until the call names its own repo

    def call(self, what: str, fn: Callable[[], Any], repo: str = "",
             explain: Callable[[BaseException], UploadError | None] | None = None) -> Any:
        """fn() with retries; any failure becomes one clear UploadError without the token."""
        try:
            return _with_retries(what, fn, attempts=self.attempts, wait_s=self.wait_s,
                                 token=self.token)
        except (UploadError, ConfigError):
            raise
        except Exception as e:
            err = explain(e) if explain is not None else None
            raise err or _upload_error(e, what=what, repo_id=repo or self.repo_id, who=self.who,
                                       token=self.token, attempts=self.attempts) from None


def _sign_in(hub: _Session, repo_id: str | None) -> str:
    """Check the token (whoami), learn the user, and return the full repo id; a read-only
    token is refused here, before the repo is touched."""
    me = hub.call("check the token (whoami)", lambda: hub.api.whoami(token=hub.token))
    orgs = tuple(o.get("name") for o in me.get("orgs") or [] if o.get("name"))
    hub.who = _Who(user=me["name"], orgs=orgs, source=hub.who.source, endpoint=hub.api.endpoint)
    hub.repo_id = full = _full_repo_id(repo_id, hub.who.user)
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise UploadError(f"the token from {hub.who.source} (user {hub.who.user!r}) is read-only, "
                          f"so it cannot write to {full} (it would get HTTP 403). Make a token "
                          f"with write access at {TOKEN_URL} and set it as HF_TOKEN.")
    return full


def _uploads(local: _LocalFiles, folder: str, card_path: str, *, repo_id: str,
             license: str) -> list[tuple[str, Path | bytes]]:
    """(path in the repo, local file or bytes) for everything that goes up."""
    results = read_json(local.results, default={}) if local.results else {}
    config = read_json(local.config, default=None) if local.config else None
    card = build_model_card(results or {}, config, repo_id=repo_id, folder=folder,
                            license=license).encode()
    uploads: list[tuple[str, Path | bytes]] = [(f"{folder}/{m.name}", m) for m in local.models]
    if local.results:
        uploads.append((f"{folder}/{RESULTS_NAME}", local.results))
    if local.config:
        uploads.append((f"{folder}/{CONFIG_NAME}", local.config))
    uploads.append((card_path, card))
    return uploads


def _commit(hub: _Session, repo_id: str, uploads: list[tuple[str, Path | bytes]], *,
            n_models: int):
    """One create_commit with every file; the Hub drops the files it already has."""
    message = (f"V3: {plural(n_models, 'model')}, {RESULTS_NAME}, {CONFIG_NAME} and the "
               f"model card")
    # Fresh operations on every try: a retry after a lost answer finds the files already
    # there (same content) and commits nothing twice.
    return hub.call("commit the upload", lambda: hub.api.create_commit(
        repo_id, repo_type="model", commit_message=message,
        operations=[CommitOperationAdd(path_in_repo=p,
                                       path_or_fileobj=str(src) if isinstance(src, Path) else src)
                    for p, src in uploads]), repo_id)


def _ensure_repo(api, repo_id: str, *, private: bool, who: _Who, call) -> None:
    """Create the repo unless it exists (create_repo with exist_ok=True covers a race)."""

    def existing():
        try:
            return api.repo_info(repo_id, repo_type="model")
        except RepositoryNotFoundError:
            return None
    info = call("look up the repo", existing, repo_id)
    if info is None:
        call("create the repo", lambda: api.create_repo(
            repo_id, repo_type="model", private=private, exist_ok=True), repo_id,
            explain=lambda e: _not_your_namespace(e, repo_id, who))
        log.info("created the %s model repo %s", "private" if private else "public", repo_id)
    elif private and not getattr(info, "private", False):
        log.info("%s already exists and is public: --private applies only to a new repo; "
                 "change the visibility in the repo's settings if you want", repo_id)


def _not_your_namespace(e: BaseException, repo_id: str, who: _Who) -> UploadError | None:
    """create_repo was refused in a namespace that is not the user's: say so plainly."""
    ns = repo_id.split("/")[0]
    if _status(e) in (403, 404) and ns != who.user and ns not in who.orgs:
        return UploadError(
            f"{repo_id} does not exist (or is private) and user {who.user!r} cannot create it: "
            f"{ns!r} is not your namespace (HTTP {_status(e)}). Upload to your own repo with "
            f"--hf-repo {who.user}/{DEFAULT_REPO_NAME}, or ask {ns!r} for write access.")
    return None


def _check_write(api, repo_id: str, *, call) -> None:
    """Fail before sending any file when the token cannot write to the repo."""

    def check() -> None:
        try:
            api.auth_check(repo_id, repo_type="model", write=True)
        except HfHubHTTPError as e:
            if _status(e) == 404:  # a Hub without this check: the commit will tell
                log.debug("write check not available for %s; the commit will tell", repo_id)
                return
            raise
    call("check write access", check, repo_id)


def _card_path(api, repo_id: str, folder: str, *, call) -> str:
    """'README.md' when the repo's root README is missing or ours, else '<folder>/README.md'."""

    def fetch() -> str | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = hf_hub_download(repo_id, "README.md", endpoint=api.endpoint,
                                       token=api.token, cache_dir=tmp)
            except RevisionNotFoundError:
                return None
            except HfHubHTTPError as e:
                if isinstance(e, EntryNotFoundError):
                    return None
                raise
            return Path(path).read_text(encoding="utf-8", errors="replace")

    root = call("read the repo's README.md", fetch, repo_id)
    if root is None or CARD_MARKER in root:
        return "README.md"
    log.info("%s has its own README.md: the model card goes to %s/README.md", repo_id, folder)
    return f"{folder}/README.md"


def _refuse_if_token_inside(uploads: list[tuple[str, Path | bytes]], token: str) -> None:
    """A last guard: never publish a file that contains the token."""
    for path_in_repo, src in uploads:
        data = src if isinstance(src, bytes) else src.read_bytes()
        if token.encode() in data:
            raise UploadError(f"{path_in_repo} contains the Hugging Face token: upload refused. "
                              f"Remove the token from that file and re-run step 5.")


# ---------------------------------------------------------------------------------------
# Loading back


def load_model_from_hub(repo_id: str, symbol: str, interval: str, *, folder: str = DEFAULT_FOLDER,
                        revision: str | None = None, token: str | None = None,
                        cache_dir: str | Path | None = None,
                        endpoint: str | None = None) -> LoadedModel:
    """Download `<folder>/v3_model_SYMBOL_INTERVAL.pt` from a Hub model repo (cached by
    huggingface_hub) and rebuild the model and its preprocessing, read with weights_only=True.

    `token`: for private repos; None uses huggingface_hub's own lookup (HF_TOKEN, stored login).
    Raises ConfigError (bad symbol/interval/folder), CheckpointError (no such model in the repo,
    or not a V3 checkpoint), DownloadError (repo missing or private, no access, Hub unreachable).
    """

    symbol, interval = normalize_symbol(symbol), check_interval(interval)
    folder = check_folder(folder)
    filename = f"{folder}/{model_filename(symbol, interval)}"
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, token=token,
                                    cache_dir=cache_dir, endpoint=hub_endpoint(endpoint)))
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}.") from None
    except HfHubHTTPError as e:
        if isinstance(e, EntryNotFoundError):
            raise CheckpointError(f"{where} has no {filename}: upload that pair first, or check "
                                  f"the symbol, interval and folder.") from None
        raise DownloadError(f"cannot read {where} ({_describe(e, token)}): check the repo id; a "
                            f"private repo needs a token with read access (HF_TOKEN).") from None
    except LocalEntryNotFoundError:
        raise DownloadError(f"the Hub did not answer while fetching {filename} from {where}, and "
                            f"the file is not in the local cache. Check the connection (and "
                            f"HF_ENDPOINT), then try again.") from None
    ckpt = load_checkpoint(path)  # weights_only=True
    if (ckpt.get("symbol"), ckpt.get("interval")) != (symbol, interval):
        raise CheckpointError(f"{filename} in {where} holds {ckpt.get('symbol')} "
                              f"{ckpt.get('interval')}, not {symbol} {interval}.")
    parts = path.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
    return LoadedModel.from_checkpoint(ckpt, path=path, repo_id=repo_id, revision=commit)
