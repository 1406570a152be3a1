"""Generate stage: load a summarizer (run folder, merged folder or plain model) and summarize dialogues.

    convsum summarize runs/r1 dialogues.jsonl      # one {"dialogue": ...} per line
    echo "#Person1#: Hi ..." | convsum summarize runs/r1 -
    convsum summarize --base -                     # the base model, same prompt

Prompts are sorted by length and generated in batches with left padding, so a batch wastes little
on padding; results come back in input order.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from convsum.config import Config, GenerateConfig
from convsum.errors import ConvsumError
from convsum.modeling import load_model, load_tokenizer
from convsum.prompt import PromptFormatter, left_pad, position_ids
from convsum.rundir import is_convsum_model, is_run, read_model_info, read_run


@dataclass
class Summarizer:
    model: object
    tokenizer: object
    template: str
    gen: GenerateConfig
    name: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.fmt = PromptFormatter(self.tokenizer, self.template)
        self.model.eval()

    def encode(self, dialogue: str) -> list[int]:
        return self.fmt.prompt_ids(dialogue, self.gen.max_input_tokens)[0]

    @torch.inference_mode()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int | None = None,
                     num_beams: int | None = None) -> list[list[int]]:
        """One padded batch through `model.generate`; returns the new token ids of each row, EOS removed."""
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        with self._autocast(device):
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens or self.gen.max_new_tokens, num_beams=num_beams or self.gen.num_beams,
                do_sample=False, top_p=None, top_k=None, temperature=None,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        result = []
        for row in out[:, ids.shape[1]:].tolist():
            if self.tokenizer.eos_token_id in row:
                row = row[: row.index(self.tokenizer.eos_token_id)]
            result.append([t for t in row if t != self.tokenizer.pad_token_id])
        return result

    def _autocast(self, device):
        import contextlib

        from convsum.train import bf16_enabled

        if self.gen.bf16 == "false" or next(self.model.parameters()).dtype != torch.float32 \
                or not bf16_enabled(self.gen.bf16):
            return contextlib.nullcontext()
        # bf16 matmuls (2.3x the fp32 FLOP rate on AVX512-BF16 CPUs) with fp32 weights kept as they are.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def __call__(self, dialogues: list[str], progress: bool = False, desc: str = "summarizing") -> list[str]:
        prompts = [self.encode(d) for d in dialogues]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows early
        out: list[str] = [""] * len(prompts)
        bs = self.gen.batch_size
        with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="dlg") as bar:
            for start in range(0, len(order), bs):
                chunk = order[start:start + bs]
                for i, ids in zip(chunk, self.generate_ids([prompts[i] for i in chunk])):
                    out[i] = self.decode(ids)
                bar.update(len(chunk))
        return out


def load_summarizer(target: str | None, cfg: Config, base: bool = False, merge: bool = True) -> Summarizer:
    """target: a run folder, a merged/adapter folder written by convsum, a model id/folder, or None (cfg.model).
    base=True loads the target's base model without the adapter, with the same prompt template."""
    from convsum.config import ModelConfig

    template, model_cfg, adapter, info = cfg.prompt.template, cfg.model, None, {}
    if target and is_run(target):
        run_cfg, run = read_run(target)
        template, model_cfg = run["prompt_template"], run_cfg.model
        adapter = Path(target) / "adapter"
        if not base and not (adapter / "adapter_model.safetensors").is_file():
            raise ConvsumError(f"{target}: no adapter yet (training not finished? resume with "
                               f"convsum train --output {target} --resume)")
        info = {"run": str(target), "base_model": run["base_model"], "base_revision": run.get("base_revision")}
    elif target and is_convsum_model(target):
        meta = read_model_info(target)
        template = meta["prompt_template"]
        if meta["kind"] == "adapter":
            model_cfg, adapter = ModelConfig(**{**vars(cfg.model), "name": meta["base_model"]}), Path(target)
        else:
            model_cfg = ModelConfig(**{**vars(cfg.model), "name": target, "load_in_4bit": False})
        info = {"model_dir": str(target), "base_model": meta["base_model"]}
    elif target:
        model_cfg = ModelConfig(**{**vars(cfg.model), "name": target})
        info = {"base_model": target}
    else:
        info = {"base_model": cfg.model.name}
    from accelerate import PartialState

    with PartialState().main_process_first():  # the bundled model is converted once, by one process
        tokenizer = load_tokenizer(model_cfg)
    from convsum.modeling import resolve

    info["base_path"] = resolve(model_cfg)[0]
    if not merge:  # an external engine (vLLM) loads the weights itself
        return Summarizer(_NoModel(), tokenizer, template, cfg.generate, "fine-tuned" if adapter and not base else "base",
                          {**info, **({"adapter": str(adapter)} if adapter and not base else {})})
    model = load_model(model_cfg)
    name = "base"
    if adapter is not None and not base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if not model_cfg.load_in_4bit:
            # Folding LoRA into the weights makes generation exactly as fast as the base model.
            model = model.merge_and_unload()
        name = "fine-tuned"
        info["adapter"] = str(adapter)
    elif target and is_convsum_model(target) and read_model_info(target)["kind"] == "merged":
        name = "fine-tuned"
    return Summarizer(model, tokenizer, template, cfg.generate, name, info)


class _NoModel:
    def eval(self):
        return self


def read_dialogues(source: str, field_name: str) -> list[str]:
    """JSONL records (field `field_name`) or, for any other file or '-', the whole text as one dialogue."""
    if source == "-":
        text = sys.stdin.read()
        where = "<stdin>"
    else:
        from convsum.io import read_utf8

        text, where = read_utf8(source), source
    if source.endswith(".jsonl") or (text.lstrip().startswith("{") and source == "-"):
        from convsum.io import jsonl_objects

        out = []
        for n, obj in jsonl_objects(text, where):
            value = obj.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise ConvsumError(f"{where}:{n}: field {field_name!r} missing, not a string or empty")
            out.append(value.strip())
        if not out:
            raise ConvsumError(f"{where}: no dialogues")
        return out
    if not text.strip():
        raise ConvsumError(f"{where}: empty input (expected a dialogue)")
    return [text.strip()]


def main(cfg: Config, target: str | None, source: str = "-", base: bool = False, as_json: bool = False) -> list[str]:
    dialogues = read_dialogues(source, cfg.data.dialogue_field)
    summarizer = load_summarizer(target, cfg, base=base)
    summaries = summarizer(dialogues, progress=len(dialogues) > summarizer.gen.batch_size)
    for s in summaries:
        print(json.dumps({"summary": s}, ensure_ascii=False) if as_json else s)
    return summaries


__all__ = ["Summarizer", "load_summarizer", "main", "position_ids"]
