"""The CPU training fast path: two small pieces of the LoRA step that convsum owns.

Profiling a bf16-autocast LoRA step of Gemma 3 270M on 2 CPU cores (bench/RESULTS.md) showed a
third of the time outside the matmuls, in two places this module removes:

- Casting frozen weights. Autocast re-casts every fp32 weight to bf16 on every forward (its cast
  cache only keeps trainable leaves), i.e. ~1.6 GB of memory traffic per micro-batch for the body
  and the 262k-token head. The frozen base weights never change, so they are cast once. Under
  autocast the matmuls then see bit-identical bf16 operands; the embedding lookup, the norms and
  the trainable LoRA weights stay fp32.
- LoRA dropout. On non-Intel CPUs `torch.bernoulli_` draws one Mersenne-Twister number per
  element, single-threaded: 16% of the step. `LoraDropout` draws 64 random bits per 4 elements
  (16-bit resolution, so p is exact to 1/65536) and masks with one `where`: same distribution,
  same seeding (the default torch generator, saved and restored with checkpoints), ~3x cheaper.

Both are applied only for CPU training; on GPUs the stock kernels are already fast.
"""

from __future__ import annotations

import torch
from torch import nn


class LoraDropout(nn.Module):
    """Inverted dropout: keep each element with probability 1 - p and scale it by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        # int16 values are uniform on [-32768, 32767]: keep those >= threshold.
        self.threshold = -32768 + round(p * 65536)

    def keep_probability(self) -> float:
        return (32768 - self.threshold) / 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return torch.where(keep, x * (1 / self.keep_probability()), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_lora_dropout(model: nn.Module) -> int:
    """Swap PEFT's `nn.Dropout` on every LoRA input for `LoraDropout`; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, d in list(dropouts.items()):
            if isinstance(d, nn.Dropout) and d.p > 0:
                dropouts[name] = LoraDropout(d.p)
                swapped += 1
    return swapped


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store every frozen fp32 `nn.Linear` weight in `dtype` (what autocast would cast it to anyway).

    A head tied to the input embedding gets its own frozen copy, so the embedding lookup keeps fp32
    values. Returns the number of weights cast."""
    cast, embedding = 0, model.get_input_embeddings().weight
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.weight.requires_grad or module.weight.dtype != torch.float32:
            continue
        if module.weight is embedding:
            module.weight = nn.Parameter(embedding.detach().to(dtype), requires_grad=False)
        else:
            module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
        cast += 1
    return cast
