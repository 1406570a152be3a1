"""Run folders: what each stage writes so the next stage can read it instead of asking for flags again.

This module is the only place that knows the layout; every stage goes through `RunDir`.

    RUN/config.yaml          resolved config (default < YAML < CLI)
    RUN/run.json             base model id + revision/hash, prompt template, data split used
    RUN/adapter/             PEFT adapter (safetensors) + convsum.json (template, base, decoding)
    RUN/model/               instead of adapter/ when train.method=full: the whole fine-tuned model
    RUN/checkpoints/         checkpoint-N folders (written atomically)
    RUN/log.jsonl            step, loss, lr, tokens/s, eval loss
    RUN/train_summary.json   totals at the end of training
    RUN/eval-<split>[-first<N>][-base]/   predictions.jsonl + metrics.json from `convsum evaluate`

A merged model folder (`convsum merge`) carries the same convsum.json, so every stage that takes a
run folder also takes a merged folder; its evaluations land in the same eval-* folders inside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convsum.config import Config, load_config
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, read_json

MODEL_INFO = "convsum.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HELD_OUT = "held-out"  # the split name of the slice carved from the training split
_EVAL = re.compile(r"^eval-(?P<split>[a-z]+)(?:-first(?P<limit>\d+))?(?P<base>-base)?$")


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
    """A merged folder or an adapter folder written by convsum."""
    return (Path(path) / MODEL_INFO).is_file()


def write_model_info(folder: Path, cfg: Config, base_revision: str | None, kind: str, extra: dict | None = None) -> None:
    """convsum.json beside an adapter or merged model: enough to use it without the run folder."""
    atomic_write_json(folder / MODEL_INFO, {
        "kind": kind,
        "base_model": cfg.model.name,
        "base_revision": base_revision,
        "prompt_template": cfg.prompt.template,
        "prompt_format": cfg.prompt.format,
        "generate": cfg.generate.settings(),
        **(extra or {}),
    })


def read_model_info(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / MODEL_INFO)
