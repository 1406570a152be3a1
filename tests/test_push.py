"""`convsum push` (convsum.publish) against a local fake Hub (tests/hub_stub.py): no network, no training.

huggingface_hub reads HF_ENDPOINT, the token path, offline and Xet switches into
`huggingface_hub.constants` at import time, and `HfApi()` copies `constants.ENDPOINT` when it is
built (publish.main builds it per call), so the tests patch those constants as well as the env.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hub_stub import FAKE_TOKEN, HubStub

from convsum import publish
from convsum.errors import ConvsumError

TEMPLATE = "Summarize the following conversation.\n\n### Conversation:\n{dialogue}\n\n### Summary:\n"
REPO = "alice/convsum-test"


def _scores(r1, r2, rl, rls):
    return {"rouge1": r1, "rouge2": r2, "rougeL": rl, "rougeLsum": rls}


def _metrics(first: dict) -> dict:
    refs = {"summary1": first, "summary2": _scores(38.0, 14.0, 31.0, 33.0), "summary3": _scores(36.0, 12.0, 30.0, 31.0)}
    mean = {k: round(sum(r[k] for r in refs.values()) / 3, 2) for k in first}
    return {"n": 2, "split": "test", "per_reference": refs, "mean": mean, "best": refs["summary1"]}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A convsum run folder as `convsum train` + `convsum evaluate --compare-base` leave it, built by hand."""
    from safetensors.torch import save_file
    import torch

    from convsum.config import load_config, save_config
    from convsum.rundir import write_model_info

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": "bundled:gemma3-270m", "base_revision": "gguf-sha256:abc",
                                              "prompt_template": TEMPLATE, "train_split": "validation"}))
    cfg = load_config()
    save_config(cfg, run / "config.yaml")
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.arange(32.0).reshape(4, 8),
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(8, 4)},
              str(run / "adapter" / "adapter_model.safetensors"))
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/root/.cache/x", "peft_type": "LORA", "r": 4}))
    write_model_info(run / "adapter", cfg, "gguf-sha256:abc", "adapter")
    for name, first in (("eval-test", _scores(40.0, 15.0, 33.0, 35.0)), ("eval-test-base", _scores(21.5, 6.5, 18.5, 19.5))):
        (run / name).mkdir()
        (run / name / "metrics.json").write_text(json.dumps(_metrics(first)))
        (run / name / "predictions.jsonl").write_text("".join(json.dumps(
            {"fname": f"test_{i}_1", "dialogue": "#Person1#: Is the pharmacy open late?\n#Person2#: Until nine.",
             "prediction": f"{name}: Person2 tells Person1 the pharmacy is open until nine.",
             "references": {"summary1": "The pharmacy is open until nine.", "summary2": "Open till 9.",
                            "summary3": "#Person2# says it closes at nine."}}) + "\n" for i in range(2)))
    return run


UPLOAD_PATHS = pytest.mark.parametrize("hub", ["xet-pipeline", "legacy-commit"], indirect=True)


@pytest.fixture
def hub(request, monkeypatch, tmp_path):
    """A running stub Hub that huggingface_hub talks to, with a fake token.

    `upload_folder` has two code paths: with hf_xet installed (the default here) a pipelined
    uploader, with Xet disabled the classic `create_commit`. Tests that reach the upload run on
    both (UPLOAD_PATHS); both must land as one commit of inline ("regular") files on the stub.
    """
    from huggingface_hub import constants

    stub = HubStub()
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setattr(constants, "ENDPOINT", stub.url)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Never read (or send) a real stored token: point the token file at an empty folder.
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", getattr(request, "param", "xet-pipeline") == "legacy-commit")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    yield stub
    stub.stop()
    assert not stub.unknown, f"requests the stub does not implement: {stub.unknown}"


@UPLOAD_PATHS
def test_push_uploads_adapter_and_card_in_one_commit(hub, run_dir):
    from huggingface_hub import ModelCard

    url = publish.main(str(run_dir), REPO)

    assert REPO in url
    assert hub.repos == [{"repo_id": REPO, "private": False}]
    assert hub.branches == []
    assert len(hub.commits) == 1, hub.commits
    commit = hub.commits[0]
    assert commit["repo_id"] == REPO and commit["revision"] == "main"
    assert commit["message"].startswith("convsum: upload adapter")
    files = commit["files"]
    assert set(files) == {"README.md", "adapter_model.safetensors", "adapter_config.json", "convsum.json"}
    assert files["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert files["convsum.json"] == (run_dir / "adapter" / "convsum.json").read_bytes()
    acfg = json.loads(files["adapter_config.json"])
    assert acfg == {"base_model_name_or_path": "google/gemma-3-270m", "peft_type": "LORA", "r": 4}
    # the run folder itself is left untouched (the rewrite happens in the staging copy)
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "/root/.cache/x"

    text = files["README.md"].decode("utf-8")
    card = ModelCard(text)
    assert card.data.base_model == "google/gemma-3-270m"
    assert card.data.datasets == ["knkarthick/dialogsum"]
    assert card.data.license == "other"
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == "text-generation"
    assert {"convsum", "lora", "peft"} <= set(card.data.tags)
    assert "CC BY-NC-SA 4.0" in text
    assert "| fine-tuned | summary1 | 40.0 | 15.0 | 33.0 | 35.0 |" in text
    assert "| base | summary1 | 21.5 | 6.5 | 18.5 | 19.5 |" in text
    assert "mean of refs" in text
    assert TEMPLATE in text  # the exact training prompt, verbatim
    assert "eval-test: Person2 tells Person1" in text  # example from the fine-tuned predictions, not the base ones


@UPLOAD_PATHS
def test_push_private_to_branch(hub, run_dir):
    publish.main(str(run_dir), REPO, private=True, revision="dev")

    assert hub.repos == [{"repo_id": REPO, "private": True}]
    assert hub.branches == [{"repo_id": REPO, "branch": "dev"}]
    assert [c["revision"] for c in hub.commits] == ["dev"]
    assert ("POST", f"/api/models/{REPO}/preupload/dev") in hub.requests


def test_dry_run_prints_files_and_card_and_sends_nothing(hub, run_dir, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no login
    url = publish.main(str(run_dir), REPO, private=True, revision="dev", dry_run=True)

    out = capsys.readouterr().out
    assert url.endswith(REPO)
    assert "dry run" in out and "(private)" in out and "branch dev" in out
    size = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    for name in ("README.md", "adapter_model.safetensors", "adapter_config.json", "convsum.json"):
        assert f"  {name} " in out
    assert f"{size:,} bytes" in out
    assert "base_model: google/gemma-3-270m" in out and "CC BY-NC-SA 4.0" in out and "40.0" in out
    assert hub.requests == []


def _closed_port_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused, fast
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _break(case: str, stub: HubStub, run_dir: Path, tmp_path: Path, monkeypatch) -> tuple[str, str]:
    """Set up one failure; returns (folder, repo_id)."""
    from huggingface_hub import constants

    if case == "no-token":
        monkeypatch.delenv("HF_TOKEN")
    elif case == "bad-token":
        stub.fail_all = 401
    elif case == "wrong-token":  # the stub's own Authorization check
        monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    elif case == "offline":
        url = _closed_port_url()
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(constants, "ENDPOINT", url)
    elif case == "not-a-run":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), REPO
    elif case == "no-such-folder":
        return str(tmp_path / "missing"), REPO
    elif case == "bad-repo-id":
        return str(run_dir), "noslash"
    elif case == "untrained":
        (run_dir / "adapter" / "adapter_model.safetensors").unlink()
    return str(run_dir), REPO


ERRORS = {
    "no-token": "not logged in",
    "bad-token": "unauthorized",
    "wrong-token": "unauthorized",
    "offline": "cannot reach the Hugging Face Hub",
    "not-a-run": "not a convsum run folder",
    "no-such-folder": "no such folder",
    "bad-repo-id": "expected OWNER/NAME",
    "untrained": "no trained adapter",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_push_errors_are_one_line_and_commit_nothing(hub, run_dir, tmp_path, monkeypatch, case):
    folder, repo_id = _break(case, hub, run_dir, tmp_path, monkeypatch)

    with pytest.raises(ConvsumError) as exc:
        publish.main(folder, repo_id)

    msg = str(exc.value)
    assert ERRORS[case] in msg
    assert "\n" not in msg and len(msg) < 300
    assert hub.commits == []
    if case not in ("bad-token", "wrong-token"):
        assert hub.requests == []  # refused before talking to the (stub) Hub


@UPLOAD_PATHS
def test_push_to_unwritable_repo_fails_cleanly(hub, run_dir):
    hub.fail_commit = 403
    with pytest.raises(ConvsumError, match=r"^push to alice/convsum-test failed: forbidden") as exc:
        publish.main(str(run_dir), REPO)
    assert "\n" not in str(exc.value)
    assert hub.repos and hub.commits == []


def test_cli_push_dry_run(hub, run_dir, capsys):
    from convsum import cli

    assert cli.main(["push", str(run_dir), "--repo-id", "alice/x", "--dry-run"]) == 0
    assert "adapter_model.safetensors" in capsys.readouterr().out
    assert cli.main(["push", str(run_dir), "--repo-id", "noslash"]) == 2
    assert "expected OWNER/NAME" in capsys.readouterr().err
    assert hub.requests == []


def test_card_names_the_run_s_own_data_and_decoding_not_dialogsum(tmp_path):
    from huggingface_hub import ModelCard

    from convsum.card import CardInputs, model_card

    per = {"rouge1": 50.0, "rouge2": 20.0, "rougeL": 40.0, "rougeLsum": 41.0}
    metrics = {"n": 7, "split": "test", "per_reference": {"summary": per}, "mean": per,
               "generate": {"strategy": "mbr", "mbr_samples": 8, "eos_bias": -1.0}}
    cfg = {"data": {"source": str(tmp_path / "action_items.jsonl")}, "lora": {"r": 4}, "train": {"epochs": 1}}
    text = model_card(CardInputs("adapter", {"base_model": "org/base", "prompt_template": "{dialogue}\n"}, cfg,
                                 metrics, None, None))
    assert "DialogSum" not in text and "CC BY-NC-SA" not in text
    assert "7 dialogues of the `action_items.jsonl` test split, mbr decoding, 8 samples, eos_bias -1.0" in text
    assert ModelCard(text).data.datasets is None
    cfg["data"]["source"] = "../shared/data/dialogsum"
    text = model_card(CardInputs("adapter", {"base_model": "org/base", "prompt_template": "{dialogue}\n"}, cfg,
                                 metrics, None, None))
    assert "CC BY-NC-SA 4.0" in text and ModelCard(text).data.datasets == ["knkarthick/dialogsum"]
