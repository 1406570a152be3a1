"""Training throughput: convsum's trainer vs TRL's SFTTrainer (+ PEFT), same model, data and method.

    python bench/train_throughput.py                       # TRL defaults, TRL tuned, convsum (LoRA); full FT pair
    python bench/train_throughput.py --variants all        # + every convsum ablation step
    python bench/train_throughput.py --variants trl-tuned,convsum --steps 3

Each variant runs in its own process (clean peak RSS): the same bundled Gemma 3 270M, the same
first DialogSum dev examples, effective batch 8. LoRA rows: `configs/gemma3-270m-lora.yaml` (r16/alpha32/
dropout .05 on all linear layers, lr 2e-4). Full fine-tuning rows (`-full`): `configs/gemma3-270m.yaml`, the
CPU recipe (every weight but the embedding / tied head, lr 5e-5), TRL given the same trainable weights. The first `--warmup` steps are excluded; then `--steps` optimizer steps are timed. Real
tokens = non-padding tokens through the forward pass. The machine (CPU, ISA, matmul ceilings) is
measured in the same run.

The baselines, as TRL's maintainers would want them compared:
- trl-defaults: `SFTConfig` as it comes (gradient checkpointing on, batch 8 x 1, random order, bf16
  on), only the learning rate, step count and logging set; on a CPU without native bf16 (where bf16
  is emulated, hours a step) bf16 is turned off, and the bench says so.
- trl-tuned (the headline): gradient checkpointing off, micro-batch 2 x accumulation 4 (convsum's),
  length-grouped batches, completion-only loss, bf16 exactly when convsum uses it (native bf16), and
  of TRL's own speed options what works on CPU (see `trl_tuned_options`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"

# variant -> convsum config overrides. The ablation rows take batches in random order (like TRL's
# defaults), so they see the same batches; each row adds one change; "convsum" is the shipped defaults.
STOCK = {"train.cpu_fast_path": False, "model.attn_implementation": "sdpa", "train.fused_loss": False,
         "train.group_by_length": False}
FP32 = {**STOCK, "train.bf16": "false"}
CONVSUM = {
    "convsum-fp32-full-logits": {**FP32, "train.summary_only_logits": False},  # the standard loss
    "convsum-fp32": FP32,  # + LM head on summary positions only
    "convsum-fp32-fused": {**FP32, "train.fused_loss": True},  # + head and cross-entropy fused
    "convsum-bf16": {**STOCK, "train.fused_loss": True},  # + bf16 autocast (native bf16 CPUs)
    "convsum-fastpath": {"model.attn_implementation": "sdpa", "train.group_by_length": False},  # + fast path
    "convsum-eager": {"train.group_by_length": False},  # + eager attention for CPU training
    "convsum": {},  # + length-grouped batches: the shipped defaults
}
CONVSUM["convsum-full"] = {}  # the CPU recipe as shipped: full fine-tuning
CONVSUM["convsum-freeze9-full"] = {"train.freeze_layers": 9}  # + the first 9 of 18 layers frozen (no backward there)
CONVSUM["convsum-mb4-full"] = {"train.batch_size": 4, "train.grad_accum": 2}  # same effective batch, larger matmuls
CONVSUM["convsum-mb1-full"] = {"train.batch_size": 1, "train.grad_accum": 8}  # no padding at all
CONVSUM["convsum-mb8-full"] = {"train.batch_size": 8, "train.grad_accum": 1}
CONVSUM["convsum-emb-full"] = {"train.freeze_embeddings": False}  # + the embedding / tied head trains too
CONVSUM["convsum-dora"] = {"lora.use_dora": True}  # the LoRA YAML with PEFT's DoRA (magnitude vectors)
TRL = ("trl-defaults", "trl-tuned", "trl-tuned-full")
HEADLINE = "trl-defaults,trl-tuned,convsum,trl-tuned-full,convsum-full"
LORA_YAML, FULL_YAML = ROOT / "configs" / "gemma3-270m-lora.yaml", ROOT / "configs" / "gemma3-270m.yaml"


def is_full(variant: str) -> bool:
    return variant.endswith("-full")


class StepTimer:
    """Wraps the collator (counts real tokens per batch) and times each optimizer step."""

    def __init__(self, collator):
        self.collator, self.batch_tokens, self.batch_labels, self.step_times = collator, [], [], []
        self.batch_slots = []  # tokens including padding

    def __call__(self, batch):
        out = self.collator(batch)
        self.batch_tokens.append(int(out["attention_mask"].sum()))
        self.batch_labels.append(int((out["labels"] != -100).sum()))
        self.batch_slots.append(out["input_ids"].numel())
        return out

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.step_times.append(time.perf_counter() - self.t)

        return CB()


def _cfg(overrides: dict, args, out: str, full: bool = False):
    from convsum.config import load_config

    return load_config(FULL_YAML if full else LORA_YAML, {
        "data.source": str(args.data), "data.val_size": 0, "train.output_dir": out, "train.save_steps": 10_000,
        "train.max_steps": args.warmup + args.steps, "train.logging_steps": 1, "train.select_by": "last",
        "train.early_stopping_patience": 0,
        "data.max_train_examples": 8 * (args.warmup + args.steps),  # effective batch 8 in every variant
        **overrides})


def run_convsum(overrides: dict, args, out: str, full: bool) -> tuple:
    from convsum import train
    from convsum.modeling import bf16_enabled, load_tokenizer
    from convsum.rundir import RunDir

    cfg = _cfg(overrides, args, out, full)
    tok = load_tokenizer(cfg.model)
    _, train_ex, _, _ = train.prepare_examples(cfg, tok)
    torch.manual_seed(cfg.train.seed)
    model, _ = train.build_model(cfg)  # what `convsum train` trains: LoRA or full, per the YAML
    run = RunDir(out)
    targs = train.training_arguments(cfg, run.checkpoints, False, bf16_enabled(cfg.train.bf16))
    targs.disable_tqdm = True
    trainer, _ = train.build_trainer(cfg, model, tok, train_ex, [], targs, run.log)
    timer = StepTimer(trainer.data_collator)
    trainer.data_collator = timer
    trainer.add_callback(timer.callback())
    trainer.train()
    return timer, cfg.train.grad_accum, targs.bf16, model


def trl_tuned_options(bf16: bool) -> dict:
    """TRL configured well for this run: what its docs recommend for speed, where it works on CPU.
    padding_free / packing need flash-attention 2 (CUDA) to keep examples from attending to each other,
    and Liger's kernels are Triton (GPU): none of them apply here."""
    return {"gradient_checkpointing": False, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
            "train_sampling_strategy": "group_by_length", "completion_only_loss": True, "bf16": bf16}


def run_trl(variant: str, args, out: str) -> tuple:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from convsum.data import train_and_held_out
    from convsum.modeling import bf16_enabled, load_model, load_tokenizer
    from convsum.training import make_trainable

    full = is_full(variant)
    cfg = _cfg({}, args, out, full)
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "right"  # what a user of TRL would have
    records = train_and_held_out(cfg).train  # the same examples convsum.prepare_examples picks
    rows = [{"prompt": cfg.prompt.template.format(dialogue=r.dialogue), "completion": r.summary} for r in records]
    model = load_model(cfg.model)
    # SFTConfig's default bf16=True is kept where the CPU has bf16; elsewhere it would be emulated (hours a
    # step), so there "TRL defaults" differs from the defaults in that one setting (the bench says so).
    native = bf16_enabled("auto")
    options = trl_tuned_options(native) if variant.startswith("trl-tuned") else ({} if native else {"bf16": False})
    if full:  # the same trainable weights as convsum's recipe: all but the embedding / tied head
        make_trainable(model, cfg.train.freeze_embeddings, cfg.train.freeze_layers)
    sft = SFTConfig(output_dir=out, learning_rate=cfg.train.learning_rate, max_steps=args.warmup + args.steps, logging_steps=1,
                    save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                    **options)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=None if full else peft)
    timer = StepTimer(trainer.data_collator)
    trainer.data_collator = timer
    trainer.add_callback(timer.callback())
    trainer.train()
    return timer, sft.gradient_accumulation_steps, sft.bf16, trainer.model


def child(variant: str, args) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    if variant not in TRL:  # what `convsum train` does first: the bench runs exactly what users run
        from convsum.modeling import limit_kernel_cache

        limit_kernel_cache()
    with tempfile.TemporaryDirectory() as out:
        timer, accum, bf16, model = run_trl(variant, args, out) if variant in TRL else \
            run_convsum(CONVSUM[variant], args, out, is_full(variant))
    w = args.warmup * accum  # batches per optimizer step = accum
    tokens = sum(timer.batch_tokens[w: w + args.steps * accum])
    labels = sum(timer.batch_labels[w: w + args.steps * accum])
    slots = sum(timer.batch_slots[w: w + args.steps * accum])
    secs = sum(timer.step_times[args.warmup: args.warmup + args.steps])
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    # The head is counted once, as `emb`, whether tied or (convsum's CPU fast path) a separate bf16 copy.
    body = sum(p.numel() for p in model.parameters()) - emb.numel() - (head.numel() if head is not emb else 0)
    emb = emb.numel()
    # LoRA step on a frozen base: forward 2N + input-gradient backward 2N FLOPs per token for the body
    # (full fine-tuning adds 2N for the weight gradients); the head is needed only on label positions
    # (the minimum any trainer must do). Full fine-tuning with frozen lower layers: backward (4N) only
    # through the trainable ones.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = ((2 * body + 4 * trainable) if is_full(variant) else 4 * body) * tokens + 4 * emb * labels
    return {"variant": variant, "tokens_per_s": tokens / secs, "s_per_step": secs / args.steps, "tokens": tokens,
            "bf16": bool(bf16), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "useful_gflop_per_s": flops / secs / 1e9,
            "padding_pct": 100 * (slots - tokens) / slots}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default=HEADLINE, help=f"comma-separated, or 'all' ({', '.join((*TRL, *CONVSUM))})")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return
    if not (args.data / "dialogsum.dev.jsonl").is_file():
        sys.exit(f"DialogSum not found at {args.data}")
    info = machine.describe()
    print(machine.line(info), flush=True)
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(info["isa"])) or torch.cuda.is_available()
    variants = [*TRL, *CONVSUM] if args.variants == "all" else args.variants.split(",")
    results = []
    for v in variants:
        if v == "trl-defaults" and not native_bf16:
            print(f"  {v}: run with bf16=False: SFTConfig's default bf16=True would autocast every matmul to bf16, "
                  f"which this CPU (no AVX512-BF16/AMX) emulates at {info['bf16_gflops']} GFLOP/s", flush=True)
        cmd = [sys.executable, __file__, "--child", v, "--data", str(args.data), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or not line:
            print(f"{v}: failed\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(line[7:]))
        print(f"  {v}: {results[-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    by_name = {r["variant"]: r for r in results}

    def baseline_of(r):  # each row against TRL tuned with the same method
        return by_name.get("trl-tuned-full") if is_full(r["variant"]) else \
            (by_name.get("trl-tuned") or by_name.get("trl-defaults"))

    ceiling = info["bf16_gflops"] if native_bf16 else info["fp32_gflops"]
    print(f"\n{'variant':<26}{'bf16':>5}{'s/step':>8}{'tokens/s':>10}{'vs TRL tuned':>14}"
          f"{'useful GFLOP/s':>16}{'% ceiling':>10}{'padding':>9}{'peak RSS GB':>12}")
    for r in results:
        baseline = baseline_of(r)
        ratio = f"{r['tokens_per_s'] / baseline['tokens_per_s']:.1f}x" if baseline else "-"
        print(f"{r['variant']:<26}{'y' if r['bf16'] else 'n':>5}{r['s_per_step']:>8.1f}{r['tokens_per_s']:>10.0f}"
              f"{ratio:>14}{r['useful_gflop_per_s']:>16.0f}{100 * r['useful_gflop_per_s'] / ceiling:>9.0f}%"
              f"{r['padding_pct']:>8.0f}%{r['peak_rss_gb']:>12.1f}")
    print(f"(% ceiling: of the {'bf16' if native_bf16 else 'fp32'} 2048^2 matmul rate, the precision convsum trains in here)")


if __name__ == "__main__":
    main()
