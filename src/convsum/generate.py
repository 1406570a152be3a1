"""Generate stage: load a summarizer (run folder, merged folder or plain model) and summarize dialogues.

    convsum summarize runs/r1 dialogues.jsonl      # one {"dialogue": ...} per line
    echo "#Person1#: Hi ..." | convsum summarize runs/r1 -
    convsum summarize --base -                     # the base model, same prompt

Prompts are sorted by length and generated in batches with left padding, so a batch wastes little
on padding; results come back in input order.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import DynamicCache, LogitsProcessorList

from convsum import decoding
from convsum.config import Config, GenerateConfig, ModelConfig
from convsum.errors import ConvsumError
from convsum.modeling import bf16_enabled, load_model, load_tokenizer, resolve
from convsum.prompt import PromptFormatter, left_pad, position_ids
from convsum.rundir import RunDir, is_convsum_model, is_run, read_model_info


class TransformersEngine:
    """Batched `model.generate` with left padding; mbr candidates decoded from one prefill per prompt."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.inference_mode()
    def decode_prompts(self, prompts: list[list[int]], gen: GenerateConfig, tokenizer, stop_ids: list[int],
                       repeats: int = 1, keys: list[int | None] | None = None) -> list[list[int]]:
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        kwargs = {"generation_config": gen.generation_config(tokenizer, stop_ids)}
        processors = LogitsProcessorList([decoding.StopBias(stop_ids, gen.eos_bias)] if gen.eos_bias else [])
        with self._autocast(device, gen):
            if repeats > 1:
                # One prefill per prompt: run it once, then decode `repeats` continuations from copies of
                # its cache (what num_return_sequences would do after `repeats` separate prefills).
                cache = DynamicCache(config=self.model.config)
                pos = position_ids(mask)
                self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                           cache=cache, use_cache=True)
                cache.batch_repeat_interleave(repeats)
                ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
                kwargs["cache"] = cache
                processors.append(decoding.SeededSampler(keys, ids.shape[1], gen.temperature, gen.top_p))
            out = self.model.generate(input_ids=ids, attention_mask=mask, logits_processor=processors, **kwargs)
        result = []
        for row in out[:, ids.shape[1]:].tolist():
            end = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
            result.append([t for t in row[:end] if t != tokenizer.pad_token_id])
        return result

    def _autocast(self, device, gen: GenerateConfig):
        if next(self.model.parameters()).dtype != torch.float32 or not bf16_enabled(gen.bf16):
            return contextlib.nullcontext()
        # bf16 matmuls (2.3x the fp32 FLOP rate on AVX512-BF16 CPUs) with fp32 weights kept as they are.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def close(self) -> None:
        pass


@dataclass
class Summarizer:
    """Dialogues in, summaries out, with the model's own prompt template: the one object summarize,
    evaluate, serve and the in-training held-out scoring all use. `model` is a transformers model or
    an engine (llamacpp.LlamaCppEngine) with the same `decode_prompts`."""

    model: object
    tokenizer: object
    template: str
    gen: GenerateConfig
    name: str
    info: dict = field(default_factory=dict)
    prompt_format: str = "template"

    def __post_init__(self):
        self.fmt = PromptFormatter(self.tokenizer, self.template, self.prompt_format)
        self.engine = self.model if hasattr(self.model, "decode_prompts") else TransformersEngine(self.model)
        if isinstance(self.engine, TransformersEngine):
            self.model.generation_config = self.gen.generation_config(self.tokenizer, self.fmt.stop_ids)
        self.truncated = 0  # prompts whose dialogue was cut to fit generate.max_input_tokens
        self.candidates = 0  # sequences decoded by mbr (samples + greedy)
        self.cut_off = 0  # summaries that ran into max_new_tokens without a stop token (most: loops)
        self.cut_off_flags: list[bool] = []  # per dialogue, for the last __call__

    @property
    def supports_beam(self) -> bool:
        return isinstance(self.engine, TransformersEngine)

    def encode(self, dialogue: str) -> list[int]:
        ids, truncated = self.fmt.prompt_ids(dialogue, self.gen.max_input_tokens)
        self.truncated += truncated
        return ids

    def generate_ids(self, prompts: list[list[int]], **overrides) -> list[list[int]]:
        """One batch of prompts -> the summary token ids of each (EOS removed). `overrides`: a request's
        decoding settings (GenerateConfig fields: max_new_tokens, strategy, num_beams, mbr_samples, ...)."""
        gen = self.gen.with_overrides(**overrides) if overrides else self.gen
        if gen.strategy != "mbr":
            return self._decode(prompts, gen)
        repeats = gen.mbr_samples + 1  # candidate 0 of each prompt is the greedy summary
        keys = [None if j == 0 else decoding.row_key(gen.seed, p, j) for p in prompts for j in range(repeats)]
        rows = self._decode(prompts, gen, repeats, keys)
        self.candidates += len(rows)
        chosen = []
        for i in range(len(prompts)):
            candidates = rows[i * repeats:(i + 1) * repeats]
            chosen.append(candidates[decoding.mbr_pick([self.decode(c) for c in candidates], gen.mbr_utility)])
        return chosen

    def _decode(self, prompts: list[list[int]], gen: GenerateConfig, repeats: int = 1,
                keys: list[int | None] | None = None) -> list[list[int]]:
        return self.engine.decode_prompts(prompts, gen, self.tokenizer, self.fmt.stop_ids, repeats, keys)

    def close(self) -> None:
        self.engine.close()

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def __call__(self, dialogues: list[str], progress: bool = False, desc: str = "summarizing") -> list[str]:
        prompts = [self.encode(d) for d in dialogues]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: OOM shows early
        out: list[str] = [""] * len(prompts)
        flags = [False] * len(prompts)
        bs = self.gen.batch_size
        t0, c0 = time.perf_counter(), self.candidates
        with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="dlg") as bar:
            for start in range(0, len(order), bs):
                chunk = order[start:start + bs]
                for i, ids in zip(chunk, self.generate_ids([prompts[i] for i in chunk])):
                    out[i] = self.decode(ids)
                    flags[i] = len(ids) >= self.gen.max_new_tokens
                bar.update(len(chunk))
                if self.gen.strategy == "mbr":
                    bar.set_postfix(candidates_per_s=f"{(self.candidates - c0) / (time.perf_counter() - t0):.1f}")
        self.cut_off_flags = flags
        self.cut_off += sum(flags)
        return out


@dataclass
class ModelSpec:
    """What a summarize/evaluate/serve target names, resolved without loading any weights."""

    model: ModelConfig  # the weights to load: a base model or a merged folder
    template: str
    prompt_format: str
    adapter: Path | None  # a LoRA adapter to fold into `model`, if any
    name: str  # "fine-tuned" or "base"
    info: dict


def resolve_target(target: str | None, cfg: Config, base: bool = False) -> ModelSpec:
    """target: a run folder, a merged/adapter folder written by convsum, a model id/folder, or None (cfg.model).
    base=True means the target's base model without the adapter, with the same prompt template."""
    if target and is_run(target):
        run_dir = RunDir(target)
        run_cfg, run = run_dir.read()
        info = {"run": str(target), "base_model": run["base_model"], "base_revision": run.get("base_revision")}
        fmt = run_cfg.prompt.format
        if run_dir.has_full_model() and not base:  # train.method=full: the run holds the model itself
            return ModelSpec(replace(run_cfg.model, name=str(run_dir.model)), run["prompt_template"], fmt, None,
                             "fine-tuned", info)
        if not base and not run_dir.has_adapter():
            raise ConvsumError(f"{target}: no trained weights yet (training not finished? resume with "
                               f"convsum train --output {target} --resume)")
        model, adapter, template = run_cfg.model, run_dir.adapter, run["prompt_template"]
    elif target and is_convsum_model(target):
        meta = read_model_info(target)
        info, template = {"model_dir": str(target), "base_model": meta["base_model"]}, meta["prompt_template"]
        fmt = meta.get("prompt_format", "template")
        if meta["kind"] in ("merged", "full") and not base:  # the folder itself, never re-quantized
            return ModelSpec(replace(cfg.model, name=target, load_in_4bit=False), template, fmt, None, "fine-tuned",
                             info)
        model = replace(cfg.model, name=meta["base_model"])
        adapter = Path(target) if meta["kind"] == "adapter" else None
    else:
        model = replace(cfg.model, name=target) if target else cfg.model
        info, adapter, template, fmt = {"base_model": model.name}, None, cfg.prompt.template, cfg.prompt.format
    if base or adapter is None:
        return ModelSpec(model, template, fmt, None, "base", info)
    return ModelSpec(model, template, fmt, adapter, "fine-tuned", {**info, "adapter": str(adapter)})


def load_summarizer(target: str | None, cfg: Config, base: bool = False) -> Summarizer:
    """Resolve `target` (see resolve_target) and load it, with a LoRA adapter folded into the weights."""
    from accelerate import PartialState

    gguf_export = target is not None and (str(target).endswith(".gguf") or (
        is_convsum_model(target) and read_model_info(target)["kind"] == "gguf"))
    if cfg.generate.engine == "llamacpp" or gguf_export:
        if base:
            raise ConvsumError("--engine llamacpp runs an exported GGUF of the fine-tuned model; the base model "
                               "(--base, --compare-base) needs --engine transformers")
        from convsum.llamacpp import load_gguf_summarizer

        return load_gguf_summarizer(target or cfg.model.name, cfg)
    spec = resolve_target(target, cfg, base)
    with PartialState().main_process_first():  # the bundled model is converted once, by one process
        tokenizer = load_tokenizer(spec.model)
    model = load_model(spec.model)
    if spec.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(spec.adapter))
        if not spec.model.load_in_4bit:
            # Folding LoRA into the weights makes generation exactly as fast as the base model.
            model = model.merge_and_unload()
    return Summarizer(model, tokenizer, spec.template, cfg.generate, spec.name,
                      {**spec.info, "base_path": resolve(spec.model)[0]}, spec.prompt_format)


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


def report_truncated(summarizer: Summarizer, n: int) -> None:
    if summarizer.truncated:
        print(f"convsum: {summarizer.truncated} of {n} dialogues were cut at the end to fit "
              f"generate.max_input_tokens={summarizer.gen.max_input_tokens}", file=sys.stderr)


def main(cfg: Config, target: str | None, source: str = "-", base: bool = False, as_json: bool = False) -> list[str]:
    dialogues = read_dialogues(source, cfg.data.dialogue_field)
    summarizer = load_summarizer(target, cfg, base=base)
    summaries = summarizer(dialogues, progress=len(dialogues) > summarizer.gen.batch_size)
    report_truncated(summarizer, len(dialogues))
    for s in summaries:
        print(json.dumps({"summary": s}, ensure_ascii=False) if as_json else s)
    return summaries

