"""Train stage: LoRA (or full) fine-tuning with the standard transformers Trainer + PEFT.

    convsum train --config configs/gemma3-270m.yaml --data ../shared/data/dialogsum --output runs/r1
    convsum train --output runs/r1 --resume        # after Ctrl-C or a kill

This file reads like the lab: check the run folder, load data and tokenizer, write run.json, build
the model (LoRA or full), train with the configured Trainer (convsum.training), save what the run
keeps and its summary.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint

from convsum.config import Config, save_config
from convsum.data import train_and_held_out
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, read_json
from convsum.modeling import add_lora, bf16_enabled, limit_kernel_cache, load_model, load_tokenizer, resolve, \
    trainable_parameters
from convsum.rundir import Kind, RunDir, write_model_info
# Re-exported: the pieces below were train.* before they moved to convsum.training (benches and users call them).
from convsum.training import (ReleaseMemory, RunLog, StopOnInterrupt, SummaryTrainer, build_trainer,  # noqa: F401
                              held_out_scorer, make_trainable, prepare_examples, save_full_model, tokenize_examples,
                              training_arguments)

# transformers TrainerCallbacks added to every run's Trainer (the tests' simulated kill uses it).
EXTRA_CALLBACKS: list = []


def main(cfg: Config, resume: bool = False) -> dict:
    from accelerate import PartialState

    limit_kernel_cache()
    state = PartialState()
    run = RunDir(cfg.train.output_dir)
    last = _checkpoint_to_resume(run, resume)
    with state.main_process_first():  # the bundled model is converted once, by one process
        tokenizer = load_tokenizer(cfg.model)
    records = train_and_held_out(cfg)
    split, train_ex, val_ex, truncated = prepare_examples(cfg, tokenizer, records)
    if cfg.train.select_by != "last" and not val_ex:
        raise ConvsumError(f"train.select_by={cfg.train.select_by} needs a held-out slice, and this one is empty")
    _, base_revision = resolve(cfg.model)
    bf16 = bf16_enabled(cfg.train.bf16)
    args = training_arguments(cfg, run.checkpoints, bool(val_ex), bf16)
    facts = {"train_split": split, "train_examples": len(train_ex), "held_out": len(val_ex),
             "truncated_dialogues": truncated, "bf16": bf16,
             "effective_batch": cfg.train.batch_size * cfg.train.grad_accum * state.num_processes}
    if state.is_main_process:
        write_run_info(run, cfg, records, base_revision, facts, resume, last, state.num_processes)

    torch.manual_seed(cfg.train.seed)  # LoRA init must not depend on anything loaded before it
    model, what = build_model(cfg)
    n_train, n_total = trainable_parameters(model)
    facts.update(trainable_parameters=n_train, total_parameters=n_total)
    if state.is_main_process:
        print(f"convsum: {what}: {n_train:,} trainable of {n_total:,} parameters ({100 * n_train / n_total:.2f}%); "
              f"effective batch {facts['effective_batch']}; bf16 {'on' if bf16 else 'off'}")

    scorer = held_out_scorer(cfg, tokenizer, records.held_out, bf16) if cfg.train.select_by == "rougeL" else None
    trainer, stopper = build_trainer(cfg, model, tokenizer, train_ex, val_ex, args, run.log, scorer)
    for callback in EXTRA_CALLBACKS:
        trainer.add_callback(callback)
    stopper.install()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last if resume else None)
    elapsed = time.perf_counter() - t0
    if stopper.requested:
        if state.is_main_process:
            print(f"convsum: stopped at step {trainer.state.global_step}; checkpoint saved. "
                  f"Resume with: convsum train --output {run.path} --resume")
        return {"interrupted": True, "step": trainer.state.global_step}

    summary = train_summary(cfg, trainer, result, elapsed, facts, last if resume else None)
    if state.is_main_process:
        save_kept_model(cfg, trainer.model, tokenizer, base_revision, run)
        atomic_write_json(run.summary, summary)
        print(_summary_line(cfg, summary, run))
    state.wait_for_everyone()
    return summary


def _checkpoint_to_resume(run: RunDir, resume: bool) -> str | None:
    last = get_last_checkpoint(str(run.checkpoints)) if run.checkpoints.is_dir() else None
    if resume and last is None:
        raise ConvsumError(f"{run.path}: no checkpoint to resume from")
    if not resume and run.is_run():
        raise ConvsumError(f"{run.path} already holds a run; pass --resume to continue it or choose another --output")
    return last


def write_run_info(run: RunDir, cfg: Config, records, base_revision: str | None, facts: dict, resume: bool,
                   last: str | None, num_processes: int) -> None:
    """config.yaml + run.json: what every later stage reads instead of asking for flags again."""
    run.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    atomic_write_json(run.info, {
        "base_model": cfg.model.name, "base_revision": base_revision, "prompt_template": cfg.prompt.template,
        "prompt_format": cfg.prompt.format, "method": cfg.train.method, "data_source": cfg.data.source,
        "held_out_from": records.held_out_from, "data": records.report, **facts,
        "num_processes": num_processes, "started": run_info_start(run, resume),
    })
    print(f"convsum: {facts['train_examples']} training examples from split {facts['train_split']!r}, "
          f"{facts['held_out']} held out (from {records.held_out_from!r}); {facts['truncated_dialogues']} dialogues "
          f"truncated to fit data.max_length={cfg.data.max_length}")
    if resume:  # drop log lines written after the checkpoint we resume from
        run.truncate_log(int(Path(last).name.split("-")[-1]))


def run_info_start(run: RunDir, resume: bool) -> float:
    """When the run first started (kept across resumes): the origin of the report's minutes axis."""
    if resume and run.info.is_file():
        return read_json(run.info).get("started") or time.time()
    return time.time()


def build_model(cfg: Config):
    """(model ready to train, a line saying what trains)."""
    model = load_model(cfg.model, for_training=True)
    if cfg.train.method == "full":
        if cfg.model.load_in_4bit:
            raise ConvsumError("train.method=full cannot train 4-bit weights; set model.load_in_4bit=false")
        frozen = [what for what, on in (("embeddings", cfg.train.freeze_embeddings),
                                        (f"first {cfg.train.freeze_layers} layers", cfg.train.freeze_layers)) if on]
        return (make_trainable(model, cfg.train.freeze_embeddings, cfg.train.freeze_layers),
                "full fine-tuning" + (f" ({' and '.join(frozen)} frozen)" if frozen else ""))
    return add_lora(model, cfg.lora), f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} on {cfg.lora.target_modules}"


def train_summary(cfg: Config, trainer, result, elapsed: float, facts: dict, resumed_from: str | None) -> dict:
    """train_summary.json: the kept step (the last, or the best evaluated one, which the Trainer loaded
    back), its held-out scores, and the run's totals."""
    state = trainer.state
    kept_step = (state.best_global_step if trainer.args.load_best_model_at_end else None) or state.global_step
    evals = {h["step"]: h for h in state.log_history if "eval_loss" in h or "eval_rougeL" in h}
    kept = (evals.get(kept_step) or trainer.evaluate()) if facts["held_out"] else {}
    run_log = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RunLog))
    tokens = state.num_input_tokens_seen - run_log.session_start_tokens
    return {
        "steps": state.global_step, "epochs": round(state.epoch or 0.0, 4),
        "kept_step": kept_step, "select_by": cfg.train.select_by, "method": cfg.train.method,
        "train_loss": result.training_loss, "eval_loss": kept.get("eval_loss"),
        "eval_rougeL": kept.get("eval_rougeL"), "train_runtime_s": round(elapsed, 1),
        "tokens_this_session": tokens, "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
        # evaluation + checkpoint saving inside train_runtime_s (issue 19's "selection <= 15% of the run")
        "eval_and_save_s": round(run_log.total_paused, 1),
        "resumed_from": resumed_from, **facts,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def save_kept_model(cfg: Config, model, tokenizer, base_revision: str | None, run: RunDir) -> None:
    if cfg.train.method == "full":
        save_full_model(model, tokenizer, cfg, base_revision, run.model)
        return
    from convsum.io import atomic_dir

    with atomic_dir(run.adapter) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        write_model_info(tmp, cfg, base_revision, kind=Kind.ADAPTER)


def _summary_line(cfg: Config, s: dict, run: RunDir) -> str:
    loss = s["eval_loss"]
    ppl = f" (perplexity {math.exp(loss):.2f})" if loss is not None and loss < 50 else ""
    rouge = f", ROUGE-L {s['eval_rougeL']:.1f}" if s["eval_rougeL"] is not None else ""
    where = f"model in {run.model}" if cfg.train.method == "full" else f"adapter in {run.adapter}"
    return (f"convsum: trained {s['steps']} steps in {s['train_runtime_s'] / 60:.1f} min, {s['tokens_per_s']} "
            f"tokens/s; kept step {s['kept_step']} ({cfg.train.select_by}): held-out loss {loss}{ppl}{rouge}; {where}")
