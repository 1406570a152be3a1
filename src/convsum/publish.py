"""Publish stage: `convsum push` uploads an adapter or a merged model, with its model card, to the Hub.

    convsum push runs/r1 --repo-id me/gemma3-270m-dialogsum-lora --dry-run    # adapter only (small)
    convsum push merged/r1 --repo-id me/gemma3-270m-dialogsum                  # a merged model folder

Uploads happen in one commit from a staging folder (files + README.md card), so the Hub never
holds half a model. Token: HF_TOKEN or the stored `hf auth login`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from convsum.card import BUNDLED_HUB_ID, card_inputs, model_card
from convsum.config import BUNDLED_MODEL, Config, load_config
from convsum.errors import ConvsumError, first_line
from convsum.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Kind, RunDir, is_run


def stage_upload(folder: Path, out: Path, repo_id: str = "PATH_OR_REPO_ID") -> str:
    """Copy the files to publish into `out`, with a generated README.md; returns the kind."""
    card = card_inputs(folder)
    kind = card.kind
    src = folder
    if is_run(folder):
        src = RunDir(folder).model if kind == Kind.FULL else RunDir(folder).adapter
    needed = {Kind.ADAPTER.value: (ADAPTER_WEIGHTS, ADAPTER_CONFIG),
              Kind.GGUF.value: (card.info.get("gguf", "model.gguf"),)}.get(kind, ("config.json",))
    for name in needed:
        if not (src / name).is_file():
            raise ConvsumError(f"{folder}: {(src / name).relative_to(folder)} missing "
                               f"({'no trained adapter yet?' if kind == Kind.ADAPTER else 'incomplete model folder'})")
    for p in src.iterdir():
        if p.is_file() and p.name != "README.md":
            shutil.copy2(p, out / p.name)
    if kind == Kind.ADAPTER and card.info["base_model"] == BUNDLED_MODEL:
        # peft's `base_model_name_or_path` must be loadable by others: point it at the Hub base.
        acfg = json.loads((out / ADAPTER_CONFIG).read_text())
        acfg["base_model_name_or_path"] = BUNDLED_HUB_ID
        (out / ADAPTER_CONFIG).write_text(json.dumps(acfg, indent=2))
    (out / "README.md").write_text(model_card(card, repo_id), encoding="utf-8")
    return kind


def main(folder: str, repo_id: str | None = None, private: bool | None = None, revision: str | None = None,
         dry_run: bool = False, cfg: Config | None = None) -> str:
    """Upload `folder` as `cfg.publish` says (keyword arguments, where given, win)."""
    given = {"repo_id": repo_id, "private": private, "revision": revision}
    pc = replace((cfg or load_config()).publish, **{k: v for k, v in given.items() if v is not None})
    repo_id, private, revision = pc.repo_id, pc.private, pc.revision
    src = Path(folder)
    if not src.is_dir():
        raise ConvsumError(f"{folder}: no such folder")
    if not repo_id:
        raise ConvsumError("--repo-id (publish.repo_id) is required: OWNER/NAME of the Hub repository")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConvsumError(f"--repo-id {repo_id!r}: expected OWNER/NAME")
    return _upload(src, folder, repo_id, private, revision, dry_run)


def _upload(src: Path, folder: str, repo_id: str, private: bool, revision: str | None, dry_run: bool) -> str:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    with tempfile.TemporaryDirectory(prefix="convsum-push-") as tmp:
        staging = Path(tmp)
        kind = stage_upload(src, staging, repo_id)
        files = sorted(staging.iterdir())
        if dry_run:
            print(f"dry run: would upload the {kind} in {folder} to https://huggingface.co/{repo_id}"
                  f"{' (private)' if private else ''}{f' branch {revision}' if revision else ''} in one commit:")
            for p in files:
                print(f"  {p.name:<32} {p.stat().st_size:>12,} bytes")
            print("\n--- README.md (model card) ---\n" + (staging / "README.md").read_text())
            return f"https://huggingface.co/{repo_id}"
        token = get_token()
        if not token:
            raise ConvsumError("not logged in to the Hugging Face Hub: set HF_TOKEN or run `hf auth login`")
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                              commit_message=f"convsum: upload {kind} ({len(files)} files)")
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            why = {401: "unauthorized (bad or expired token)", 403: "forbidden: the token cannot write to this repo",
                   404: "repo or branch not found"}.get(status, f"HTTP {status}")
            raise ConvsumError(f"push to {repo_id} failed: {why}") from None
        except ValueError as e:  # e.g. the Hub rejected the card's metadata
            raise ConvsumError(f"push to {repo_id} refused: {first_line(e)}") from None
        except Exception as e:  # transport errors (httpx, DNS, timeouts) have no common public base class
            if not (isinstance(e, OSError) or "httpx" in type(e).__module__ or "Timeout" in type(e).__name__
                    or "Connect" in type(e).__name__):
                raise
            raise ConvsumError(f"cannot reach the Hugging Face Hub ({type(e).__name__}: "
                               f"{first_line(e, 150) if str(e) else ''}); offline?") from None
    print(f"convsum: pushed the {kind} to {url}")
    return str(url)
