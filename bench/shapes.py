"""Shape churn: how many distinct batch shapes a training run feeds the kernels, with and without buckets.

    python bench/shapes.py                      # the shipped config on DialogSum dev
    python bench/shapes.py --multiples 1,16,32,64,128 --epochs 2

oneDNN JIT-compiles a kernel per matmul shape on bf16/AMX CPUs and keeps at most
ONEDNN_PRIMITIVE_CACHE_CAPACITY of them (convsum sets 64), so every new padded length costs compiles.
`train.pad_to_multiple_of` rounds each micro-batch's padded length up to a multiple (left padding,
masked: the loss is unchanged, tests/test_train.py). This counts, for the shipped config's batches in
the Trainer's length-grouped order (transformers' `LengthGroupedSampler`, with a seeded generator), the distinct micro-batch
shapes over the run, the compiles a 64-entry cache would make (LRU over padded lengths, ~20 matmul
shapes per length: 7 frozen linears and 2 LoRA products each forward and backward, not counted
individually), and the padding each multiple adds (tokens computed but not real). No model runs, so
it is the same on every CPU: it simulates the shape churn of an AMX machine on any machine.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"


def replay(lengths: list[int], batch_size: int, grad_accum: int, epochs: int, seed: int, multiple: int,
           cache_lengths: int):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    shapes, misses, real, padded = set(), 0, 0, 0
    cache: OrderedDict[int, None] = OrderedDict()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed + epoch)
        # The Trainer groups by length over micro-batch x accumulation (its own sampler, its global RNG).
        order = list(LengthGroupedSampler(batch_size * grad_accum, lengths=lengths, generator=g))
        for i in range(0, len(order), batch_size):
            rows = [lengths[j] for j in order[i: i + batch_size]]
            n = -(-max(rows) // multiple) * multiple
            shapes.add((len(rows), n))
            real, padded = real + sum(rows), padded + n * len(rows)
            if n in cache:
                cache.move_to_end(n)
            else:
                misses += 1
                cache[n] = None
                if len(cache) > cache_lengths:
                    cache.popitem(last=False)
    return len(shapes), misses, 1 - real / padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "gemma3-270m.yaml")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    ap.add_argument("--multiples", default="1,8,16,32,64")
    args = ap.parse_args()
    if not (args.data / "dialogsum.dev.jsonl").is_file():
        sys.exit(f"DialogSum not found at {args.data}")

    from convsum import train
    from convsum.config import load_config
    from convsum.modeling import load_tokenizer

    cfg = load_config(args.config, {"data.source": str(args.data)})
    tok = load_tokenizer(cfg.model)
    _, exs, _, _ = train.prepare_examples(cfg, tok)
    lengths = [len(e["input_ids"]) for e in exs]
    epochs = args.epochs or int(round(cfg.train.epochs))
    caches = (64, 1024)  # convsum's cap and oneDNN's default; ~20 matmul shapes per padded length
    print(f"{len(exs)} training examples ({min(lengths)}-{max(lengths)} tokens), micro-batch "
          f"{cfg.train.batch_size} x {cfg.train.grad_accum}, {epochs} epochs, length-grouped order")
    print(f"{'pad_to_multiple_of':>20}{'distinct shapes':>17}"
          + "".join(f"{f'new lengths, cache {c}':>24}" for c in caches) + f"{'padding':>9}")
    for m in (int(x) for x in args.multiples.split(",")):
        row = [replay(lengths, cfg.train.batch_size, cfg.train.grad_accum, epochs, cfg.train.seed, m, c // 20)
               for c in caches]
        print(f"{m:>20}{row[0][0]:>17}" + "".join(f"{r[1]:>24}" for r in row) + f"{row[0][2]:>9.1%}")
    print("(new lengths = micro-batches whose padded length was not in the kernel cache, i.e. that compile kernels;"
          f" {epochs * -(-len(exs) // cfg.train.batch_size)} micro-batches in all)")


if __name__ == "__main__":
    main()
