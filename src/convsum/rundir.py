"""Artifacts: the folders convsum writes, and the one place that says what a folder is (`kind_of`).

Each stage writes a folder the next stage reads instead of asking for flags again; stages find
their parts through `RunDir`, `EvalDir`, `kind_of` and `gguf_folder`, never by path strings.

    RUN/config.yaml          resolved config (default < YAML < CLI)
    RUN/run.json             base model id + revision/hash, prompt template, data split used
    RUN/adapter/             PEFT adapter (safetensors) + convsum.json (template, base, decoding)
    RUN/model/               instead of adapter/ when train.method=full: the whole fine-tuned model
    RUN/checkpoints/         checkpoint-N folders (written atomically)
    RUN/log.jsonl            step, loss, lr, tokens/s, eval loss
    RUN/train_summary.json   totals at the end of training
    RUN/eval-<split>[-first<N>][-base]/   predictions.jsonl + metrics.json from `convsum evaluate`

A model folder (RUN/adapter, RUN/model, a merged folder, a GGUF export) carries convsum.json: its
`Kind`, base model, prompt, decoding settings and provenance/check results; its settings are in the
config.yaml beside it (the one source of a folder's settings). So every stage that takes a run
folder also takes a merged folder; its evaluations land in the same eval-* folders inside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from convsum.config import Config, load_config
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, read_json

MODEL_INFO = "convsum.json"  # beside every model folder convsum writes, GGUF exports included
GGUF_INFO = MODEL_INFO
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HELD_OUT = "held-out"  # the split name of the slice carved from the training split
_EVAL = re.compile(r"^eval-(?P<split>[a-z]+)(?:-first(?P<limit>\d+))?(?P<base>-base)?$")


class Kind(str, Enum):
    """What a folder holds. The value is what convsum.json's `kind` says."""

    RUN = "run"  # a training run folder (config.yaml, run.json, adapter/ or model/)
    ADAPTER = "adapter"  # a LoRA adapter (needs its base)
    MERGED = "merged"  # base + adapter merged: a standalone model
    FULL = "full"  # a fully fine-tuned standalone model
    GGUF = "gguf"  # a GGUF export for llama.cpp

    @property
    def standalone(self) -> bool:
        """Loads by itself with transformers (no base model needed)."""
        return self in (Kind.MERGED, Kind.FULL)


@dataclass(frozen=True)
class EvalDir:
    """One evaluation: predictions.jsonl + metrics.json for a split (or its first N dialogues)."""

    path: Path
    split: str
    limit: int | None = None
    base: bool = False

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def exists(self) -> bool:
        return self.metrics.is_file()

    def read_metrics(self) -> dict:
        return read_json(self.metrics)

    def read_predictions(self) -> list[dict]:
        if not self.predictions.is_file():
            return []
        return [json.loads(x) for x in self.predictions.read_text(encoding="utf-8").splitlines() if x.strip()]


class RunDir:
    """A run folder written by `convsum train` (or any folder that holds eval-* folders)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / "config.yaml")
    info = property(lambda self: self.path / "run.json")
    log = property(lambda self: self.path / "log.jsonl")
    summary = property(lambda self: self.path / "train_summary.json")
    adapter = property(lambda self: self.path / "adapter")
    adapter_weights = property(lambda self: self.path / "adapter" / ADAPTER_WEIGHTS)
    model = property(lambda self: self.path / "model")  # train.method=full: the trained model itself
    checkpoints = property(lambda self: self.path / "checkpoints")

    def is_run(self) -> bool:
        return self.info.is_file()

    def is_finished(self) -> bool:
        return self.summary.is_file()

    def has_adapter(self) -> bool:
        return self.adapter_weights.is_file()

    def has_full_model(self) -> bool:
        return (self.model / MODEL_INFO).is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("checkpoint-*"))

    def read(self) -> tuple[Config, dict[str, Any]]:
        """(resolved config, run.json); a one-line error if this is not a run folder."""
        if not self.is_run():
            raise ConvsumError(f"{self.path}: not a convsum run folder (no {self.info.name})")
        return load_config(self.config), read_json(self.info)

    def read_config(self) -> Config:
        return load_config(self.config)

    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary) if self.is_finished() else {}

    def read_log(self) -> list[dict]:
        if not self.log.is_file():
            return []
        return [json.loads(x) for x in self.log.read_text(encoding="utf-8").splitlines() if x.strip()]

    def truncate_log(self, last_step: int) -> None:
        """Drop log lines written after `last_step` (a resumed run re-logs the steps after its checkpoint)."""
        if self.log.is_file():
            kept = [ln for ln in self.log.read_text(encoding="utf-8").splitlines()
                    if ln and json.loads(ln)["step"] <= last_step]
            self.log.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")

    def eval_dir(self, split: str, limit: int | None = None, base: bool = False) -> EvalDir:
        name = f"eval-{split.replace('-', '')}" + (f"-first{limit}" if limit else "") + ("-base" if base else "")
        return EvalDir(self.path / name, split, limit, base)

    def find_evals(self) -> list[EvalDir]:
        """Every finished evaluation in this folder."""
        found = []
        for p in sorted(self.path.glob("eval-*")):
            m = _EVAL.match(p.name)
            if m and p.is_dir():
                split = HELD_OUT if m["split"] == "heldout" else m["split"]
                e = EvalDir(p, split, int(m["limit"]) if m["limit"] else None, bool(m["base"]))
                if e.exists():
                    found.append(e)
        return found

    def find_eval(self, splits: tuple[str, ...] = ("test",)) -> tuple[EvalDir | None, EvalDir | None]:
        """(fine-tuned, base) evaluations of the first split in `splits` that has one: the whole split
        first, else its largest first-N slice; the base evaluation is the one on the same dialogues."""
        evals = self.find_evals()
        for split in splits:
            tuned = [e for e in evals if e.split == split and not e.base]
            if tuned:
                best = min(tuned, key=lambda e: (e.limit is not None, -(e.limit or 0)))
                base = self.eval_dir(split, best.limit, base=True)
                return best, base if base.exists() else None
        return None, None


def is_run(path: str | Path) -> bool:
    return RunDir(path).is_run()


def is_convsum_model(path: str | Path) -> bool:
    """A model folder written by convsum (adapter, merged, full or GGUF export)."""
    return (Path(path) / MODEL_INFO).is_file()


def kind_of(path: str | Path) -> Kind | None:
    """What `path` is: a run folder, a model folder convsum wrote (its convsum.json says which), a .gguf
    file of an export (GGUF), or None (a plain model id or folder)."""
    p = Path(path)
    if p.suffix == ".gguf":
        return Kind.GGUF  # gguf_folder says, in one line, when its convsum.json is missing
    if is_run(p):
        return Kind.RUN
    if is_convsum_model(p):
        kind = read_model_info(p).get("kind")
        try:
            return Kind(kind)
        except ValueError:
            raise ConvsumError(f"{p / MODEL_INFO}: unknown kind {kind!r} (expected one of "
                               f"{', '.join(k.value for k in Kind if k is not Kind.RUN)})") from None
    return None


def gguf_folder(target: str | Path) -> Path:
    """The export folder for a .gguf file, an export folder, or a run / merged folder holding gguf/."""
    p = Path(target)
    for folder in (p.parent if p.suffix == ".gguf" else p, p / "gguf"):
        if (folder / MODEL_INFO).is_file() and read_model_info(folder).get("kind") == Kind.GGUF:
            return folder
    if p.suffix == ".gguf":
        raise ConvsumError(f"{target}: no {MODEL_INFO} beside it (the prompt template travels there); export with "
                           "convsum export RUN --format gguf")
    raise ConvsumError(f"{target}: no GGUF export found (looked for {p / 'gguf'}); run: convsum export {target} "
                       "--format gguf")


def write_model_info(folder: Path, cfg: Config, base_revision: str | None, kind: Kind, extra: dict | None = None) -> None:
    """convsum.json beside an adapter or merged model: enough to use it without the run folder."""
    atomic_write_json(folder / MODEL_INFO, {
        "kind": Kind(kind).value,
        "base_model": cfg.model.name,
        "base_revision": base_revision,
        "prompt_template": cfg.prompt.template,
        "prompt_format": cfg.prompt.format,
        "generate": cfg.generate.settings(),
        **(extra or {}),
    })


def read_model_info(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / MODEL_INFO)


def write_model_folder(out: Path, model, tokenizer, cfg: Config, base_revision: str | None, kind: Kind,
                       extra: dict | None = None) -> None:
    """A standalone model in `out` (a staging folder the caller renames into place): safetensors weights,
    tokenizer (left padding), generation config with the template's stop tokens, config.yaml (its
    settings) and convsum.json (kind, base, provenance)."""
    from convsum.config import save_config
    from convsum.prompt import PromptFormatter

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)
    stop = PromptFormatter(tokenizer, cfg.prompt.template, cfg.prompt.format).stop_ids
    cfg.generate.generation_config(tokenizer, stop).save_pretrained(out)
    save_config(cfg, RunDir(out).config)  # so a stage given this folder starts from the run's settings
    write_model_info(out, cfg, base_revision, kind, extra)
