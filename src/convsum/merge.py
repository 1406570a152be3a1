"""Merge stage: fold a run's LoRA adapter into a full-precision base and write a standalone model folder.

    convsum merge runs/r1 --output merged/r1 [--dtype bfloat16] [--set merge.check_new_tokens=48]

The base is always loaded unquantized in fp32, also for QLoRA runs: merging into a 4-bit base
rounds the merged weights back to 4 bits and loses most of what the adapter learned. Before the
folder is written, the merged model is checked against base + adapter on fixed inputs (logits
within 1e-4 evaluated in float64, identical greedy summaries in fp32); a failed check is an error
and writes nothing (convsum.checks).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from convsum.card import write_card
from convsum.checks import CHECK_DIALOGUES, LOGIT_TOLERANCE, check_equivalence, merge_adapter  # noqa: F401
from convsum.config import Config, checked, load_config
from convsum.errors import ConvsumError
from convsum.io import atomic_dir
from convsum.modeling import torch_dtype
from convsum.rundir import Kind, write_model_folder


def main(run_dir: str, output: str, dtype: str | None = None, cfg: Config | None = None) -> dict:
    """Merge `run_dir`'s adapter into its base as `cfg.merge` says (`dtype`, where given, wins)."""
    mc = (cfg or load_config()).merge
    if dtype:
        mc = replace(mc, dtype=checked(dtype, "merge.dtype"))
    if Path(output).exists():
        raise ConvsumError(f"{output} already exists; choose another --output or remove it")
    t0 = time.perf_counter()
    merged, tokenizer, run_cfg, run, check = merge_adapter(run_dir, mc.check_new_tokens, mc.check_prompt_tokens)
    run_cfg.merge = mc  # the folder's config.yaml says how it was merged
    with atomic_dir(output) as tmp:
        write_model_folder(Path(tmp), merged.to(torch_dtype(mc.dtype)), tokenizer, run_cfg, run.get("base_revision"),
                           Kind.MERGED, {"merged_from": str(Path(run_dir).resolve()), "dtype": mc.dtype,
                                         "merge_check": check, "merge": asdict(mc)})
        write_card(Path(tmp))
    elapsed = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(output).iterdir())
    print(f"convsum: merged {run_dir} into {output} ({mc.dtype}, {size / 1e6:.0f} MB) in {elapsed:.0f} s; "
          f"check: max |logit diff| {check['max_abs_logit_diff']:.2e} in float64 (limit {LOGIT_TOLERANCE}; fp32 "
          f"{check['fp32_max_abs_logit_diff']:.2e}, fp32 noise floor {check['fp32_noise_floor']:.2e}), greedy identical")
    return {**check, "seconds": round(elapsed, 1), "bytes": size}
