"""Generate stage: load a summarizer (run folder, merged folder or plain model) and summarize dialogues.

    convsum summarize runs/r1 dialogues.jsonl      # one {"dialogue": ...} per line
    echo "#Person1#: Hi ..." | convsum summarize runs/r1 -
    convsum summarize --base -                     # the base model, same prompt

Prompts are sorted by length and generated in batches with left padding, so a batch wastes little
on padding; results come back in input order.
"""

from __future__ import annotations

import json
import sys

from convsum.config import Config
from convsum.errors import ConvsumError
# Re-exported: these lived here before convsum.inference / convsum.engines existed.
from convsum.engines import TransformersEngine  # noqa: F401
from convsum.inference import ModelSpec, Summarizer, load_summarizer, report_truncated, resolve_target  # noqa: F401


def read_dialogues(source: str, field_name: str) -> list[str]:
    """JSONL records (field `field_name`) or, for any other file or '-', the whole text as one dialogue."""
    if source == "-":
        text = sys.stdin.read()
        where = "<stdin>"
    else:
        from convsum.io import read_utf8

        text, where = read_utf8(source), source
    if source.endswith(".jsonl") or (text.lstrip().startswith("{") and source == "-"):
        from convsum.io import jsonl_objects

        out = []
        for n, obj in jsonl_objects(text, where):
            value = obj.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise ConvsumError(f"{where}:{n}: field {field_name!r} missing, not a string or empty")
            out.append(value.strip())
        if not out:
            raise ConvsumError(f"{where}: no dialogues")
        return out
    if not text.strip():
        raise ConvsumError(f"{where}: empty input (expected a dialogue)")
    return [text.strip()]


def main(cfg: Config, target: str | None, source: str = "-", base: bool = False, as_json: bool = False) -> list[str]:
    dialogues = read_dialogues(source, cfg.data.dialogue_field)
    summarizer = load_summarizer(target, cfg, base=base)
    summaries = summarizer(dialogues, progress=len(dialogues) > summarizer.gen.batch_size)
    report_truncated(summarizer, len(dialogues))
    for s in summaries:
        print(json.dumps({"summary": s}, ensure_ascii=False) if as_json else s)
    return summaries

