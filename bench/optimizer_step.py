"""One AdamW step over the CPU recipe's trainable weights: PyTorch's foreach AdamW (what
transformers' `optim="adamw_torch"` builds) against its fused AdamW (`optim="adamw_torch_fused"`, what
convsum uses). Same weights, same gradients, fp32 as in training; no model is loaded.

    python bench/optimizer_step.py            # Gemma 3 270M's body (the recipe: everything but the embedding)
    python bench/optimizer_step.py --steps 10

The weight shapes come from the bundled model's config (its decoder layers: attention, MLP and norms).
"""

from __future__ import annotations

import argparse
import time

import torch


def recipe_shapes() -> list[tuple[int, ...]]:
    from transformers import AutoConfig

    from convsum.modeling import bundled_model_dir

    c = AutoConfig.from_pretrained(bundled_model_dir()[0])
    c = getattr(c, "text_config", c)
    h, i, d = c.hidden_size, c.intermediate_size, c.head_dim
    q, kv = c.num_attention_heads * d, c.num_key_value_heads * d
    layer = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i), (d,), (d,)] + [(h,)] * 4
    return layer * c.num_hidden_layers + [(h,)]


def time_step(shapes, fused: bool, steps: int) -> float:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=5e-5, **({"fused": True} if fused else {"foreach": True}))
    opt.step()  # the first step allocates the moment buffers
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    import machine

    shapes = recipe_shapes()
    n = sum(torch.Size(s).numel() for s in shapes)
    print(machine.line(machine.describe(ceilings=False)))
    print(f"{n / 1e6:.1f}M trainable weights in {len(shapes)} tensors, fp32, {args.steps} timed steps each")
    foreach, fused = time_step(shapes, False, args.steps), time_step(shapes, True, args.steps)
    print(f"foreach AdamW (transformers' adamw_torch): {foreach:.3f} s/step")
    print(f"fused AdamW (adamw_torch_fused, convsum): {fused:.3f} s/step ({foreach / fused:.1f}x)")


if __name__ == "__main__":
    main()
