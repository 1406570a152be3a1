"""Experiment stage: grid sweeps over config fields, selected on a held-out slice of the training data.

    convsum sweep --config configs/gemma3-270m-lora.yaml --grid configs/sweeps/lora-lr.yaml --output runs/sweep1

The grid YAML maps config fields to value lists (`lora.r: [4, 16]`). Every combination is an
ordinary run folder under SWEEP_DIR; a re-run skips finished runs and resumes interrupted ones.
Each run is scored on its own held-out slice (carved from the training split, never the test
split): ROUGE of generated summaries and the eval loss. The table is sorted by held-out ROUGE-L.
"""

from __future__ import annotations

import copy
import itertools
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from convsum import train
from convsum.config import Config, set_field, validate
from convsum.data import train_and_held_out
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, atomic_write_text, read_yaml
from convsum.rundir import HELD_OUT, RunDir

SORT_KEY = "rougeL"


def load_grid(path: str | Path) -> dict[str, list[Any]]:
    p = Path(path)
    grid = read_yaml(p, "grid file")
    if not isinstance(grid, dict) or not grid:
        raise ConvsumError(f"{p}: expected a mapping of config fields to value lists, e.g. 'lora.r: [4, 16]'")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConvsumError(f"{p}: {k}: expected a non-empty list of values")
    return grid


def expand(base: Config, grid: dict[str, list[Any]], where: str = "grid") -> list[tuple[str, dict, Config]]:
    """(run name, {field: value}, config) for every combination, in a stable order."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        cfg = copy.deepcopy(base)
        for k, v in combo.items():
            set_field(cfg, k, v, where=f"{where}: {k}")
        validate(cfg)
        name = "_".join(f"{k.rsplit('.', 1)[-1]}-{_slug(v)}" for k, v in combo.items())
        out.append((name, combo, cfg))
    return out


def _slug(v: Any) -> str:
    if isinstance(v, list):
        v = "+".join(map(str, v))
    return re.sub(r"[^A-Za-z0-9.+-]+", "", str(v))


def run_one(cfg: Config, run_dir: Path) -> dict:
    from convsum.evaluate import evaluate_model
    from convsum.inference import load_summarizer

    cfg.train.output_dir = str(run_dir)
    run = RunDir(run_dir)
    if not run.is_finished():
        resume = run.has_checkpoint()
        if run.is_run() and not resume:
            shutil.rmtree(run_dir)  # started but killed before its first checkpoint: nothing to keep
        result = train.main(cfg, resume=resume)
        if result.get("interrupted"):
            raise ConvsumError(f"sweep interrupted in {run_dir}; re-run the same command to resume")
    held_out_eval = run.eval_dir(HELD_OUT)
    if not held_out_eval.exists():
        records = train_and_held_out(cfg).held_out  # the slice this run held out (same seed, same carve)
        if not records:
            raise ConvsumError("data.val_size is 0: a sweep needs a held-out slice to select on")
        evaluate_model(load_summarizer(str(run_dir), cfg), records, held_out_eval, HELD_OUT)
    return {"summary": run.read_summary(), "metrics": held_out_eval.read_metrics()}


def main(base: Config, grid_path: str, output: str) -> list[dict]:
    grid = load_grid(grid_path)
    runs = expand(base, grid, where=str(grid_path))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "grid.yaml", yaml.safe_dump(grid, sort_keys=False))
    rows = []
    for i, (name, combo, cfg) in enumerate(runs, 1):
        run_dir = out / name
        state = "done" if RunDir(run_dir).eval_dir(HELD_OUT).exists() else "running"
        print(f"\n=== sweep run {i}/{len(runs)}: {name} ({state}) ===", flush=True)
        r = run_one(cfg, run_dir)
        m, s = r["metrics"]["mean"], r["summary"]
        rows.append({"run": name, **combo, "heldout_rouge1": m["rouge1"], "heldout_rouge2": m["rouge2"],
                     "heldout_rougeL": m["rougeL"], "eval_loss": s["eval_loss"], "train_min": s["train_runtime_s"] / 60,
                     "tokens_per_s": s["tokens_per_s"], "steps": s["steps"]})
    rows.sort(key=lambda r: -r[f"heldout_{SORT_KEY}"])
    atomic_write_json(out / "sweep.json", rows)
    table = format_table(rows, list(grid))
    atomic_write_text(out / "sweep.md", table + "\n")
    print("\nheld-out slice (carved from the training split; the test split is never read):\n" + table)
    return rows


def format_table(rows: list[dict], keys: list[str]) -> str:
    head = keys + ["R1", "R2", "RL", "eval loss", "train min", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [_slug(r[k]) for k in keys] + [f"{r['heldout_rouge1']:.1f}", f"{r['heldout_rouge2']:.1f}",
                                              f"{r['heldout_rougeL']:.1f}",
                                              f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "-",
                                              f"{r['train_min']:.1f}", f"{r['tokens_per_s'] or 0:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)
