"""Recompile storm: training speed right before and right after an in-training held-out evaluation.

    python bench/recompile.py                       # oneDNN kernel cache 64 and 1024, each in its own process
    python bench/recompile.py --caches 1024 --steps 4

On CPUs where oneDNN JIT-compiles a kernel per matmul shape (bf16: AVX512-BF16, AMX), generating the
held-out summaries brings new shapes; with a small kernel cache they evict the training kernels,
which are then compiled again. Every training batch here has the same length (dialogues truncated to
exactly `--length` tokens), so step times before and after compare directly. The evaluation is what
`convsum train` runs with `train.select_by: rougeL` (greedy summaries of `--held-out` dev dialogues,
no loss pass). Passes when the steps after are within 10% of the steps before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"


def child(args) -> dict:
    import torch
    from transformers import TrainerCallback

    from convsum import train
    from convsum.config import load_config
    from convsum.data import train_and_held_out
    from convsum.modeling import add_lora, bf16_enabled, limit_kernel_cache, load_model, load_tokenizer
    from convsum.rundir import RunDir

    limit_kernel_cache()  # as `convsum train` does; the environment's ONEDNN_PRIMITIVE_CACHE_CAPACITY wins
    n = args.steps
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(ROOT / "configs" / "gemma3-270m.yaml", {
            "data.source": str(args.data), "data.val_size": args.held_out, "data.max_length": args.length,
            "data.max_train_examples": 4000, "train.output_dir": out, "train.max_steps": 2 * n + 1,
            "train.eval_steps": n + 1, "train.save_steps": 10_000, "train.logging_steps": 1,
            "train.select_by": "last", "train.eval_loss": "false", "train.group_by_length": False})
        tok = load_tokenizer(cfg.model)
        data = train_and_held_out(cfg)
        examples, _ = train.tokenize_examples(cfg, tok, data.train)
        examples = [e for e in examples if e["length"] == args.length][: 8 * (2 * n + 1)]
        torch.manual_seed(0)
        model = add_lora(load_model(cfg.model, for_training=True), cfg.lora)
        bf16 = bf16_enabled(cfg.train.bf16)
        targs = train.training_arguments(cfg, RunDir(out).checkpoints, True, bf16)
        targs.disable_tqdm = True
        val_ex, _ = train.tokenize_examples(cfg, tok, data.held_out)
        scorer = train.held_out_scorer(cfg, tok, data.held_out, bf16)
        trainer, _ = train.build_trainer(cfg, model, tok, examples, val_ex, targs, RunDir(out).log, scorer)
        times: list[float] = []

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t)

        trainer.add_callback(Clock())
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    # Step n+1 is followed by the evaluation; the first step is warm-up (first compilation).
    before, after = times[1:n + 1], times[n + 1:2 * n + 1]
    return {"cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), "bf16": bf16,
            "before_s": sum(before) / len(before), "after_s": sum(after) / len(after),
            "after_first_s": after[0], "eval_and_rest_s": total - sum(times)}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=5, help="timed steps before and after the evaluation")
    ap.add_argument("--length", type=int, default=256, help="tokens per training example (all equal)")
    ap.add_argument("--held-out", type=int, default=32, help="dev dialogues summarized at the evaluation")
    ap.add_argument("--caches", default="64,1024", help="ONEDNN_PRIMITIVE_CACHE_CAPACITY values to compare")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    if not (args.data / "dialogsum.train.jsonl").is_file():
        sys.exit(f"DialogSum (with its train split) not found at {args.data}")
    print(machine.line(machine.describe()), flush=True)
    print(f"{'kernel cache':>12}{'bf16':>6}{'s/step before':>15}{'after (mean)':>14}{'first after':>13}"
          f"{'after/before':>14}  within 10%")
    for cache in args.caches.split(","):
        cmd = [sys.executable, __file__, "--child", "--data", str(args.data), "--steps", str(args.steps),
               "--length", str(args.length), "--held-out", str(args.held_out)]
        env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache, "TRANSFORMERS_VERBOSITY": "error"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or not line:
            print(f"cache {cache}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(line[7:])
        ratio = r["after_s"] / r["before_s"]
        print(f"{cache:>12}{'y' if r['bf16'] else 'n':>6}{r['before_s']:>15.2f}{r['after_s']:>14.2f}"
              f"{r['after_first_s']:>13.2f}{ratio:>13.2f}x  {'yes' if ratio <= 1.10 else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
