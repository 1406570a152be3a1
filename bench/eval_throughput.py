"""Generation throughput: convsum's batched evaluate vs a plain transformers `pipeline("text-generation")` loop.

    python bench/eval_throughput.py runs/gemma3-270m-lora --limit 100
    python bench/eval_throughput.py --base --limit 100

Same model (run folder: base + adapter, merged in memory; or the base), same prompts (convsum's
template), greedy decoding, max 64 new tokens, on the first `--limit` DialogSum test dialogues.
Reports dialogues/minute for both and whether the predictions are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", help="run folder or merged model (default: the base model)")
    ap.add_argument("--base", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=None, help="convsum generate.batch_size (default: config)")
    ap.add_argument("--bf16", default="auto", choices=["auto", "false"],
                    help="convsum's generate.bf16; 'false' compares fp32 with fp32 (the pipeline runs in fp32)")
    args = ap.parse_args()
    if not (args.data / "dialogsum.test.jsonl").is_file():
        sys.exit(f"DialogSum not found at {args.data}")

    from transformers import pipeline

    from convsum.config import load_config
    from convsum.data import load_split
    from convsum.generate import load_summarizer

    overrides = {"data.source": str(args.data), "generate.max_new_tokens": 64, "generate.num_beams": 1,
                 "generate.bf16": args.bf16}
    if args.batch_size:
        overrides["generate.batch_size"] = args.batch_size
    cfg = load_config(ROOT / "configs" / "gemma3-270m.yaml", overrides)
    records = load_split(cfg.data, "test")[: args.limit]
    dialogues = [r.dialogue for r in records]
    summarizer = load_summarizer(args.target, cfg, base=args.base)

    t = time.perf_counter()
    ours = summarizer(dialogues)
    t_ours = time.perf_counter() - t

    # The baseline a user would write: the same model object and prompt text through a pipeline,
    # one dialogue per call, greedy.
    pipe = pipeline("text-generation", model=summarizer.model, tokenizer=summarizer.tokenizer)
    t = time.perf_counter()
    theirs = []
    with torch.inference_mode():
        for d in dialogues:
            out = pipe(cfg.prompt.template.format(dialogue=d) if args.target is None else
                       summarizer.template.format(dialogue=d), max_new_tokens=64, do_sample=False,
                       return_full_text=False, top_p=None, top_k=None, temperature=None)
            theirs.append(out[0]["generated_text"].strip())
    t_pipe = time.perf_counter() - t

    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"model: {summarizer.name} ({args.target or cfg.model.name}); {len(dialogues)} DialogSum test dialogues, "
          f"greedy, max 64 new tokens, {torch.get_num_threads()} threads, convsum generate.bf16={args.bf16}")
    print(f"{'':<34}{'seconds':>9}{'dialogues/min':>15}")
    print(f"{'transformers pipeline loop':<34}{t_pipe:>9.1f}{60 * len(dialogues) / t_pipe:>15.1f}")
    print(f"{'convsum (batched, length-sorted)':<34}{t_ours:>9.1f}{60 * len(dialogues) / t_ours:>15.1f}")
    print(f"speed-up {t_pipe / t_ours:.1f}x; identical predictions: {same}/{len(dialogues)}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            print(f"  first difference, {records[i].id}:\n    convsum:  {a!r}\n    pipeline: {b!r}")
            break


if __name__ == "__main__":
    main()
