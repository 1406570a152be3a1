"""Checks that gate what convsum writes: nothing is written unless the check passes.

- merge: base + adapter against the merged model on fixed dialogues (logits in float64, greedy summaries);
- GGUF export: the GGUF in llama.cpp against the transformers model (identical greedy summaries for f32;
  for the other types, the ROUGE-L difference on the run's held-out slice within a bar).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

from convsum import metrics
from convsum.config import GenerateConfig
from convsum.errors import ConvsumError
from convsum.inference import load_gguf_summarizer
from convsum.modeling import load_model, load_tokenizer
from convsum.prompt import PromptFormatter, left_pad
from convsum.rundir import RunDir

ROUGE_BAR = 0.5  # max |ROUGE-L difference| allowed between a quantized GGUF and the transformers model
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
                      prompt_format: str = "template", prompt_tokens: int = 512) -> dict:
    """Compare base+adapter with the merged model on fixed inputs.

    Gate: max |logit difference| in float64 (both models are cast up for the check, so it measures
    the merged weights, not fp32 summation order) and identical greedy summaries in fp32. Also
    reported: the fp32 difference, and the fp32 noise floor (base+adapter in fp32 against itself in
    float64): how far fp32 rounding alone moves this model's logits."""
    fmt = PromptFormatter(tokenizer, template, prompt_format)
    prompts = [fmt.prompt_ids(d, prompt_tokens)[0] for d in CHECK_DIALOGUES]
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


def merge_adapter(run_dir: str | Path, max_new_tokens: int = 24, prompt_tokens: int = 512):
    """(merged fp32 model, tokenizer, run config, run.json, check) for a LoRA run; raises, having
    written nothing, when the run has no adapter or the merged model fails `check_equivalence`.
    The base is loaded unquantized in fp32, also for QLoRA runs: merging into a 4-bit base rounds the
    merged weights back to 4 bits and loses most of what the adapter learned."""
    from peft import PeftModel

    run_folder = RunDir(run_dir)
    cfg, run = run_folder.read()
    if run_folder.has_full_model():
        raise ConvsumError(f"{run_dir} was fully fine-tuned (train.method=full): nothing to merge; "
                           f"{run_folder.model} is already a standalone model for summarize, evaluate, serve and push")
    if not run_folder.has_adapter():
        raise ConvsumError(f"{run_dir}: no trained adapter ({run_folder.adapter_weights.relative_to(run_dir)} missing)")
    model_cfg = replace(cfg.model, load_in_4bit=False, dtype="float32")
    tokenizer = load_tokenizer(model_cfg)
    base = load_model(model_cfg).to("cpu").eval()
    reference = PeftModel.from_pretrained(copy.deepcopy(base), str(run_folder.adapter)).eval()
    merged = PeftModel.from_pretrained(base, str(run_folder.adapter)).merge_and_unload().eval()
    check = check_equivalence(reference, merged, tokenizer, cfg.prompt.template, max_new_tokens,
                              cfg.prompt.format, prompt_tokens)
    del reference
    if check["max_abs_logit_diff"] > LOGIT_TOLERANCE or not check["greedy_identical"]:
        raise ConvsumError(f"merge check failed: max |logit diff| (float64) {check['max_abs_logit_diff']:.2e} "
                           f"(limit {LOGIT_TOLERANCE}), greedy identical: {check['greedy_identical']}; nothing written")
    merged.config.name_or_path = None
    return merged, tokenizer, cfg, run, check


def check_gguf(folder: Path, reference, outtype: str, held_out: list | None, gguf_cfg) -> dict:
    """Greedy summaries from the GGUF (llama.cpp) against `reference` (a transformers Summarizer)."""
    engine = load_gguf_summarizer(folder, gguf_cfg, exact=outtype == "f32")
    try:
        fixed_gguf, fixed_ref = engine(CHECK_DIALOGUES), reference(CHECK_DIALOGUES)
        result = {"fixed_dialogues": len(CHECK_DIALOGUES),
                  "fixed_identical": sum(a == b for a, b in zip(fixed_gguf, fixed_ref))}
        if held_out:
            dialogues, refs = [r.dialogue for r in held_out], [r.references for r in held_out]
            t0 = time.perf_counter()
            ours = reference(dialogues, progress=True, desc="transformers on held-out")
            t1 = time.perf_counter()
            theirs = engine(dialogues, progress=True, desc="llama.cpp on held-out")
            t2 = time.perf_counter()
            a, b = metrics.score_pairs(theirs, refs), metrics.score_pairs(ours, refs)
            result.update(held_out=len(held_out), held_out_identical=sum(x == y for x, y in zip(theirs, ours)),
                          rougeL_gguf=a["mean"]["rougeL"], rougeL_transformers=b["mean"]["rougeL"],
                          rougeL_diff=round(a["mean"]["rougeL"] - b["mean"]["rougeL"], 2),
                          seconds_transformers=round(t1 - t0, 1), seconds_gguf=round(t2 - t1, 1))
    finally:
        engine.close()
    return result


def judge_gguf(check: dict, outtype: str, bar: float = ROUGE_BAR) -> None:
    fixed = f"{check['fixed_identical']}/{check['fixed_dialogues']} fixed dialogues identical"
    line = f"convsum: check ({outtype}, llama.cpp vs transformers): {fixed}"
    if "held_out" in check:
        line += (f"; held-out {check['held_out_identical']}/{check['held_out']} identical, ROUGE-L "
                 f"{check['rougeL_gguf']:.2f} vs {check['rougeL_transformers']:.2f} ({check['rougeL_diff']:+.2f}; "
                 f"bar ±{bar}); {check['seconds_gguf']:.0f} s vs {check['seconds_transformers']:.0f} s")
    print(line)
    if outtype == "f32" and check["fixed_identical"] != check["fixed_dialogues"]:
        raise ConvsumError(f"GGUF check failed: the f32 GGUF's greedy summaries differ from the model's ({fixed}); "
                           "nothing written")
    if "held_out" in check and abs(check["rougeL_diff"]) > bar:
        raise ConvsumError(f"GGUF check failed: ROUGE-L moved by {check['rougeL_diff']:+.2f} (bar ±{bar}) "
                           f"on {check['held_out']} held-out dialogues; try --outtype f16; nothing written")

