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

from convsum.config import Config, GenerateConfig
from convsum.decoding import TOP_K  # the same candidate pool as decoding.SeededSampler
from convsum.errors import ConvsumError, first_line
from convsum.io import read_json


class LlamaCppEngine:
    def __init__(self, gguf: Path, lora: Path | None = None, slots: int = 4, ctx_per_slot: int = 1152,
                 threads: int = 0, exact: bool = False):
        from convsum.export import require_gguf_extra

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
        out = []
        for r in replies:
            tokens = r["tokens"]
            end = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
            out.append(tokens[:end])
        return out

    def close(self) -> None:
        self.server = None  # xllamacpp stops its loop and listener when the Server is released


def gguf_folder(target: str) -> Path:
    """The export folder for a .gguf file, an export folder, or a run / merged folder holding gguf/."""
    from convsum.export import GGUF_INFO

    p = Path(target)
    for folder in (p.parent if p.suffix == ".gguf" else p, p / "gguf"):
        if (folder / GGUF_INFO).is_file() and read_json(folder / GGUF_INFO).get("kind") == "gguf":
            return folder
    if p.suffix == ".gguf":
        raise ConvsumError(f"{target}: no {GGUF_INFO} beside it (the prompt template travels there); export with "
                           "convsum export RUN --format gguf")
    raise ConvsumError(f"{target}: no GGUF export found (looked for {p / 'gguf'}); run: convsum export {target} "
                       "--format gguf")


def load_gguf_summarizer(target: str | Path, cfg: Config, exact: bool = False):
    """A Summarizer whose engine is llama.cpp, prompting the GGUF exactly as the model was trained."""
    from transformers import AutoTokenizer

    from convsum.export import GGUF_INFO
    from convsum.generate import Summarizer
    from convsum.modeling import prepare_tokenizer

    folder = gguf_folder(str(target))
    info = read_json(folder / GGUF_INFO)
    gguf = Path(target) if str(target).endswith(".gguf") else folder / info["gguf"]
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))
    gen = cfg.generate
    engine = LlamaCppEngine(gguf, folder / info["adapter"] if info.get("adapter") else None,
                            slots=min(gen.batch_size, 8), ctx_per_slot=gen.max_input_tokens + gen.max_new_tokens,
                            threads=gen.threads, exact=exact)
    return Summarizer(engine, tokenizer, info["prompt_template"], gen, "fine-tuned",
                      {"gguf": str(gguf), "base_model": info["base_model"], "engine": "llamacpp"},
                      info.get("prompt_format", "template"))
