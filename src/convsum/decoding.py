"""Decoding beyond greedy: reproducible sampling and minimum-Bayes-risk (MBR) selection.

MBR (Bertsch et al. 2023, "It's MBR all the way down"): for each dialogue, decode the greedy summary
plus N samples, then return the candidate with the highest mean ROUGE against all the others: the
summary the model's own distribution agrees with most. ROUGE F1 rewards exactly that consensus.

How the candidates are made:
- One prefill per dialogue. The prompt runs through the model once; its KV cache is then repeated
  N+1 times and the N+1 continuations are decoded together in one `model.generate` call.
- Sampling without a shared random stream. `SeededSampler` samples each row with the Gumbel-max
  trick (temperature, top-k, then top-p) from noise seeded by (seed, prompt, sample index, step), so
  a dialogue's candidates do not depend on which other dialogues share its batch: batched MBR equals
  one-by-one, and a run repeats exactly. Row 0 of each dialogue gets no noise: the greedy summary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from convsum import metrics

TOP_K = 64  # sampling looks at the 64 most likely tokens before top-p; the tail is never sampled


def row_key(seed: int, prompt: Sequence[int], sample: int) -> int:
    """A 63-bit seed for one candidate of one prompt: the same for the same prompt in any batch."""
    h = hashlib.blake2b(f"{seed}:{sample}:".encode() + bytes(str(list(prompt)), "ascii"), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


class StopBias(LogitsProcessor):
    """Add `bias` to the logits of the tokens that end a summary (generate.eos_bias): a length knob."""

    def __init__(self, stop_ids: list[int], bias: float):
        self.stop_ids, self.bias = stop_ids, bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.stop_ids] += self.bias
        return scores


class SeededSampler(LogitsProcessor):
    """Sample each row from softmax(logits / temperature) restricted to top-k and top-p, by Gumbel-max
    with per-row, per-step noise; rows whose key is None are left alone (greedy)."""

    def __init__(self, keys: list[int | None], prompt_length: int, temperature: float, top_p: float,
                 top_k: int = TOP_K):
        self.keys, self.prompt_length = keys, prompt_length
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.rows = [i for i, k in enumerate(keys) if k is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        step = input_ids.shape[1] - self.prompt_length
        rows = torch.tensor(self.rows, device=scores.device)
        values, index = (scores[rows].float() / self.temperature).topk(min(self.top_k, scores.shape[-1]), dim=-1)
        probs = values.softmax(-1)
        in_nucleus = probs.cumsum(-1) - probs < self.top_p  # the most likely token is always kept
        uniform = torch.stack([
            torch.rand(values.shape[-1], generator=torch.Generator().manual_seed((self.keys[r] + step) % 2**63))
            for r in self.rows]).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp_(1e-10, 1 - 1e-7)))
        pick = torch.where(in_nucleus, values + gumbel, -torch.inf).argmax(-1, keepdim=True)
        out = scores.clone()
        out[rows] = -torch.inf
        out[rows, index.gather(1, pick).squeeze(1)] = 0.0
        return out


def mbr_pick(candidates: list[str], utility: str = "mean") -> int:
    """Index of the candidate with the highest mean utility against the other candidates (ties: the
    earliest, i.e. greedy). Identical candidates count as separate votes, as samples should."""
    keys = {"rouge1": ("rouge1",), "rougeL": ("rougeL",), "mean": ("rouge1", "rougeL")}[utility]
    n = len(candidates)
    if n == 1:
        return 0
    cache: dict[tuple[str, str], float] = {}

    def u(a: str, b: str) -> float:  # ROUGE F1 is symmetric in its two arguments
        key = (a, b) if a <= b else (b, a)
        if key not in cache:
            s = metrics.example_scores(a, [b])
            cache[key] = sum(s[k][0] for k in keys) / len(keys)
        return cache[key]

    expected = [sum(u(candidates[i], candidates[j]) for j in range(n) if j != i) / (n - 1) for i in range(n)]
    return max(range(n), key=lambda i: (expected[i], -i))
