"""Data stage: load DialogSum-style records from a folder, a JSONL/CSV file or the Hub, validated.

`convsum data --data DIR` prints per split: rows, dialogue/summary lengths in words and in tokens
of the configured model, and how many examples the configured max length would truncate.
"""

from __future__ import annotations

import csv
import io
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from convsum.config import Config, DataConfig
from convsum.errors import ConvsumError

SPLITS = ("train", "validation", "test")
DEFAULT_VAL_SIZE = 40  # what data.val_size=None holds out when the data allows it
_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}
# File names looked for in a data folder, per split (DialogSum's own names first).
_SPLIT_FILES = {
    "train": ["dialogsum.train.jsonl", "train.jsonl", "train.csv"],
    "validation": ["dialogsum.dev.jsonl", "dev.jsonl", "validation.jsonl", "dev.csv", "validation.csv"],
    "test": ["dialogsum.test.jsonl", "test.jsonl", "test.csv"],
}


@dataclass
class Record:
    id: str
    dialogue: str
    references: list[str]
    reference_names: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return self.references[0]


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ConvsumError(f"unknown split {split!r} (expected train, validation/dev or test)")
    return split


def _is_local(source: str) -> bool:
    p = Path(source)
    return p.exists() or source.startswith((".", "/", "~")) or p.suffix in (".jsonl", ".csv", ".json")


def available_splits(cfg: DataConfig) -> list[str]:
    src = Path(cfg.source).expanduser()
    if src.is_dir():
        return [s for s in SPLITS if any((src / n).is_file() for n in _SPLIT_FILES[s])]
    if src.is_file():
        return list(SPLITS)  # one file serves whichever split is asked for
    if _is_local(cfg.source):
        raise ConvsumError(f"{cfg.source}: no such file or folder")
    return list(SPLITS)  # a Hub dataset: which splits exist is only known after loading


def load_split(cfg: DataConfig, split: str) -> list[Record]:
    split = canonical_split(split)
    src = Path(cfg.source).expanduser()
    if src.is_dir():
        for name in _SPLIT_FILES[split]:
            if (src / name).is_file():
                return read_records(src / name, cfg)
        raise ConvsumError(f"{src}: no {split} split (looked for {', '.join(_SPLIT_FILES[split])})")
    if src.is_file():
        return read_records(src, cfg)
    if _is_local(cfg.source):
        raise ConvsumError(f"{cfg.source}: no such file or folder")
    return _load_hub(cfg, split)


def _load_hub(cfg: DataConfig, split: str) -> list[Record]:
    try:
        import datasets

        ds = datasets.load_dataset(cfg.source, split=split)
    except Exception as e:  # the Hub client raises many types; all mean "could not get it"
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConvsumError(f"cannot load dataset {cfg.source!r} split {split!r} from the Hugging Face Hub "
                           f"({reason}); offline? use --data PATH") from None
    return [_to_record(dict(row), cfg, f"{cfg.source}[{split}]", i + 1, i) for i, row in enumerate(ds)]


def read_records(path: Path, cfg: DataConfig) -> list[Record]:
    """Read and validate a .jsonl or .csv file; any problem is a ConvsumError naming file, line and field."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ConvsumError(f"{path}: empty file (no records)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConvsumError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
    text = text.removeprefix("\ufeff")
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    records = [_to_record(row, cfg, str(path), line, i) for i, (line, row) in enumerate(rows)]
    if not records:
        raise ConvsumError(f"{path}: no records")
    seen: dict[str, int] = {}
    for (line, _), rec in zip(rows, records):
        if rec.id in seen:
            raise ConvsumError(f"{path}:{line}: field {cfg.id_field!r}: duplicate id {rec.id!r} "
                               f"(first at record {seen[rec.id] + 1})")
        seen[rec.id] = len(seen)
    return records


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    from convsum.io import jsonl_objects

    return jsonl_objects(text, str(path))


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if None in row:
                raise ConvsumError(f"{path}:{reader.line_num}: more values than header columns")
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise ConvsumError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None
    return rows


def _to_record(row: dict, cfg: DataConfig, where: str, line: int, index: int) -> Record:
    def text_field(name: str) -> str:
        if name not in row:
            raise ConvsumError(f"{where}:{line}: missing field {name!r}")
        value = row[name]
        if not isinstance(value, str):
            raise ConvsumError(f"{where}:{line}: field {name!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ConvsumError(f"{where}:{line}: field {name!r} is empty")
        return value.strip()

    dialogue = text_field(cfg.dialogue_field)
    if cfg.summary_field in row:
        names = [cfg.summary_field]
    else:
        names = sorted((k for k in row if k.startswith(cfg.summary_field) and k[len(cfg.summary_field):].isdigit()),
                       key=lambda k: int(k[len(cfg.summary_field):]))
        if not names:
            raise ConvsumError(f"{where}:{line}: missing field {cfg.summary_field!r} "
                               f"(nor {cfg.summary_field}1, {cfg.summary_field}2, ...)")
    refs = [text_field(n) for n in names]
    rid = row.get(cfg.id_field)
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        rid = f"row_{index}"
    return Record(id=str(rid), dialogue=dialogue, references=refs, reference_names=names)


def training_split(cfg: DataConfig) -> tuple[str, list[Record]]:
    """The split to train on: `train` if the source has it, else `validation` (said out loud)."""
    splits = available_splits(cfg)
    if "train" in splits:
        try:
            return "train", load_split(cfg, "train")
        except ConvsumError:
            if Path(cfg.source).exists():
                raise
    if "validation" in splits:
        print(f"convsum: {cfg.source} has no train split; training on the validation split "
              f"(its held-out slice is carved from it). The run folder records this.")
        return "validation", load_split(cfg, "validation")
    raise ConvsumError(f"{cfg.source}: no train or validation split to train on")


def split_held_out(records: list, size: int | None, seed: int, min_train: int = 1) -> tuple[list, list]:
    """(train, held-out): the one seeded shuffle-and-slice that train, sweep and the benches share.

    `size` None holds out DEFAULT_VAL_SIZE, or 10% when that would leave fewer training examples than
    held-out ones, and says so. A number is taken as asked; if it leaves fewer than `min_train`
    examples (one batch) to train on, that is an error, never a silent shrink."""
    n = len(records)
    if size is None:
        size = DEFAULT_VAL_SIZE
        if n - size < max(size, min_train):
            size = n // 10
            print(f"convsum: data.val_size: holding out {size} of {n} examples (10%; the default "
                  f"{DEFAULT_VAL_SIZE} does not fit data this small)")
    elif n - size < min_train:
        raise ConvsumError(f"data.val_size={size}: the training split has {n} examples, so holding out {size} "
                           f"leaves {max(n - size, 0)}, fewer than one batch ({min_train}); lower data.val_size "
                           "(0: no held-out slice)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[size:]], [records[i] for i in order[:size]]


def dialogue_key(text: str) -> str:
    """A dialogue compared across splits: lower-cased, letters and digits only (the comparison
    ../shared/README.md counts DialogSum's overlaps with)."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


class TrainingData(NamedTuple):
    """What `convsum train` learns from and selects on, and where each part came from (run.json)."""
    split: str  # the split trained on
    train: list[Record]
    held_out: list[Record]
    held_out_from: str = ""  # the split the held-out slice was drawn from
    report: dict = {}  # counts for run.json: rows read, overlaps dropped, repeats


def _with_validation(cfg: Config, splits: list[str]) -> TrainingData:
    """Train on train and select on validation, as the dataset means them. Training dialogues that also
    occur in validation or test are dropped (only the other splits' dialogues are compared, never their
    summaries); repeats inside train are counted, and dropped with data.drop_train_repeats."""
    train, val = load_split(cfg.data, "train"), load_split(cfg.data, "validation")
    others = {"validation": {dialogue_key(r.dialogue) for r in val}}
    if "test" in splits:
        others["test"] = {dialogue_key(r.dialogue) for r in load_split(cfg.data, "test")}
    dropped = {name: 0 for name in others}
    kept, seen, repeats = [], set(), 0
    for r in train:
        key = dialogue_key(r.dialogue)
        hit = next((name for name, keys in others.items() if key in keys), None)
        if hit:
            dropped[hit] += 1
            continue
        repeats += key in seen
        if key in seen and cfg.data.drop_train_repeats:
            continue
        seen.add(key)
        kept.append(r)
    report = {"train_rows": len(train), "dropped_overlap": dropped, "train_repeats": repeats,
              "train_repeats_dropped": repeats if cfg.data.drop_train_repeats else 0, "validation_rows": len(val)}
    print(f"convsum: train split: {len(train)} dialogues; dropped " +
          ", ".join(f"{n} also in {name}" for name, n in dropped.items()) +
          f"; {repeats} repeat an earlier training dialogue ("
          f"{'dropped' if cfg.data.drop_train_repeats else 'kept; data.drop_train_repeats=true drops them'})")
    size = DEFAULT_VAL_SIZE if cfg.data.val_size is None else cfg.data.val_size
    if size > len(val):
        raise ConvsumError(f"data.val_size={size}: the validation split has only {len(val)} examples")
    order = list(range(len(val)))
    random.Random(cfg.train.seed).shuffle(order)
    held_out = [val[i] for i in order[:size]]
    random.Random(cfg.train.seed).shuffle(kept)  # so max_train_examples takes a random subset, not the file's head
    return TrainingData("train", kept, held_out, "validation", report)


def train_and_held_out(cfg: Config) -> TrainingData:
    """The data `convsum train` (and sweep, `--split held-out`, the benches) uses. With both a train and a
    validation split: train on train (minus overlaps), select on data.val_size seeded validation dialogues.
    Otherwise the held-out slice is carved from the one training split with the run's seed. Then at most
    data.max_train_examples training records."""
    splits = available_splits(cfg.data)
    if Path(cfg.data.source).expanduser().is_dir() and {"train", "validation"} <= set(splits):
        data = _with_validation(cfg, splits)
    else:
        split, records = training_split(cfg.data)
        train, held_out = split_held_out(records, cfg.data.val_size, cfg.train.seed, min_train=cfg.train.batch_size)
        data = TrainingData(split, train, held_out, split, {f"{split}_rows": len(records)})
    if cfg.data.max_train_examples is not None:
        data = data._replace(train=data.train[: cfg.data.max_train_examples])
    if len(data.train) < cfg.train.batch_size:
        raise ConvsumError(f"{cfg.data.source}: {len(data.train)} training examples, fewer than one batch "
                           f"({cfg.train.batch_size})")
    return data


def _summ(xs: list[int]) -> str:
    if not xs:
        return "-"
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return f"{statistics.median(s):>6.0f} {p95:>6d} {s[-1]:>6d}"


def split_stats(records: list[Record], tokenizer, cfg: Config) -> dict:
    from convsum.prompt import PromptFormatter

    fmt = PromptFormatter(tokenizer, cfg.prompt.template, cfg.prompt.format)
    overhead = len(fmt.head) + len(fmt.tail) + 1  # instruction + EOS
    d_words = [len(r.dialogue.split()) for r in records]
    s_words = [len(ref.split()) for r in records for ref in r.references]
    d_tok = [len(t) for t in tokenizer([r.dialogue for r in records], add_special_tokens=False)["input_ids"]]
    s_tok = [len(t) for t in tokenizer([ref for r in records for ref in r.references],
                                       add_special_tokens=False)["input_ids"]]
    first_ref = [len(t) for t in tokenizer([r.summary for r in records], add_special_tokens=False)["input_ids"]]
    # Same rule as training: the dialogue is cut when prompt + summary + EOS exceeds max_length.
    truncated = sum(d + s + overhead > cfg.data.max_length for d, s in zip(d_tok, first_ref))
    return {"rows": len(records), "references": len(records[0].references) if records else 0,
            "dialogue_words": d_words, "summary_words": s_words, "dialogue_tokens": d_tok,
            "summary_tokens": s_tok, "truncated": truncated}


def main(cfg: Config) -> dict:
    """Validate every split of `cfg.data.source` and print length statistics."""
    from convsum.modeling import load_tokenizer

    splits = available_splits(cfg.data)
    loaded = {}
    for s in splits:
        try:
            loaded[s] = load_split(cfg.data, s)
        except ConvsumError:
            if Path(cfg.data.source).expanduser().is_dir() or _is_local(cfg.data.source):
                raise
    if not loaded:
        raise ConvsumError(f"{cfg.data.source}: no split could be loaded")
    tokenizer = load_tokenizer(cfg.model)
    cols = ["dialogue words", "dialogue tokens", "summary words", "summary tokens"]
    print(f"source: {cfg.data.source}   model: {cfg.model.name}   max_length: {cfg.data.max_length}")
    print(f"{'split':<11}{'rows':>6}{'refs':>5}" + "".join(f"  {c:>20}" for c in cols) + "  truncated")
    print(f"{'':<22}" + f"  {'median    p95    max':>20}" * len(cols))
    out = {}
    for s, recs in loaded.items():
        st = split_stats(recs, tokenizer, cfg)
        out[s] = st
        print(f"{s:<11}{st['rows']:>6}{st['references']:>5}" + "".join(
            f"  {_summ(st[k]):>20}" for k in ("dialogue_words", "dialogue_tokens", "summary_words", "summary_tokens"))
            + f"  {st['truncated']:>9}")
    print("(summary columns count every reference; truncated = dialogues cut to fit data.max_length in training)")
    return out
