"""Merge stage: fold a run's LoRA adapter into a full-precision base and write a standalone model folder.

    convsum merge runs/r1 --output merged/r1 [--dtype bfloat16]

The base is always loaded unquantized in fp32, also for QLoRA runs: merging into a 4-bit base
rounds the merged weights back to 4 bits and loses most of what the adapter learned. Before the
folder is written, the merged model is checked against base + adapter on fixed inputs (logits
within 1e-4 evaluated in float64, identical greedy summaries in fp32); a failed check is an error
and writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from convsum.errors import ConvsumError
from convsum.io import atomic_dir
from convsum.card import write_card
from convsum.config import GenerateConfig, save_config
from convsum.modeling import load_model, load_tokenizer, torch_dtype
from convsum.prompt import PromptFormatter, left_pad
from convsum.rundir import RunDir, write_model_info

LOGIT_TOLERANCE = 1e-4
CHECK_DIALOGUES = [
    "#Person1#: Excuse me, does this bus go to the airport?\n#Person2#: No, you need the 42. It stops across "
    "the street.\n#Person1#: How often does it come?\n#Person2#: Every fifteen minutes.",
    "#Person1#: I'd like to book a table for four on Friday.\n#Person2#: We have seven or nine o'clock.\n"
    "#Person1#: Seven, please. The name is Garcia.",
    "#Person1#: Your report was late again.\n#Person2#: I'm sorry, my laptop broke on Monday.\n#Person1#: "
    "Tell IT next time, they lend laptops.\n#Person2#: I didn't know that. I will.",
]


def check_equivalence(reference, merged, tokenizer, template: str, max_new_tokens: int = 24,
                      prompt_format: str = "template") -> dict:
    """Compare base+adapter with the merged model on fixed inputs.

    Gate: max |logit difference| in float64 (both models are cast up for the check, so it measures
    the merged weights, not fp32 summation order) and identical greedy summaries in fp32. Also
    reported: the fp32 difference, and the fp32 noise floor (base+adapter in fp32 against itself in
    float64): how far fp32 rounding alone moves this model's logits."""
    fmt = PromptFormatter(tokenizer, template, prompt_format)
    prompts = [fmt.prompt_ids(d, 512)[0] for d in CHECK_DIALOGUES]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    gen = dict(attention_mask=mask, generation_config=GenerateConfig(max_new_tokens=max_new_tokens,
                                                                     num_beams=1).generation_config(tokenizer, fmt.stop_ids))
    with torch.inference_mode():
        same = torch.equal(reference.generate(input_ids=ids, **gen), merged.generate(input_ids=ids, **gen))
        ref32 = reference(input_ids=ids, attention_mask=mask).logits
        fp32 = (ref32 - merged(input_ids=ids, attention_mask=mask).logits).abs().max().item()
        reference.double()
        merged.double()
        ref64 = reference(input_ids=ids, attention_mask=mask).logits
        fp64 = (ref64 - merged(input_ids=ids, attention_mask=mask).logits).abs().max().item()
        floor = (ref32.double() - ref64).abs().max().item()  # fp32 rounding of the unmerged model itself
        merged.float()  # exact: the weights were fp32 values
    return {"max_abs_logit_diff": fp64, "greedy_identical": same, "tolerance": LOGIT_TOLERANCE,
            "fp32_max_abs_logit_diff": fp32, "fp32_noise_floor": floor, "inputs": len(CHECK_DIALOGUES)}


def main(run_dir: str, output: str, dtype: str = "float32") -> dict:
    import copy

    from peft import PeftModel

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConvsumError(f"--dtype {dtype!r}: expected float32, bfloat16 or float16")
    t0 = time.perf_counter()
    run_folder = RunDir(run_dir)
    cfg, run = run_folder.read()
    adapter = run_folder.adapter
    if run_folder.has_full_model():
        raise ConvsumError(f"{run_dir} was fully fine-tuned (train.method=full): nothing to merge; "
                           f"{run_folder.model} is already a standalone model for summarize, evaluate, serve and push")
    if not run_folder.has_adapter():
        raise ConvsumError(f"{run_dir}: no trained adapter ({run_folder.adapter_weights.relative_to(run_dir)} missing)")
    if Path(output).exists():
        raise ConvsumError(f"{output} already exists; choose another --output or remove it")
    model_cfg = replace(cfg.model, load_in_4bit=False, dtype="float32")
    tokenizer = load_tokenizer(model_cfg)
    base = load_model(model_cfg).to("cpu").eval()
    reference = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).eval()
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    check = check_equivalence(reference, merged, tokenizer, run["prompt_template"], prompt_format=cfg.prompt.format)
    del reference
    if check["max_abs_logit_diff"] > LOGIT_TOLERANCE or not check["greedy_identical"]:
        raise ConvsumError(f"merge check failed: max |logit diff| (float64) {check['max_abs_logit_diff']:.2e} "
                           f"(limit {LOGIT_TOLERANCE}), greedy identical: {check['greedy_identical']}; nothing written")
    merged = merged.to(torch_dtype(dtype))
    merged.config.name_or_path = None
    with atomic_dir(output) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(tmp)
        cfg.generate.generation_config(tokenizer, PromptFormatter(tokenizer, cfg.prompt.template,
                                                                  cfg.prompt.format).stop_ids).save_pretrained(tmp)
        save_config(cfg, RunDir(tmp).config)  # so a stage given this folder starts from the run's settings
        write_model_info(tmp, cfg, run.get("base_revision"), kind="merged",
                         extra={"merged_from": str(Path(run_dir).resolve()), "dtype": dtype, "merge_check": check,
                                "config": cfg.to_dict()})
        write_card(Path(tmp))
    elapsed = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(output).iterdir())
    print(f"convsum: merged {run_dir} into {output} ({dtype}, {size / 1e6:.0f} MB) in {elapsed:.0f} s; "
          f"check: max |logit diff| {check['max_abs_logit_diff']:.2e} in float64 (limit {LOGIT_TOLERANCE}; fp32 "
          f"{check['fp32_max_abs_logit_diff']:.2e}, fp32 noise floor {check['fp32_noise_floor']:.2e}), greedy identical")
    return {**check, "seconds": round(elapsed, 1), "bytes": size}

