"""Generation throughput: convsum vs transformers `pipeline("text-generation")`, batched and unbatched,
and (with a GGUF export) convsum's llama.cpp engine.

    python bench/eval_throughput.py runs/gemma3-270m-lora --limit 100
    python bench/eval_throughput.py runs/gemma3-270m-lora --limit 500 --only convsum,llamacpp
    python bench/eval_throughput.py --base --limit 40

Same model (run folder: base + adapter, merged in memory; or the base), same prompt text (convsum's
template), greedy, max 64 new tokens, the first `--limit` DialogSum test dialogues. All transformers
rows run in fp32 (the pipeline has no autocast), so their predictions can be compared one for one.

Rows:
- pipeline, batched (the headline baseline): the dialogues in one `pipe(list, batch_size=B)` call,
  left padding, the same batch size as convsum;
- pipeline, unbatched: one dialogue per call, what a first script does;
- convsum: `Summarizer` (length-sorted batches, the exact training prompt ids);
- llamacpp: convsum's `--engine llamacpp` on RUN/gguf (whatever type was exported), with ROUGE and agreement
  against convsum's transformers predictions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"
ROWS = ("pipeline-batched", "pipeline-unbatched", "convsum", "llamacpp")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", help="run folder or merged model (default: the base model)")
    ap.add_argument("--base", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16, help="dialogues per batch, for convsum and the pipeline")
    ap.add_argument("--only", default=",".join(ROWS), help=f"rows to run ({', '.join(ROWS)})")
    args = ap.parse_args()
    if not (args.data / "dialogsum.test.jsonl").is_file():
        sys.exit(f"DialogSum not found at {args.data}")
    rows = args.only.split(",")

    from transformers import pipeline

    from convsum import metrics
    from convsum.config import load_config
    from convsum.data import load_split
    from convsum.inference import load_summarizer

    cfg = load_config(ROOT / "configs" / "gemma3-270m.yaml", {
        "data.source": str(args.data), "generate.max_new_tokens": 64, "generate.strategy": "greedy",
        "generate.num_beams": 1, "generate.bf16": "false", "generate.batch_size": args.batch_size,
        "generate.eos_bias": 0.0})  # plain greedy: what the pipeline baseline does
    records = load_split(cfg.data, "test")[: args.limit]
    dialogues, refs = [r.dialogue for r in records], [r.references for r in records]
    print(machine.line(machine.describe(ceilings=False)))
    print(f"{len(dialogues)} DialogSum test dialogues, greedy, max 64 new tokens, batch {args.batch_size}, fp32")
    results: dict[str, tuple[float, list[str]]] = {}

    summarizer = load_summarizer(args.target, cfg, base=args.base)
    if "convsum" in rows:
        t = time.perf_counter()
        preds = summarizer(dialogues)
        results["convsum"] = (time.perf_counter() - t, preds)
    prompts = [summarizer.template.format(dialogue=d) for d in dialogues]
    # The baseline a user would write: the same model object and prompt text through a pipeline.
    pipe = pipeline("text-generation", model=summarizer.model, tokenizer=summarizer.tokenizer)
    pipe.tokenizer.padding_side = "left"
    kw = dict(max_new_tokens=64, do_sample=False, return_full_text=False)
    with torch.inference_mode():
        if "pipeline-batched" in rows:
            t = time.perf_counter()
            out = pipe(prompts, batch_size=args.batch_size, **kw)
            results["pipeline-batched"] = (time.perf_counter() - t, [o[0]["generated_text"].strip() for o in out])
        if "pipeline-unbatched" in rows:
            t = time.perf_counter()
            out = [pipe(p, **kw)[0]["generated_text"].strip() for p in prompts]
            results["pipeline-unbatched"] = (time.perf_counter() - t, out)
    del pipe
    if "llamacpp" in rows and args.target:
        from convsum.inference import load_gguf_summarizer

        engine = load_gguf_summarizer(args.target, cfg)
        t = time.perf_counter()
        preds = engine(dialogues)
        results["llamacpp"] = (time.perf_counter() - t, preds)
        engine.close()

    reference = results.get("convsum", (None, None))[1]
    best_pipe = min((results[k][0] for k in ("pipeline-batched", "pipeline-unbatched") if k in results), default=None)
    print(f"\n{'':<22}{'seconds':>9}{'dialogues/min':>15}{'vs best pipeline':>18}{'same as convsum':>17}"
          f"{'R1':>7}{'RL':>7}")
    for name in ROWS:
        if name not in results:
            continue
        secs, preds = results[name]
        m = metrics.score_pairs(preds, refs)["mean"]
        same = f"{sum(a == b for a, b in zip(preds, reference))}/{len(preds)}" if reference else "-"
        ratio = f"{best_pipe / secs:.1f}x" if best_pipe else "-"
        print(f"{name:<22}{secs:>9.1f}{60 * len(preds) / secs:>15.1f}{ratio:>18}{same:>17}"
              f"{m['rouge1']:>7.2f}{m['rougeL']:>7.2f}")
    print("(ROUGE: mean over the 3 references; llamacpp runs the GGUF that RUN/gguf holds, in its export type)")


if __name__ == "__main__":
    main()
