"""Evaluate stage: generate summaries for a split and score them with ROUGE against every reference.

    convsum evaluate runs/r1 --data ../shared/data/dialogsum --split test       # fine-tuned
    convsum evaluate runs/r1 --compare-base --split test --limit 100             # base vs fine-tuned
    convsum evaluate --base --data ../shared/data/dialogsum --split test         # base model only
    convsum score PREDICTIONS.jsonl --data ../shared/data/dialogsum --split test --json

Each evaluation writes its predictions (fname, dialogue, prediction, references) and metrics into an
eval folder of the run (rundir.RunDir.eval_dir).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from convsum import metrics
from convsum.config import Config
from convsum.data import Record, canonical_split, is_single_file, load_split, train_and_held_out
from convsum.errors import ConvsumError
from convsum.io import atomic_write_json, atomic_write_jsonl, jsonl_objects, read_utf8
from convsum.inference import generate_sharded
from convsum.rundir import HELD_OUT, EvalDir, RunDir, is_run


def default_output(target: str | None, cfg: Config, split: str, limit: int | None, base: bool) -> EvalDir:
    """Inside the run or model folder when there is one, else runs/base-<model>/."""
    folder = Path(target) if target and Path(target).is_dir() else \
        Path("runs") / f"base-{re.sub(r'[^A-Za-z0-9._-]+', '_', target or cfg.model.name)}"
    return RunDir(folder).eval_dir(split, limit, base)


def evaluate_model(summarizer, records: list[Record], out: EvalDir | Path, split: str) -> dict:
    """Generate for `records`, score, and write the predictions and metrics into `out`."""
    from accelerate import PartialState

    out = out if isinstance(out, EvalDir) else EvalDir(Path(out), split)
    t0 = time.perf_counter()
    preds = generate_sharded(summarizer, [r.dialogue for r in records], f"{summarizer.name} on {split}")
    elapsed = time.perf_counter() - t0
    if not PartialState().is_main_process:
        return {}
    result = metrics.score_pairs(preds, [r.references for r in records], records[0].reference_names)
    result.update(model=summarizer.name, **summarizer.info, split=split, time_s=round(elapsed, 1),
                  dialogues_per_min=round(60 * len(records) / elapsed, 1) if elapsed > 0 else None,
                  truncated_dialogues=summarizer.truncated, cut_off_summaries=sum(summarizer.cut_off_flags),
                  generate=summarizer.gen.settings(),
                  prompt_template=summarizer.template, prompt_format=summarizer.prompt_format)
    atomic_write_jsonl(out.predictions, (
        {"fname": r.id, "dialogue": r.dialogue, "prediction": p, "cut_off": cut,
         "references": dict(zip(r.reference_names, r.references))}
        for r, p, cut in zip(records, preds, summarizer.cut_off_flags)))
    atomic_write_json(out.metrics, result)
    return result


def _same_source(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a == b


def check_not_training_data(target: str | None, cfg: Config, split: str) -> None:
    """Scoring a run on the data it learned from measures memory, not summarization: refuse, in one line."""
    if not target or split == HELD_OUT or not is_run(target):
        return
    run = RunDir(target).read()[1]
    source, trained = run.get("data_source"), run.get("train_split")
    if not source or not _same_source(source, cfg.data.source):
        return
    if is_single_file(cfg.data) or split == trained:
        what = "that very file" if is_single_file(cfg.data) else f"its {trained} split"
        raise ConvsumError(f"{target} was trained on {source} ({what}): scores there measure what it memorised. "
                           "Evaluate another split or file, or --split held-out; --allow-train-data to do it anyway")


def split_records(cfg: Config, split: str) -> tuple[str, list[Record]]:
    """A split's records; `held-out` is the slice a run with this config held out of its training split
    (same size, same seed, same carve)."""
    if split in (HELD_OUT, "heldout"):
        records = train_and_held_out(cfg)[2]
        if not records:
            raise ConvsumError("--split held-out: this config holds nothing out (data.val_size is 0)")
        return HELD_OUT, records
    split = canonical_split(split)
    return split, load_split(cfg.data, split)


def main(cfg: Config, target: str | None = None, base: bool = False, split: str = "test", limit: int | None = None,
         output: str | None = None, compare_base: bool = False, allow_train_data: bool = False) -> dict[str, dict]:
    from accelerate import PartialState

    from convsum.inference import load_summarizer, report_truncated

    if target is None and not base:
        raise ConvsumError("give a RUN_DIR (or a merged model folder / model id) to evaluate, or --base")
    split, records = split_records(cfg, split)
    if not allow_train_data:
        check_not_training_data(target, cfg, split)
    if limit is not None:
        if limit < 1:
            raise ConvsumError("--limit: must be a positive number")
        if limit >= len(records):
            print(f"convsum: --limit {limit}: the {split} split has {len(records)} dialogues; evaluating all of them")
            limit = None
        records = records[:limit]
    runs = []
    if base or compare_base:
        runs.append(("base", True))
    if target is not None and not base:
        runs.append(("fine-tuned", False))
    results = {}
    for label, as_base in runs:
        if output:
            out_dir = EvalDir(Path(output) / label if len(runs) > 1 else Path(output), split, limit, as_base)
        else:
            out_dir = default_output(target, cfg, split, limit, as_base)
        summarizer = load_summarizer(target, cfg, base=as_base)
        results[label] = evaluate_model(summarizer, records, out_dir, split)
        if not PartialState().is_main_process:
            continue
        report_truncated(summarizer, len(records))
        cut = results[label]["cut_off_summaries"]
        if cut:
            print(f"convsum: {label}: {cut} of {len(records)} summaries ({100 * cut / len(records):.1f}%) stopped at "
                  f"generate.max_new_tokens={summarizer.gen.max_new_tokens} without ending (cut off)")
        print(f"convsum: {label}: {len(records)} dialogues in {results[label]['time_s']:.0f} s; "
              f"wrote {out_dir.predictions} and {out_dir.metrics.name}")
        del summarizer
    if PartialState().is_main_process:
        print()
        print(metrics.format_table(results, refs=metrics.table_refs(results)))
    return results


def read_predictions(path: Path, records: list[Record]) -> list[str]:
    """Predictions in split order from a .txt (one per line) or .jsonl (fname, prediction) file."""
    text = read_utf8(path)
    if path.suffix != ".jsonl":
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) != len(records):
            raise ConvsumError(f"{path}: {len(lines)} predictions for {len(records)} dialogues in the split "
                               "(one line per dialogue, in split order)")
        return [ln.strip() for ln in lines]
    by_id: dict[str, str] = {}
    for n, obj in jsonl_objects(text, str(path)):
        for key in ("fname", "prediction"):
            if not isinstance(obj.get(key), str):
                raise ConvsumError(f"{path}:{n}: field {key!r} missing or not a string")
        if obj["fname"] in by_id:
            raise ConvsumError(f"{path}:{n}: field 'fname': duplicate {obj['fname']!r}")
        by_id[obj["fname"]] = obj["prediction"]
    ids = {r.id for r in records}
    unknown = [k for k in by_id if k not in ids]
    if unknown:
        raise ConvsumError(f"{path}: fname {unknown[0]!r} is not in the split ({len(unknown)} unknown)")
    if len(by_id) != len(records):
        missing = next(r.id for r in records if r.id not in by_id)
        raise ConvsumError(f"{path}: {len(by_id)} predictions for {len(records)} dialogues in the split "
                           f"(first missing fname: {missing!r})")
    return [by_id[r.id] for r in records]


def score_main(cfg: Config, predictions: str, split: str = "test", as_json: bool = False,
               against: str | None = None) -> dict:
    """Score an existing predictions file; no model is loaded. `against`: a second predictions file on
    the same split, compared with a paired bootstrap over dialogues."""
    records = split_records(cfg, split)[1]
    preds = read_predictions(Path(predictions), records)
    refs = [r.references for r in records]
    if against is not None:
        comparison = metrics.compare_systems(preds, read_predictions(Path(against), records), refs)
        print(json.dumps(comparison) if as_json else metrics.format_comparison(comparison, predictions, against))
        return comparison
    result = metrics.score_pairs(preds, refs, records[0].reference_names)
    if as_json:
        print(json.dumps({k: result[k] for k in ("n", "per_reference", "mean", "best")}))
    else:
        print(metrics.format_table({Path(predictions).name: result}, refs=metrics.table_refs({"x": result})))
    return result
