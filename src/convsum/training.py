"""Training pieces for the train stage: the configured stock Trainer and what we own around it.

We configure the stock Trainer and own only two small pieces, each tested:
- the loss runs the LM head on the summary positions only (Gemma's 262k-token head is most of the
  FLOPs; computing it on prompt tokens whose labels are masked is pure waste), fused with the
  cross-entropy so the [tokens x vocab] logits never exist (fastpath.py), and
- checkpoints are written to a staging folder and renamed into place, so a kill while saving never
  leaves a corrupt latest checkpoint.
The rest is configuration (`training_arguments`, `build_trainer`), callbacks (the run log, progress,
Ctrl-C, memory), the held-out scorer for selection by ROUGE, and saving a fully fine-tuned model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import rotate_checkpoints

from convsum.data import train_and_held_out
from convsum.errors import ConvsumError
from convsum import fastpath, metrics
from convsum.config import Config
from convsum.inference import Summarizer, generate_sharded
from convsum.prompt import IGNORE_INDEX, PromptFormatter, collate
from convsum.io import atomic_dir
from convsum.rundir import Kind, write_model_folder


class SummaryTrainer(Trainer):
    def __init__(self, *args, summary_only_logits: bool = True, fused_loss: bool = True, held_out_rouge=None,
                 eval_loss: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_loss = eval_loss
        self.summary_only_logits, self.fused_loss = summary_only_logits, fused_loss
        self.held_out_rouge = held_out_rouge  # model -> {"rougeL": ...}: summaries of the held-out slice scored

    def evaluation_loop(self, *args, **kwargs):
        # Held-out ROUGE joins the eval loss in the same metrics dict, so logging, best-checkpoint
        # tracking (metric_for_best_model="eval_rougeL") and early stopping see it like any metric.
        # Selecting by ROUGE, the loss pass is skipped unless asked for: it is a second full pass over
        # the held-out slice, in shapes the training kernels then have to be rebuilt after.
        prefix = kwargs.get("metric_key_prefix", "eval")
        if self.held_out_rouge is not None and not self.eval_loss:
            from transformers.trainer_utils import EvalLoopOutput

            out = EvalLoopOutput(predictions=None, label_ids=None, metrics={}, num_samples=len(self.eval_dataset))
        else:
            out = super().evaluation_loop(*args, **kwargs)
        if self.held_out_rouge is not None:
            out.metrics.update({f"{prefix}_{k}": v for k, v in
                                self.held_out_rouge(self.accelerator.unwrap_model(self.model)).items()})
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.summary_only_logits:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        # Batches are left-padded (prompt.collate), so each row's labelled tokens are its last ones and
        # `logits_to_keep` (a standard HF forward argument) limits the head to the last k+1 positions.
        k = int((labels != IGNORE_INDEX).sum(1).max())
        targets = labels[:, -k:]
        head = fastpath.fusable_head(self.accelerator.unwrap_model(model)) if self.fused_loss else None
        forward = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       position_ids=inputs.get("position_ids"))
        if head is not None:
            # The model's own head runs on one position only; the loss takes the final hidden states
            # and applies the head and cross-entropy fused (fastpath.head_cross_entropy). Going through
            # the model's forward keeps DDP's gradient hooks working.
            out = model(**forward, logits_to_keep=1, output_hidden_states=True)
            hidden = out.hidden_states[-1][:, -k - 1:-1]  # position p predicts token p+1
            keep = targets != IGNORE_INDEX
            loss = fastpath.head_cross_entropy(hidden[keep], head[0], targets[keep], softcap=head[1])
        else:
            out = model(**forward, logits_to_keep=k + 1)
            logits = out.logits[:, :-1].float()  # position p predicts token p+1
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        # Same normalisation as the model's own loss: by the label count of the whole accumulated
        # batch (all processes) when the Trainer provides it, so gradient accumulation is exact.
        if num_items_in_batch is not None:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss / (targets != IGNORE_INDEX).sum()
        return (loss, out) if return_outputs else loss

    def _save_checkpoint(self, model, trial):
        # Write into <output_dir>/.staging/checkpoint-N, then rename: the rename is atomic, so the
        # newest `checkpoint-N` folder is always complete (get_last_checkpoint ignores .staging).
        root = self.args.output_dir
        staging = os.path.join(root, ".staging")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = root
        name = f"checkpoint-{self.state.global_step}"
        if self.state.best_global_step:
            # The Trainer looked for the best checkpoint inside the staging folder; point it at its real
            # place (where it is, or will be after the rename below) before the state is final.
            self.state.best_model_checkpoint = os.path.join(root, f"checkpoint-{self.state.best_global_step}")
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, name, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            os.replace(os.path.join(staging, name), os.path.join(root, name))
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=root, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()


_TIMING = ("_runtime", "_per_second")  # the Trainer's eval timing keys; tokens/s is logged instead


class RunLog(TrainerCallback):
    """The run log (always written): step, loss, lr, grad norm, real (non-padding) training tokens/s over all
    processes (evaluation and checkpoint saving excluded, their seconds logged as paused_s), eval loss.

    Tokens come from the Trainer's own count (`include_num_input_tokens_seen="non_padding"`, summed
    over processes)."""

    def __init__(self, path: Path):
        self.path = path
        self.last_time, self.last_tokens, self.session_start_tokens = None, 0, 0
        # Seconds spent evaluating and saving checkpoints: kept out of tokens/s, which then measures
        # training alone (with them in, the window after each evaluation read as a 2x "slowdown").
        self.step_end, self.paused, self.total_paused = None, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kw):  # after a resumed run's state is restored
        self.last_time, self.last_tokens = time.perf_counter(), state.num_input_tokens_seen
        self.session_start_tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kw):
        self.step_end = time.perf_counter()

    def on_evaluate(self, args, state, control, **kw):  # the Trainer evaluates, then saves, after a step ends
        now = time.perf_counter()
        if self.step_end is not None:
            self.paused += now - self.step_end
            self.total_paused += now - self.step_end
        self.step_end = now

    on_save = on_evaluate

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            dt = now - (self.last_time or now) - self.paused
            row.update(loss=logs["loss"], lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                       tokens_per_s=round((tokens - self.last_tokens) / dt, 1) if dt > 0 else None)
            if self.paused:
                row["paused_s"] = round(self.paused, 1)  # evaluation + checkpoint saving in this window
            self.last_time, self.last_tokens, self.paused = now, tokens, 0.0
        row.update({k: v for k, v in logs.items() if k.startswith("eval_") and not k.endswith(_TIMING)})
        if len(row) > 2:
            row["time"] = round(time.time(), 3)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class Progress(ProgressCallback):
    """The stock bar (steps, ETA) with loss and tokens/s in its postfix instead of printed dicts; tokens/s
    leaves out the evaluation and saving time that `run_log` counted, as the log does."""

    def __init__(self, run_log: RunLog | None = None):
        super().__init__()
        self.t0, self.tok0, self.run_log = None, 0, run_log

    def on_train_begin(self, args, state, control, **kw):
        super().on_train_begin(args, state, control, **kw)
        self.t0, self.tok0 = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        post = {}
        if "loss" in logs:
            post["loss"] = f"{logs['loss']:.3f}"
        dt = time.perf_counter() - (self.t0 or time.perf_counter())
        if self.run_log is not None:
            dt -= self.run_log.total_paused
        if dt > 0:
            post["tok/s"] = f"{(state.num_input_tokens_seen - self.tok0) / dt:.0f}"
        if "eval_loss" in logs or "eval_rougeL" in logs:
            parts = [f"eval_loss {logs['eval_loss']:.4f}"] if "eval_loss" in logs else []
            if "eval_rougeL" in logs:
                parts.append(f"ROUGE-L {logs['eval_rougeL']:.1f} ({logs.get('eval_cut_off', 0)} cut off)")
            self.training_bar.write(f"step {state.global_step}: " + ", ".join(parts))
        self.training_bar.set_postfix(post, refresh=True)


class StopOnInterrupt(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. A second one aborts."""

    def __init__(self):
        self.requested = False

    def install(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nconvsum: interrupt received; saving a checkpoint after this step (Ctrl-C again to abort)",
                  flush=True)
        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread (e.g. called from a server); keep default handling
            pass

    def on_step_end(self, args, state, control, **kw):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


class ReleaseMemory(TrainerCallback):
    """Hand freed heap memory back to the OS after each step (glibc only).

    Batches of different lengths allocate activations of different sizes; glibc keeps the freed
    blocks in fragmented arenas and RSS creeps to several times the real working set (measured:
    see bench/RESULTS.md). `malloc_trim(0)` costs well under a millisecond per step."""

    def __init__(self):
        import ctypes
        import ctypes.util

        lib = ctypes.util.find_library("c")
        self.trim = getattr(ctypes.CDLL(lib), "malloc_trim", None) if lib and os.name == "posix" else None

    def on_step_end(self, args, state, control, **kw):
        if self.trim is not None and not torch.cuda.is_available():
            self.trim(0)

    on_evaluate = on_step_end  # held-out batches fragment the heap the same way


def tokenize_examples(cfg: Config, tokenizer, records) -> tuple[list[dict], int]:
    """Training examples (prompt + summary + EOS, prompt masked) with the one template; and how many
    dialogues were truncated to fit data.max_length."""
    fmt = PromptFormatter(tokenizer, cfg.prompt.template, cfg.prompt.format)
    out, truncated = [], 0
    for r in records:
        ex = fmt.build_train(r.dialogue, r.summary, cfg.data.max_length)
        truncated += ex.truncated
        out.append({"input_ids": ex.input_ids, "labels": ex.labels, "length": len(ex.input_ids)})
    return out, truncated


def prepare_examples(cfg: Config, tokenizer, records: tuple | None = None) -> tuple[str, list[dict], list[dict], int]:
    """(split used, train examples, held-out examples, truncated count); `records`: data.train_and_held_out's
    result when the caller already has it."""
    split, train_records, held_out = (records or train_and_held_out(cfg))[:3]
    (train_ex, t1), (val_ex, t2) = tokenize_examples(cfg, tokenizer, train_records), \
        tokenize_examples(cfg, tokenizer, held_out)
    return split, train_ex, val_ex, t1 + t2


def held_out_scorer(cfg: Config, tokenizer, records, bf16: bool):
    """model -> held-out ROUGE of its greedy summaries (mean over references), for train.select_by=rougeL.
    Plain greedy whatever generate.strategy and eos_bias say: selection needs a cheap, deterministic score,
    and decoding knobs are tuned afterwards on the checkpoint it picked (the order the shipped recipe used)."""
    gen = replace(cfg.generate, strategy="greedy", num_beams=1, eos_bias=0.0, bf16="true" if bf16 else "false")
    dialogues, refs = [r.dialogue for r in records], [r.references for r in records]

    def score(model) -> dict[str, float]:
        was_training = model.training
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        attn = base.config._attn_implementation
        if cfg.model.attn_implementation == "auto" and attn == "eager":
            base.set_attn_implementation("sdpa")  # what generation uses everywhere else (faster there)
        summarizer = Summarizer(model, tokenizer, cfg.prompt.template, gen, "held-out", prompt_format=cfg.prompt.format)
        t0 = time.perf_counter()
        try:
            preds = generate_sharded(summarizer, dialogues, "held-out summaries")
        finally:
            base.set_attn_implementation(attn)
            model.train(was_training)
        m = metrics.score_pairs(preds, refs)
        return {**m["mean"], "gen_length_words": m["gen_length_words"], "cut_off": summarizer.cut_off,
                "generate_s": round(time.perf_counter() - t0, 3)}

    return score


def training_arguments(cfg: Config, ckpt_dir: Path, has_eval: bool, bf16: bool) -> TrainingArguments:
    t = cfg.train
    eval_every = t.eval_steps if has_eval and t.eval_steps > 0 else None
    return TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        # transformers 5 deprecates `warmup_ratio`: a `warmup_steps` below 1 is read as that ratio of all steps.
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        neftune_noise_alpha=t.neftune_alpha or None,
        optim="adamw_torch_fused", seed=t.seed, data_seed=t.seed, bf16=bf16,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random", length_column_name="length",
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every, prediction_loss_only=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        logging_strategy="steps", logging_steps=t.logging_steps, report_to=t.report_to or "none",
        include_num_input_tokens_seen="non_padding",  # real tokens over all processes, for tokens/s
        load_best_model_at_end=t.select_by != "last" and eval_every is not None,
        metric_for_best_model={"eval_loss": "eval_loss", "rougeL": "eval_rougeL"}.get(t.select_by),
        greater_is_better=t.select_by == "rougeL",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient; skip DDP's extra graph walk
    )


def build_trainer(cfg: Config, model, tokenizer, train_ex: list[dict], val_ex: list[dict], args: TrainingArguments,
                  log_path: Path, held_out_rouge=None) -> tuple[SummaryTrainer, StopOnInterrupt]:
    """The configured Trainer (also used by bench/train_throughput.py, so the bench times exactly this)."""
    from datasets import Dataset

    if cfg.train.cpu_fast_path and not torch.cuda.is_available():
        if args.bf16:
            fastpath.cast_frozen_linears(model)
        fastpath.use_fast_lora_dropout(model)  # in fp32 too: bernoulli_ is single-threaded on many CPUs
    stopper = StopOnInterrupt()
    trainer = SummaryTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(train_ex),
        eval_dataset=Dataset.from_list(val_ex) if val_ex else None,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id, cfg.train.pad_to_multiple_of),
        callbacks=[run_log := RunLog(log_path), stopper, ReleaseMemory()],
        summary_only_logits=cfg.train.summary_only_logits, fused_loss=cfg.train.fused_loss,
        held_out_rouge=held_out_rouge, eval_loss=cfg.train.eval_loss != "false" and (
            cfg.train.eval_loss == "true" or cfg.train.select_by != "rougeL"),
    )
    if cfg.train.early_stopping_patience and args.load_best_model_at_end:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Progress(run_log))
    return trainer, stopper


def make_trainable(model, freeze_embeddings: bool, freeze_layers: int = 0):
    """Full fine-tuning: every weight trains, except (optionally) the input embedding and a head tied to it,
    and the first `freeze_layers` decoder layers."""
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_layers:
        layers = decoder_layers(model)
        if freeze_layers >= len(layers):
            raise ConvsumError(f"train.freeze_layers: {freeze_layers} would freeze all {len(layers)} decoder layers "
                               f"of {model.config.name_or_path or 'the model'}; use at most {len(layers) - 1}")
        for layer in layers[:freeze_layers]:
            layer.requires_grad_(False)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        head = model.get_output_embeddings()
        if head is not None:
            head.weight.requires_grad_(False)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (the ModuleList as long as config.num_hidden_layers)."""
    n = model.config.get_text_config().num_hidden_layers
    for module in model.get_decoder().modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ConvsumError(f"train.freeze_layers: cannot find the {n} decoder layers of {type(model).__name__}")


def save_full_model(model, tokenizer, cfg: Config, base_revision: str | None, folder: Path) -> None:
    """A standalone model folder (safetensors, tokenizer, generation config, convsum.json)."""
    fastpath.retie_head(model)  # the CPU fast path gave a tied head its own bf16 copy; save the tied original
    with atomic_dir(folder) as tmp:
        write_model_folder(tmp, model, tokenizer, cfg, base_revision, Kind.FULL)
