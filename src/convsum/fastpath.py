"""The training fast path: small pieces of the LoRA step that convsum owns, each tested against
the stock path (tests/test_fastpath.py) and measured (bench/train_throughput.py).

Profiling a bf16-autocast LoRA step of Gemma 3 270M on 2 CPU cores (bench/RESULTS.md) showed
most of the time outside the useful matmuls, in three places this module removes:

- The LM head + cross-entropy. Even on the summary positions only, the stock loss materialises
  [tokens x 262k] logits several times over (the head's output, its fp32 copy, log-softmax, and
  in backward a zero-filled gradient, the log-softmax gradient and its bf16 copy): memory-bound
  passes that cost more than the head's matmuls. `head_cross_entropy` walks the vocabulary in
  slices with an online log-sum-exp (as flash attention does for the softmax) and accumulates
  the hidden-state gradient in the same pass, so the weight is read once and no [tokens x vocab]
  tensor exists. The head must be frozen (it is under LoRA); the gradient is computed in forward.

- Casting frozen weights. Autocast re-casts every fp32 weight to bf16 on every forward (its cast
  cache only keeps trainable leaves), i.e. ~1.6 GB of memory traffic per micro-batch for the body
  and the 262k-token head. The frozen base weights never change, so they are cast once. Under
  autocast the matmuls then see bit-identical bf16 operands; the embedding lookup, the norms and
  the trainable LoRA weights stay fp32.
- LoRA dropout. On non-Intel CPUs `torch.bernoulli_` draws one Mersenne-Twister number per
  element, single-threaded: 16% of the step. `LoraDropout` draws 64 random bits per 4 elements
  (16-bit resolution, so p is exact to 1/65536) and masks with one `where`: same distribution,
  same seeding (the default torch generator, saved and restored with checkpoints), ~3x cheaper.

The weight cast and the dropout are applied only for CPU training; on GPUs the stock kernels are
already fast. The fused head loss is used on every device.
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


def retie_head(model: nn.Module) -> bool:
    """Undo `cast_frozen_linears`' private copy of a tied head (before saving a full model)."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if head is None or not tied or head.weight is embedding.weight:
        return False
    head.weight = embedding.weight
    return True


class _HeadCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(softcap(h @ W.T), target); W frozen."""

    @staticmethod
    def forward(ctx, h, weight, targets, softcap, chunk, compute_dtype):
        n = h.shape[0]
        hc = h.detach().to(compute_dtype)
        m = torch.full((n,), -float("inf"), device=h.device)  # running max of the logits
        s = torch.zeros(n, device=h.device)  # running sum of exp(logit - m)
        acc = torch.zeros(n, weight.shape[1], device=h.device)  # running sum of softmax-weighted rows of W
        target_logit, target_slope = torch.zeros(n, device=h.device), torch.ones(n, device=h.device)
        rows = torch.arange(n, device=h.device)
        for start in range(0, weight.shape[0], chunk):
            w = weight[start:start + chunk].to(compute_dtype)
            logits = (hc @ w.T).float()
            slope = None
            if softcap is not None:  # logits = cap * tanh(raw / cap); d logits / d raw = 1 - tanh^2
                logits = torch.tanh(logits / softcap)
                slope = 1 - logits * logits
                logits = logits * softcap
            hit = (targets >= start) & (targets < start + logits.shape[1])
            if hit.any():
                target_logit[hit] = logits[rows[hit], targets[hit] - start]
                if slope is not None:
                    target_slope[hit] = slope[rows[hit], targets[hit] - start]
            m_new = torch.maximum(m, logits.amax(1))
            rescale = torch.exp(m - m_new)
            p = logits.sub_(m_new[:, None]).exp_()
            s = s * rescale + p.sum(1)
            if slope is not None:
                p = p * slope
            acc.mul_(rescale[:, None]).add_((p.to(compute_dtype) @ w).float())
            m = m_new
        loss = (m + s.log() - target_logit).sum()
        w_target = weight[targets].to(compute_dtype).float()
        ctx.save_for_backward((acc / s[:, None] - target_slope[:, None] * w_target).to(h.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_loss, None, None, None, None, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       softcap: float | None = None, chunk: int = 4096) -> torch.Tensor:
    """Summed cross-entropy of the logits `softcap(hidden @ weight.T)` against `targets`, without
    materialising the logits. Under autocast the matmuls run in the autocast dtype, as the stock
    head would; the softmax is always fp32."""
    if weight.requires_grad:
        raise ValueError("head_cross_entropy needs a frozen head weight")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device_type=device, enabled=False):
        return _HeadCrossEntropy.apply(hidden, weight, targets, softcap, chunk, dtype)


def fusable_head(model: nn.Module):
    """(weight, final-logit softcap) of a causal LM whose head is a frozen bias-free Linear, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.requires_grad:
        return None
    config = getattr(model, "config", None)
    return head.weight, getattr(config, "final_logit_softcapping", None)
