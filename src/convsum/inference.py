"""Inference: a `Summarizer` (dialogues in, summaries out, with the model's own prompt) over an
engine, and `load_summarizer`, which opens whatever a user names (run folder, merged or full model
folder, GGUF export, plain model id) and loads it. summarize, evaluate, serve, export's check and
in-training selection all generate through here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from convsum import decoding
from convsum.config import Config, GenerateConfig, ModelConfig
from convsum.engines import TransformersEngine
from convsum.errors import ConvsumError
from convsum.modeling import load_model, load_tokenizer, resolve
from convsum.prompt import PromptFormatter
from convsum.rundir import Kind, RunDir, gguf_folder, kind_of, read_model_info


@dataclass
class Summarizer:
    """Dialogues in, summaries out, with the model's own prompt template: the one object summarize,
    evaluate, serve and the in-training held-out scoring all use. `model` is a transformers model (run
    through engines.TransformersEngine) or an engine itself (engines.Engine, e.g. llama.cpp's)."""

    model: object
    tokenizer: object
    template: str
    gen: GenerateConfig
    name: str
    info: dict = field(default_factory=dict)
    prompt_format: str = "template"

    def __post_init__(self):
        self.fmt = PromptFormatter(self.tokenizer, self.template, self.prompt_format)
        # An engine (engines.Engine) is used as it is; anything else is a transformers model.
        self.engine = self.model if hasattr(self.model, "decode_prompts") else TransformersEngine(self.model)
        if isinstance(self.engine, TransformersEngine):
            self.model.generation_config = self.gen.generation_config(self.tokenizer, self.fmt.stop_ids)
        self.truncated = 0  # prompts whose dialogue was cut to fit generate.max_input_tokens
        self.candidates = 0  # sequences decoded by mbr (samples + greedy)
        self.cut_off = 0  # summaries that ran into max_new_tokens without a stop token (most: loops)
        self.cut_off_flags: list[bool] = []  # per dialogue, for the last __call__

    @property
    def supports_beam(self) -> bool:
        return getattr(self.engine, "supports_beam", False)

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
    kind = kind_of(target) if target else None
    if kind is Kind.RUN:
        return _run_spec(target, base)
    if kind is not None:
        meta = read_model_info(target)
        info, template = {"model_dir": str(target), "base_model": meta["base_model"]}, meta["prompt_template"]
        fmt = meta.get("prompt_format", "template")
        if kind.standalone and not base:  # the folder itself, never re-quantized
            return ModelSpec(replace(cfg.model, name=target, load_in_4bit=False), template, fmt, None, "fine-tuned",
                             info)
        model = replace(cfg.model, name=meta["base_model"])
        adapter = Path(target) if kind is Kind.ADAPTER else None
    else:
        model = replace(cfg.model, name=target) if target else cfg.model
        info, adapter, template, fmt = {"base_model": model.name}, None, cfg.prompt.template, cfg.prompt.format
    if base or adapter is None:
        return ModelSpec(model, template, fmt, None, "base", info)
    return ModelSpec(model, template, fmt, adapter, "fine-tuned", {**info, "adapter": str(adapter)})


def _run_spec(target: str, base: bool) -> ModelSpec:
    run_dir = RunDir(target)
    run_cfg, run = run_dir.read()
    info = {"run": str(target), "base_model": run["base_model"], "base_revision": run.get("base_revision")}
    template, fmt = run_cfg.prompt.template, run_cfg.prompt.format  # both from the run's config.yaml
    if base:
        return ModelSpec(run_cfg.model, template, fmt, None, "base", info)
    if run_dir.has_full_model():  # train.method=full: the run holds the model itself
        return ModelSpec(replace(run_cfg.model, name=str(run_dir.model)), template, fmt, None, "fine-tuned", info)
    if not run_dir.has_adapter():
        raise ConvsumError(f"{target}: no trained weights yet (training not finished? resume with "
                           f"convsum train --output {target} --resume)")
    return ModelSpec(run_cfg.model, template, fmt, run_dir.adapter, "fine-tuned",
                     {**info, "adapter": str(run_dir.adapter)})


def load_summarizer(target: str | None, cfg: Config, base: bool = False) -> Summarizer:
    """Resolve `target` (see resolve_target) and load it, with a LoRA adapter folded into the weights."""
    from accelerate import PartialState

    if cfg.generate.engine == "llamacpp" or (target is not None and kind_of(target) is Kind.GGUF):
        if base:
            raise ConvsumError("--engine llamacpp runs an exported GGUF of the fine-tuned model; the base model "
                               "(--base, --compare-base) needs --engine transformers")
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


def load_gguf_summarizer(target: str | Path, cfg: Config, exact: bool = False):
    """A Summarizer whose engine is llama.cpp, prompting the GGUF exactly as the model was trained."""
    from transformers import AutoTokenizer

    from convsum.llamacpp import LlamaCppEngine
    from convsum.modeling import prepare_tokenizer

    folder = gguf_folder(str(target))
    info = read_model_info(folder)
    gguf = Path(target) if str(target).endswith(".gguf") else folder / info["gguf"]
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    gen = cfg.generate
    engine = LlamaCppEngine(gguf, folder / info["adapter"] if info.get("adapter") else None,
                            slots=min(gen.batch_size, 8), ctx_per_slot=gen.max_input_tokens + gen.max_new_tokens,
                            threads=gen.threads, exact=exact)
    return Summarizer(engine, tokenizer, info["prompt_template"], gen, "fine-tuned",
                      {"gguf": str(gguf), "base_model": info["base_model"], "engine": "llamacpp"},
                      info.get("prompt_format", "template"))


def generate_sharded(summarizer, dialogues: list[str], desc: str) -> list[str]:
    """Each process (accelerate launch / torchrun) generates a contiguous slice; gathered in order."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    if state.num_processes == 1:
        return summarizer(dialogues, progress=True, desc=desc)
    with state.split_between_processes(list(range(len(dialogues)))) as mine:
        preds = summarizer([dialogues[i] for i in mine], progress=state.is_main_process, desc=desc)
        pairs = gather_object([list(zip(mine, preds, summarizer.cut_off_flags))])
    out, flags = [""] * len(dialogues), [False] * len(dialogues)
    for chunk in pairs:
        for i, p, cut in chunk:
            out[i], flags[i] = p, cut
    summarizer.cut_off_flags = flags  # every process's, in order (the count is the whole set's)
    summarizer.cut_off = sum(flags)
    return out


def report_truncated(summarizer: Summarizer, n: int) -> None:
    if summarizer.truncated:
        print(f"convsum: {summarizer.truncated} of {n} dialogues were cut at the end to fit "
              f"generate.max_input_tokens={summarizer.gen.max_input_tokens}", file=sys.stderr)
