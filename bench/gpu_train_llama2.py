"""GPU training throughput on the Llama-2-7B architecture (random weights): convsum vs TRL SFTTrainer.

    python bench/gpu_train_llama2.py                 # on a CUDA GPU (bf16, LoRA r16 all-linear, seq 512)
    python bench/gpu_train_llama2.py --tiny          # a 2-layer toy config: checks the script on CPU

No weights are downloadable here and throughput does not depend on their values, so the model is
`LlamaForCausalLM(LlamaConfig(<7B shape>))`, randomly initialised, in bf16. Data: random token
sequences of 512 tokens, the last 64 being the completion (the loss is on those only), identical for
both trainers. Reports real tokens/s, MFU (model FLOPs / GPU peak bf16) and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

H200_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s (SXM)


def model_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024)
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)


def examples(n: int, seq: int, completion: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, 32000, (seq,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (seq - completion) + ids[seq - completion:],
                     "completion_mask": [0] * (seq - completion) + [1] * completion, "length": seq})
    return rows


def build_model(tiny: bool):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.bfloat16
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return AutoModelForCausalLM.from_config(model_config(tiny), dtype=dtype, attn_implementation="sdpa")


class Timer:
    def __init__(self):
        self.times = []

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_begin(self, *a, **k):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                outer.times.append(time.perf_counter() - self.t)

        return CB()


def run(which: str, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig

    rows = examples(args.batch * (args.warmup + args.steps), args.seq, args.completion)
    model = build_model(args.tiny)
    timer = Timer()
    out = tempfile.mkdtemp()
    bf16 = torch.cuda.is_available()
    if which.startswith("trl"):
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in rows])
        # trl: SFTConfig's defaults (gradient checkpointing on); trl-tuned: checkpointing off, which fits
        # in memory here and is what a user tuning for speed does.
        tuned = {"gradient_checkpointing": False} if which == "trl-tuned" else {}
        sft = SFTConfig(output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
                        learning_rate=2e-4, bf16=bf16, save_strategy="no", report_to="none", logging_steps=1,
                        max_length=args.seq, disable_tqdm=True, use_cpu=not torch.cuda.is_available(), **tuned)
        from transformers import PreTrainedTokenizerFast
        from tokenizers import Tokenizer, models

        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "</s>": 2}, "<unk>")),
                                      pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
        trainer = SFTTrainer(model=model, args=sft, train_dataset=ds, processing_class=tok,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"))
    else:
        from convsum import train
        from convsum.config import load_config
        from convsum.modeling import add_lora

        # grad_accum 1: each optimizer step is one micro-batch of args.batch, as for TRL, so the tokens
        # per timed step are batch x seq for both.
        cfg = load_config(None, {"train.batch_size": args.batch, "train.grad_accum": 1,
                                 "train.max_steps": args.warmup + args.steps,
                                 "train.save_steps": 10_000, "train.bf16": "true" if bf16 else "false",
                                 "train.output_dir": out, "train.group_by_length": False})
        model = add_lora(model, cfg.lora)
        from convsum.rundir import RunDir

        targs = train.training_arguments(cfg, RunDir(out).checkpoints, False, bf16)
        targs.disable_tqdm = True
        trainer, _ = train.build_trainer(cfg, model, None, [{k: r[k] for k in ("input_ids", "labels", "length")} for r in rows],
                                         [], targs, RunDir(out).log)
        trainer.data_collator = lambda b: __import__("convsum.prompt", fromlist=["collate"]).collate(b, 0)
    trainer.add_callback(timer.callback())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    secs = sum(timer.times[args.warmup:])
    tokens = args.batch * args.seq * args.steps
    n_params = sum(p.numel() for p in model.parameters())
    # LoRA on a frozen base: ~4 N FLOPs per token (forward + input-gradient backward) + attention.
    cfgm = model_config(args.tiny)
    attn = 4 * cfgm.num_hidden_layers * args.seq * cfgm.hidden_size * 2  # QK^T and AV, forward + backward
    flops = (4 * n_params + attn) * tokens
    return {"trainer": which, "tokens_per_s": tokens / secs, "s_per_step": secs / args.steps,
            "mfu": flops / secs / H200_BF16_PEAK if torch.cuda.is_available() else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run(args.child, args)), flush=True)
        return
    results = []
    for which in ("trl", "trl-tuned", "convsum"):
        cmd = [sys.executable, __file__, "--child", which] + [a for a in sys.argv[1:]]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if not line:
            print(f"{which} failed:\n{p.stderr[-3000:]}")
            continue
        results.append(json.loads(line[7:]))
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{'tiny' if args.tiny else 'Llama-2-7B'} architecture, random weights, LoRA r16 all-linear, batch {args.batch} "
          f"x seq {args.seq} (loss on the last {args.completion}), {dev}")
    base = next((r for r in results if r["trainer"] == "trl-tuned"), None)
    for r in results:
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gb']:.1f} GB" if r["peak_mem_gb"] is not None else "-"
        print(f"  {r['trainer']:<10} {r['tokens_per_s']:>10.0f} tokens/s  {r['s_per_step']:.3f} s/step  MFU {mfu}  "
              f"peak {mem}  {ratio:.2f}x TRL tuned")


if __name__ == "__main__":
    main()
