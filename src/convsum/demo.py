"""The main job: `convsum demo` — the lab in one command, offline, on a laptop CPU.

Loads the bundled Gemma 3 270M, scores the base model on held-out dialogues, fine-tunes it with LoRA,
scores it again and prints the before/after ROUGE table with three examples.

Data: `--data DIR` if given, otherwise the small set of DialogSum-style dialogues shipped in the
package (original text written for convsum; DialogSum itself is CC BY-NC-SA and never bundled).
"""

from __future__ import annotations

import random
import shutil
import textwrap
import time
from importlib import resources
from pathlib import Path

from convsum import evaluate, metrics, train
from convsum.config import Config, load_config
from convsum.data import load_split, read_records
from convsum.errors import ConvsumError
from convsum.io import atomic_write_jsonl
from convsum.rundir import HELD_OUT, RunDir

SAMPLE = "dialogues.jsonl"
N_HELD_OUT = 24

# Small-data settings: a few epochs over ~64 examples, a higher learning rate than the full-data
# preset. Chosen on the sample's own held-out validation slice, not on any test split.
DEMO_OVERRIDES = {
    "train.epochs": 3.0, "train.learning_rate": 4e-4, "train.save_steps": 8,
    "train.eval_steps": 8, "train.logging_steps": 2, "data.val_size": 8, "data.max_length": 512,
    "generate.max_new_tokens": 64, "generate.batch_size": 24,
}


def sample_path() -> Path:
    return Path(str(resources.files("convsum") / "sample_data" / SAMPLE))


def _prepare_data(cfg: Config, data: str | None, folder: Path) -> tuple[str, list]:
    """Write the demo's train/test files; returns (source for training, held-out records)."""
    if data:
        cfg.data.source = data
        try:
            held_out = load_split(cfg.data, "test")[:N_HELD_OUT]
        except ConvsumError:
            held_out = load_split(cfg.data, "validation")[-N_HELD_OUT:]
        if cfg.data.max_train_examples is None:
            cfg.data.max_train_examples = 64
        return data, held_out
    records = read_records(sample_path(), cfg.data)
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    test, trainset = [records[i] for i in order[:N_HELD_OUT]], [records[i] for i in order[N_HELD_OUT:]]
    row = lambda r: {"fname": r.id, "dialogue": r.dialogue, "summary": r.summary}  # noqa: E731
    atomic_write_jsonl(folder / "train.jsonl", map(row, trainset))
    atomic_write_jsonl(folder / "test.jsonl", map(row, test))
    return str(folder), test


def main(cfg: Config | None = None, data: str | None = None, output: str = "runs/demo") -> dict:
    t0 = time.perf_counter()
    cfg = cfg or load_config(preset=DEMO_OVERRIDES)
    out = Path(output)
    run = RunDir(out / "run")
    resume = run.is_run() and not run.is_finished()
    if not resume and out.exists():
        shutil.rmtree(out)  # a finished demo is simply redone; an interrupted one resumes below
    (out / "data").mkdir(parents=True, exist_ok=True)
    cfg.data.source, held_out = _prepare_data(cfg, data, out / "data")
    cfg.train.output_dir = str(run.path)
    print(f"convsum demo: model {cfg.model.name}, {len(held_out)} held-out dialogues, data {cfg.data.source}")

    from convsum.inference import load_summarizer

    print("\n[1/3] base model on the held-out dialogues")
    base_eval, tuned_eval = run.eval_dir(HELD_OUT, base=True), run.eval_dir(HELD_OUT)
    base = evaluate.evaluate_model(load_summarizer(None, cfg), held_out, base_eval, HELD_OUT)
    print(f"\n[2/3] LoRA fine-tuning{' (resuming)' if resume else ''}")
    summary = train.main(cfg, resume=resume)
    if summary.get("interrupted"):
        return summary
    print("\n[3/3] fine-tuned model on the same dialogues")
    tuned = evaluate.evaluate_model(load_summarizer(str(run.path), cfg), held_out, tuned_eval, HELD_OUT)

    results = {"base": base, "fine-tuned": tuned}
    print("\nROUGE F1 (%) on", len(held_out), "held-out dialogues")
    print(metrics.format_table(results, refs=metrics.table_refs(results)))
    _print_examples(base_eval.read_predictions(), tuned_eval.read_predictions())
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nconvsum demo: done in {minutes:.1f} min. Run folder: {run.path} (adapter, config, log, "
          f"predictions in {tuned_eval.path.name}/ and {base_eval.path.name}/)")
    return {"base": base, "fine-tuned": tuned, "train": summary, "minutes": round(minutes, 2)}


def _print_examples(base: list[dict], tuned: list[dict], n: int = 3) -> None:
    wrap = lambda s: textwrap.fill(s, 100, initial_indent="    ", subsequent_indent="    ")  # noqa: E731
    for b, t in list(zip(base, tuned))[:n]:
        print(f"\n--- {b['fname']} ---")
        print("  dialogue:\n" + textwrap.indent(textwrap.shorten(b["dialogue"], 400, placeholder=" ..."), "    "))
        print("  reference:\n" + wrap(next(iter(b["references"].values()))))
        print("  base:\n" + wrap(b["prediction"] or "(empty)"))
        print("  fine-tuned:\n" + wrap(t["prediction"] or "(empty)"))
