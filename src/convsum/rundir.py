"""Run folders: what each stage writes so the next stage can read it instead of asking for flags again.

    RUN_DIR/config.yaml          resolved config (default < YAML < CLI)
    RUN_DIR/run.json             base model id + revision/hash, prompt template, data split used
    RUN_DIR/adapter/             PEFT adapter (safetensors) + convsum.json (template, base)
    RUN_DIR/checkpoints/         checkpoint-N folders (written atomically)
    RUN_DIR/log.jsonl            step, loss, lr, tokens/s, eval loss
    RUN_DIR/train_summary.json   totals at the end of training
    RUN_DIR/eval-<split>/        predictions.jsonl + metrics.json from `convsum evaluate`

A merged model folder (`convsum merge`) carries the same convsum.json, so every stage that takes a
run folder also takes a merged folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convsum.config import Config, load_config
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, read_json

CONVSUM_JSON = "convsum.json"


def is_run(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()


def is_convsum_model(path: str | Path) -> bool:
    """A merged folder or an adapter folder written by convsum."""
    return (Path(path) / CONVSUM_JSON).is_file()


def read_run(run_dir: str | Path) -> tuple[Config, dict[str, Any]]:
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise ConvsumError(f"{run_dir}: not a convsum run folder (no run.json)")
    cfg = load_config(run_dir / "config.yaml")
    return cfg, read_json(run_dir / "run.json")


def write_model_info(folder: Path, cfg: Config, base_revision: str | None, kind: str, extra: dict | None = None) -> None:
    """convsum.json beside an adapter or merged model: enough to use it without the run folder."""
    atomic_write_json(folder / CONVSUM_JSON, {
        "kind": kind,
        "base_model": cfg.model.name,
        "base_revision": base_revision,
        "prompt_template": cfg.prompt.template,
        "generate": {"max_new_tokens": cfg.generate.max_new_tokens, "num_beams": cfg.generate.num_beams,
                     "max_input_tokens": cfg.generate.max_input_tokens},
        **(extra or {}),
    })


def read_model_info(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / CONVSUM_JSON)
