"""Engines: what turns prompt token ids into summary token ids. Two exist: transformers' `generate`
(here) and llama.cpp (convsum.llamacpp). Everything above (Summarizer, evaluate, serve) talks to an
`Engine` and never asks which one it has; every engine returns ids with the stop token and what
follows it removed, by the one `trim_at_stop`.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Protocol

import torch
from transformers import DynamicCache, LogitsProcessorList

from convsum import decoding
from convsum.config import GenerateConfig
from convsum.errors import ConvsumError
from convsum.modeling import bf16_enabled
from convsum.prompt import left_pad, position_ids


class Engine(Protocol):
    supports_beam: bool  # optional; False when absent

    def decode_prompts(self, prompts: list[list[int]], gen: GenerateConfig, tokenizer, stop_ids: list[int],
                       repeats: int = 1, keys: list[int | None] | None = None) -> list[list[int]]:
        """Each prompt's continuation ids (`repeats` per prompt, candidate j seeded by keys[i*repeats+j];
        None = greedy), cut at the first stop token."""

    def close(self) -> None: ...


def trim_at_stop(tokens: list[int], stop_ids: list[int], pad_id: int | None = None) -> list[int]:
    """The ids before the first stop token, without padding (a batch pads finished rows)."""
    end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return [t for t in tokens[:end] if t != pad_id] if pad_id is not None else list(tokens[:end])


def require_gguf_extra() -> None:
    missing = [m for m in ("xllamacpp", "sentencepiece", "google.protobuf") if not _importable(m)]
    if missing:
        raise ConvsumError(f"GGUF export and the llama.cpp engine need the [gguf] extra (missing: "
                           f"{', '.join(missing)}): pip install -e '.[gguf]'")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class TransformersEngine:
    """Batched `model.generate` with left padding; mbr candidates decoded from one prefill per prompt."""

    supports_beam = True

    def __init__(self, model):
        self.model = model.eval()

    @torch.inference_mode()
    def decode_prompts(self, prompts: list[list[int]], gen: GenerateConfig, tokenizer, stop_ids: list[int],
                       repeats: int = 1, keys: list[int | None] | None = None) -> list[list[int]]:
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        kwargs = {"generation_config": gen.generation_config(tokenizer, stop_ids)}
        processors = LogitsProcessorList([decoding.StopBias(stop_ids, gen.eos_bias)] if gen.eos_bias else [])
        with self._autocast(device, gen):
            if repeats > 1:
                # One prefill per prompt: run it once, then decode `repeats` continuations from copies of
                # its cache (what num_return_sequences would do after `repeats` separate prefills).
                cache = DynamicCache(config=self.model.config)
                pos = position_ids(mask)
                self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                           cache=cache, use_cache=True)
                cache.batch_repeat_interleave(repeats)
                ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
                kwargs["cache"] = cache
                processors.append(decoding.SeededSampler(keys, ids.shape[1], gen.temperature, gen.top_p))
            out = self.model.generate(input_ids=ids, attention_mask=mask, logits_processor=processors, **kwargs)
        return [trim_at_stop(row, stop_ids, tokenizer.pad_token_id) for row in out[:, ids.shape[1]:].tolist()]

    def _autocast(self, device, gen: GenerateConfig):
        if next(self.model.parameters()).dtype != torch.float32 or not bf16_enabled(gen.bf16):
            return contextlib.nullcontext()
        # bf16 matmuls (2.3x the fp32 FLOP rate on AVX512-BF16 CPUs) with fp32 weights kept as they are.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def close(self) -> None:
        pass
