"""Step 5: publish the models and results to a Hugging Face model repo in one commit.

The token is never printed, logged or written anywhere. With no token the step is skipped
with one line that says how to give one. Facts: REFERENCE.md section 3.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from v3_common import UploadError, log

DEFAULT_REPO_NAME = "cpb-models"
DEFAULT_FOLDER = "v3"
NO_TOKEN_HINT = ("no Hugging Face token found: upload skipped. Set HF_TOKEN (a token with write "
                 "access from https://huggingface.co/settings/tokens), run `hf auth login`, or "
                 "in Colab add the secret HF_TOKEN; then re-run step 5.")


def resolve_token(explicit: str | None = None) -> str | None:
    """An explicit token, else HF_TOKEN, else the stored login / Colab secret."""
    if explicit:
        return explicit
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token
    return get_token()


def stage_upload(base_dir: Path, staging: Path, folder: str) -> list[Path]:
    """Copy what goes up into `staging/<folder>/` (the local files are never modified)."""
    if staging.exists():
        shutil.rmtree(staging)
    dest = staging / folder
    dest.mkdir(parents=True)
    files = sorted((base_dir / "all_models").glob("v3_model_*.pt"))
    for f in files:
        shutil.copy2(f, dest / f.name)
    results = base_dir / "results" / "v3_training_results.json"
    if results.exists():
        shutil.copy2(results, dest / "training_results.json")
    config = base_dir / "results" / "config.json"
    if config.exists():
        shutil.copy2(config, dest / "config.json")
    return files


def upload_to_hub(base_dir: str | Path, *, repo_id: str | None = None, token: str | None = None,
                  folder: str = DEFAULT_FOLDER, private: bool = False) -> dict | None:
    """Upload every model and the results in one commit. None when skipped (no token)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    base_dir = Path(base_dir)
    token = resolve_token(token)
    if not token:
        log.info(NO_TOKEN_HINT)
        return None
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
        repo_id = repo_id or f"{user}/{DEFAULT_REPO_NAME}"
        staging = base_dir / "upload_staging"
        files = stage_upload(base_dir, staging, folder)
        if not files:
            raise UploadError(f"no models in {base_dir / 'all_models'}: train first (step 4).")
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=staging, repo_type="model",
                                 commit_message=f"V3: {len(files)} models and results")
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        raise UploadError(f"Hugging Face upload to {repo_id or '<your user>/' + DEFAULT_REPO_NAME} "
                          f"failed with HTTP {status}.") from None
    log.info("uploaded %d models to https://huggingface.co/%s (folder %s/)", len(files), repo_id, folder)
    return {"repo_id": repo_id, "folder": folder, "files": len(files),
            "commit": getattr(info, "oid", None)}
