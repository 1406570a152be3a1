"""Training throughput: convsum's trainer vs the TRL SFTTrainer + PEFT baseline, same model, data and LoRA.

    python bench/train_throughput.py                       # all variants, ~15 min on 2 CPU cores
    python bench/train_throughput.py --variants trl,convsum --steps 3

Each variant runs in its own process (clean peak RSS): the same bundled Gemma 3 270M, the same
first DialogSum dev examples, LoRA r16/alpha32/dropout .05 on all linear layers, batch 8, lr 2e-4.
The first `--warmup` steps are excluded; then `--steps` steps are timed. Real tokens = non-padding
tokens through the forward pass. The matmul ceiling is measured in the same run.
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

# variant -> convsum config overrides (None = the TRL baseline). Every convsum variant but the last
# takes batches in random order like TRL, so they see the same batches; each row adds one change.
STOCK = {"train.cpu_fast_path": False, "model.attn_implementation": "sdpa", "train.fused_loss": False}
FP32 = {**STOCK, "train.bf16": "false"}
VARIANTS = {
    "trl": None,
    "convsum-fp32-full-logits": {**FP32, "train.summary_only_logits": False},  # the standard loss
    "convsum-fp32": FP32,  # + LM head on summary positions only
    "convsum-fp32-fused": {**FP32, "train.fused_loss": True},  # + head and cross-entropy fused
    "convsum-bf16": {**STOCK, "train.fused_loss": True},  # + bf16 autocast
    "convsum-fastpath": {"model.attn_implementation": "sdpa"},  # + frozen weights in bf16, LoraDropout
    "convsum-eager": {},  # + eager attention (convsum's default for CPU training)
    "convsum": {"train.group_by_length": True},  # + length-grouped batches: the shipped defaults
    "convsum-notrim": {"train.group_by_length": True},  # the defaults without the ReleaseMemory callback
}


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


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


def _cfg(overrides: dict, args, out: str):
    from convsum.config import load_config

    return load_config(ROOT / "configs" / "gemma3-270m.yaml", {
        "data.source": str(args.data), "data.val_size": 0, "train.output_dir": out, "train.save_steps": 10_000,
        "train.max_steps": args.warmup + args.steps, "train.logging_steps": 1,
        "data.max_train_examples": 8 * (args.warmup + args.steps),  # effective batch 8 in every variant
        "train.group_by_length": False,
        **overrides})


def run_convsum(overrides: dict, args, out: str, trim: bool = True) -> tuple:
    from convsum import train
    from convsum.modeling import add_lora, bf16_enabled, load_model, load_tokenizer
    from convsum.rundir import RunDir

    cfg = _cfg(overrides, args, out)
    tok = load_tokenizer(cfg.model)
    _, train_ex, _, _ = train.prepare_examples(cfg, tok)
    torch.manual_seed(cfg.train.seed)
    model = add_lora(load_model(cfg.model, for_training=True), cfg.lora)
    run = RunDir(out)
    targs = train.training_arguments(cfg, run.checkpoints, False, bf16_enabled(cfg.train.bf16))
    targs.disable_tqdm = True
    trainer, _ = train.build_trainer(cfg, model, tok, train_ex, [], targs, run.log)
    if not trim:
        trainer.remove_callback(train.ReleaseMemory)
    timer = StepTimer(trainer.data_collator)
    trainer.data_collator = timer
    trainer.add_callback(timer.callback())
    trainer.train()
    return timer, cfg.train.grad_accum, targs.bf16, model


def run_trl(args, out: str) -> tuple:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from convsum.modeling import load_model, load_tokenizer

    cfg = _cfg({}, args, out)
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "right"  # what a user of TRL would have
    from convsum.data import train_and_held_out

    _, records, _ = train_and_held_out(cfg)  # the same examples convsum.prepare_examples picks
    rows = [{"prompt": cfg.prompt.template.format(dialogue=r.dialogue), "completion": r.summary} for r in records]
    model = load_model(cfg.model)
    sft = SFTConfig(output_dir=out, per_device_train_batch_size=8, learning_rate=2e-4, max_steps=args.warmup + args.steps,
                    logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                    use_cpu=not torch.cuda.is_available())
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft)
    timer = StepTimer(trainer.data_collator)
    trainer.data_collator = timer
    trainer.add_callback(timer.callback())
    trainer.train()
    return timer, 1, sft.bf16, trainer.model


def child(variant: str, args) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as out:
        timer, accum, bf16, model = run_trl(args, out) if VARIANTS[variant] is None else \
            run_convsum(VARIANTS[variant], args, out, trim=not variant.endswith("notrim"))
    w = args.warmup * accum  # batches per optimizer step = accum
    tokens = sum(timer.batch_tokens[w: w + args.steps * accum])
    labels = sum(timer.batch_labels[w: w + args.steps * accum])
    slots = sum(timer.batch_slots[w: w + args.steps * accum])
    secs = sum(timer.step_times[args.warmup: args.warmup + args.steps])
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    # The head is counted once, as `emb`, whether tied or (convsum's CPU fast path) a separate bf16 copy.
    body = sum(p.numel() for p in model.parameters()) - emb.numel() - (head.numel() if head is not emb else 0)
    emb = emb.numel()
    # LoRA step on a frozen base: forward 2N + input-gradient backward 2N FLOPs per token for the body;
    # the head is needed only on label positions (the minimum any trainer must do).
    flops = 4 * body * tokens + 4 * emb * labels
    return {"variant": variant, "tokens_per_s": tokens / secs, "s_per_step": secs / args.steps, "tokens": tokens,
            "bf16": bool(bf16), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "useful_gflop_per_s": flops / secs / 1e9,
            "padding_pct": 100 * (slots - tokens) / slots}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "convsum-notrim"))
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return
    if not (args.data / "dialogsum.dev.jsonl").is_file():
        sys.exit(f"DialogSum not found at {args.data}")
    fp32, bf16 = matmul_ceiling(torch.float32), matmul_ceiling(torch.bfloat16)
    print(f"matmul ceiling (2048^2, {torch.get_num_threads()} threads): fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s")
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", v, "--data", str(args.data), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or not line:
            print(f"{v}: failed\n{proc.stderr[-2000:]}")
            continue
        results.append(json.loads(line[7:]))
        r = results[-1]
        print(f"  {v}: {r['tokens_per_s']:.0f} tokens/s", flush=True)
    base = next((r for r in results if r["variant"] == "trl"), None)
    print(f"\n{'variant':<26}{'bf16':>5}{'s/step':>8}{'tokens/s':>10}{'vs TRL':>8}{'useful GFLOP/s':>16}"
          f"{'% bf16 ceil':>12}{'padding':>9}{'peak RSS GB':>12}")
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.1f}x" if base else "-"
        print(f"{r['variant']:<26}{'y' if r['bf16'] else 'n':>5}{r['s_per_step']:>8.1f}{r['tokens_per_s']:>10.0f}"
              f"{ratio:>8}{r['useful_gflop_per_s']:>16.0f}{100 * r['useful_gflop_per_s'] / bf16:>11.0f}%"
              f"{r['padding_pct']:>8.0f}%{r['peak_rss_gb']:>12.1f}")


if __name__ == "__main__":
    main()
