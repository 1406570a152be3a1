"""The llama.cpp engine (`--engine llamacpp`): a GGUF from `convsum export`, run in-process by llama.cpp.

    convsum export runs/r1 --format gguf
    convsum evaluate runs/r1 --engine llamacpp --split test      # finds runs/r1/gguf/
    convsum summarize runs/r1/gguf/model-f16.gguf dialogues.jsonl --engine llamacpp

xllamacpp (a prebuilt CPU build of llama.cpp's server) loads the model; prompts go in as token ids
built by convsum's own tokenizer and template, so the model sees exactly its training prompt; several
prompts are decoded at once on llama.cpp's parallel slots. Greedy decoding and mbr (llama.cpp's
sampler, one seed per candidate) are supported; beam search is not.

The server is reached in-process; llama.cpp's native /completion route (the only one that returns
token ids) is on a loopback listener locked with a random API key.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from convsum.config import GenerateConfig
from convsum.decoding import TOP_K  # the same candidate pool as decoding.SeededSampler
from convsum.errors import ConvsumError, first_line
from convsum.engines import require_gguf_extra, trim_at_stop


class LlamaCppEngine:
    supports_beam = False

    def __init__(self, gguf: Path, lora: Path | None = None, slots: int = 4, ctx_per_slot: int = 1152,
                 threads: int = 0, exact: bool = False):
        require_gguf_extra()
        import xllamacpp as xlc

        p = xlc.CommonParams()
        p.model.path = str(gguf)
        p.n_parallel = slots
        p.n_ctx = slots * ctx_per_slot  # the KV cache is shared out equally between the slots
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads or os.cpu_count() or 1
        p.verbosity = -1
        self.key = secrets.token_hex(16)
        p.api_keys = [self.key]
        if exact:  # f32 KV cache, no flash attention: the closest to transformers' fp32 arithmetic
            p.cache_type_k = p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32
            p.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if lora is not None:
            p.lora_adapters = [xlc.CommonAdapterLoraInfo(str(lora), 1.0)]
        try:
            self.server = xlc.Server(p)
        except Exception as e:  # xllamacpp raises plain RuntimeErrors
            raise ConvsumError(f"llama.cpp could not load {gguf}: {first_line(e)}") from None
        self.slots, self.ctx_per_slot = slots, ctx_per_slot

    def _post(self, body: dict) -> list[dict]:
        request = urllib.request.Request(self.server.listening_address + "/completion", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(request) as f:
                reply = json.load(f)
        except urllib.error.HTTPError as e:
            raise ConvsumError(f"llama.cpp refused the request: {e.read().decode(errors='replace')[:200]}") from None
        return reply if isinstance(reply, list) else [reply]

    def decode_prompts(self, prompts: list[list[int]], gen: GenerateConfig, tokenizer, stop_ids: list[int],
                       repeats: int = 1, keys: list[int | None] | None = None) -> list[list[int]]:
        if gen.strategy == "beam":
            raise ConvsumError("--engine llamacpp does not do beam search; use generate.strategy greedy or mbr")
        too_long = max(map(len, prompts)) + gen.max_new_tokens
        if too_long > self.ctx_per_slot:
            raise ConvsumError(f"a prompt of {too_long - gen.max_new_tokens} tokens + {gen.max_new_tokens} new ones "
                               f"does not fit llama.cpp's {self.ctx_per_slot}-token slots")
        greedy = {"n_predict": gen.max_new_tokens, "temperature": 0.0, "top_k": 1, "return_tokens": True,
                  "cache_prompt": False}
        if gen.eos_bias:
            greedy["logit_bias"] = [[t, gen.eos_bias] for t in stop_ids]
        if repeats == 1:
            replies = self._post({**greedy, "prompt": prompts})
        else:
            sample = {**greedy, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": TOP_K, "min_p": 0.0,
                      "cache_prompt": True}

            def candidates(i: int) -> list[dict]:
                # One prompt's candidates in turn: with cache_prompt llama.cpp keeps the prompt in the
                # slot it used, so the prompt is processed once per dialogue, not once per candidate.
                out = []
                for key in keys[i * repeats:(i + 1) * repeats]:
                    body = {**sample, "prompt": prompts[i]}
                    body.update({"temperature": 0.0, "top_k": 1} if key is None else {"seed": key % 2**32})
                    out.append(self._post(body)[0])
                return out

            with ThreadPoolExecutor(self.slots) as pool:
                replies = [r for group in pool.map(candidates, range(len(prompts))) for r in group]
        return [trim_at_stop(r["tokens"], stop_ids) for r in replies]

    def close(self) -> None:
        self.server = None  # xllamacpp stops its loop and listener when the Server is released
