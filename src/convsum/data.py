"""Data stage: load DialogSum-style records from a folder, a JSONL/CSV file or the Hub, validated.

`convsum data --data DIR` prints per split: rows, dialogue/summary lengths in words and in tokens
of the configured model, and how many examples the configured max length would truncate.
"""

from __future__ import annotations

import csv
import io
import random
import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from convsum.config import Config, DataConfig
from convsum.errors import ConvsumError, first_line
from convsum.io import clean_text

SPLITS = ("train", "validation", "test")
DEFAULT_VAL_SIZE = 40  # what data.val_size=None holds out when the data allows it
_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
# `{split}.ext`, `{name}.{split}.ext` or `{name}_{split}.ext` (DialogSum's own `dialogsum.dev.jsonl` among them),
# and the Hub's own layout, `data/{split}-00000-of-00001.parquet` (shards read in order).
_SPLIT_FILE = re.compile(r"^(?:.+[._-])?(train|validation|dev|val|valid|test)$", re.IGNORECASE)
_HUB_SHARD = re.compile(r"^(train|validation|dev|val|valid|test)-\d+-of-\d+$", re.IGNORECASE)
LOOKED_FOR = ("{split}.EXT, NAME.{split}.EXT or NAME_{split}.EXT with split train, validation/dev/val/valid or test "
              "and EXT " + "/".join(e[1:] for e in EXTENSIONS) + ", or data/{split}-00000-of-0000N.parquet")
# When a configured field is absent (and left at its default), the names datasets commonly use instead.
FIELD_NAMES = {
    "dialogue_field": ("dialogue", "dialog", "conversation", "text", "input"),
    "summary_field": ("summary", "target", "output", "label", "highlights"),
    "id_field": ("fname", "id", "ID"),
}
_FIELD_WHAT = {"dialogue_field": "dialogue", "summary_field": "summary", "id_field": "id"}


@dataclass
class Record:
    id: str
    dialogue: str
    references: list[str]
    reference_names: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return self.references[0]


class Records(list):
    """A split's records, and the rows dropped on the way (`file:line: reason`, with data.on_invalid=skip)."""

    def __init__(self, items=(), skipped: list[str] | None = None):
        super().__init__(items)
        self.skipped = skipped or []


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ConvsumError(f"unknown split {split!r} (expected train, validation/dev or test)")
    return split


def _is_local(source: str) -> bool:
    p = Path(source)
    return p.exists() or source.startswith((".", "/", "~")) or p.suffix.lower() in EXTENSIONS


def is_single_file(cfg: DataConfig) -> bool:
    return Path(cfg.source).expanduser().is_file()


def split_files(folder: Path) -> dict[str, list[Path]]:
    """split -> its file(s) in `folder`; several top-level files for one split are an error, not a guess."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        m = _SPLIT_FILE.match(p.stem)
        if p.is_file() and p.suffix.lower() in EXTENSIONS and m:
            found.setdefault(canonical_split(m.group(1).lower()), []).append(p)
    for split, files in found.items():
        if len(files) > 1:
            raise ConvsumError(f"{folder}: several files for the {split} split ({', '.join(f.name for f in files)}); "
                               "keep one, or point --data at the file")
    hub = folder / "data"
    if hub.is_dir():
        for p in sorted(hub.iterdir()):
            m = _HUB_SHARD.match(p.stem)
            if p.is_file() and p.suffix.lower() in EXTENSIONS and m:
                split = canonical_split(m.group(1).lower())
                if split in found and found[split][0].parent == folder:
                    raise ConvsumError(f"{folder}: the {split} split is both {found[split][0].name} and data/{p.name}; "
                                       "keep one")
                found.setdefault(split, []).append(p)
    return {s: found[s] for s in SPLITS if s in found}


def available_splits(cfg: DataConfig) -> list[str]:
    src = Path(cfg.source).expanduser()
    if src.is_dir():
        return list(split_files(src))
    if src.is_file():
        return list(SPLITS)  # one file serves whichever split is asked for (evaluate refuses the training file)
    if _is_local(cfg.source):
        raise ConvsumError(f"{cfg.source}: no such file or folder")
    return list(SPLITS)  # a Hub dataset: which splits exist is only known after loading


def load_split(cfg: DataConfig, split: str) -> Records:
    split = canonical_split(split)
    src = Path(cfg.source).expanduser()
    if src.is_dir():
        files = split_files(src)
        if not files:
            raise ConvsumError(f"{src}: no split files found (looked for {LOOKED_FOR})")
        if split not in files:
            raise ConvsumError(f"{src}: no {split} split (found {', '.join(files)}; looked for {LOOKED_FOR})")
        parts = [read_records(f, cfg) for f in files[split]]
        if len(parts) == 1:
            return parts[0]
        return _check_ids(Records([r for part in parts for r in part], [x for part in parts for x in part.skipped]),
                          f"{src}/data ({split} shards)", cfg)
    if src.is_file():
        return read_records(src, cfg)
    if _is_local(cfg.source):
        raise ConvsumError(f"{cfg.source}: no such file or folder")
    return _load_hub(cfg, split)


def _load_hub(cfg: DataConfig, split: str) -> Records:
    try:
        import datasets

        ds = datasets.load_dataset(cfg.source, split=split)
    except Exception as e:  # the Hub client raises many types; all mean "could not get it"
        raise ConvsumError(f"cannot load dataset {cfg.source!r} split {split!r} from the Hugging Face Hub "
                           f"({first_line(e)}); offline? use --data PATH") from None
    where = f"{cfg.source}[{split}]"
    return _records(where, [(f"{where}: row {i + 1}", dict(row)) for i, row in enumerate(ds)], cfg)


def read_records(path: Path, cfg: DataConfig) -> Records:
    """Read and validate a .jsonl/.json/.csv/.parquet file; any problem is a ConvsumError naming file, line
    (or row) and field, or with data.on_invalid=skip a dropped row that is counted and reported."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raw = path.read_bytes()
        if not raw.strip():
            raise ConvsumError(f"{path}: empty file (no records)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConvsumError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
        text = text.removeprefix("\ufeff")
        if suffix == ".csv":
            rows = _csv_rows(path, text)
        elif suffix == ".json" and text.lstrip().startswith("["):
            rows = _json_array_rows(path, text)
        else:  # .jsonl, and .json written as JSON Lines (what datasets' to_json writes)
            rows = _jsonl_rows(path, text, cfg.on_invalid == "skip")
    return _records(str(path), rows, cfg)


def _records(where: str, rows: list[tuple[str, dict | str]], cfg: DataConfig) -> Records:
    """Rows ((location, object) or (location, reason) for a row that could not be parsed) -> Records."""
    skip = cfg.on_invalid == "skip"
    cfg = resolve_fields(where, [r for _, r in rows if isinstance(r, dict)], cfg)
    out, skipped, locs = Records(), [], []
    for i, (loc, row) in enumerate(rows):
        try:
            if isinstance(row, str):
                raise ConvsumError(f"{loc}: {row}")
            out.append(_to_record(row, cfg, loc, i))
            locs.append(loc)
        except ConvsumError as e:
            if not skip:
                raise ConvsumError(f"{e} (data.on_invalid=skip drops such rows)") from None
            skipped.append(str(e))
    out.skipped = skipped
    return _check_ids(out, where, cfg, locs)


def _check_ids(records: Records, where: str, cfg: DataConfig, locs: list[str] | None = None) -> Records:
    """Duplicate ids: an error naming both places, or (skip) the later record dropped; then the skip report."""
    locs = locs or [f"{where}: record {n + 1}" for n in range(len(records))]
    kept, seen = Records(skipped=records.skipped), {}
    for rec, loc in zip(records, locs):
        if rec.id in seen:
            msg = f"{loc}: field {cfg.id_field!r}: duplicate id {rec.id!r} (first at {seen[rec.id]})"
            if cfg.on_invalid != "skip":
                raise ConvsumError(msg + " (data.on_invalid=skip drops such rows)")
            kept.skipped.append(msg)
            continue
        seen[rec.id] = loc
        kept.append(rec)
    if not kept:
        raise ConvsumError(f"{where}: no records" + (f" ({len(kept.skipped)} invalid rows skipped)" if kept.skipped else ""))
    if kept.skipped:
        print(f"convsum: {where}: skipped {len(kept.skipped)} invalid rows (data.on_invalid=skip), e.g. "
              + "; ".join(kept.skipped[:3]))
    return kept


def resolve_fields(where: str, rows: list[dict], cfg: DataConfig) -> DataConfig:
    """The fields this file names its dialogue / summary / id by: the configured ones when present; when a
    default one is absent, the one common name the file has (said in one line); several is an error."""
    columns = set().union(*(r.keys() for r in rows[:50])) if rows else set()
    defaults, chosen = DataConfig(), {}
    for key, names in FIELD_NAMES.items():
        configured = getattr(cfg, key)
        present = configured in columns or (key == "summary_field" and any(
            c.startswith(configured) and c[len(configured):].isdigit() for c in columns))
        if present or configured != getattr(defaults, key) or not columns:
            continue
        candidates = [n for n in names if n in columns and n != configured]
        if len(candidates) > 1:
            raise ConvsumError(f"{where}: no field {configured!r}, and several could be the {_FIELD_WHAT[key]} "
                               f"({', '.join(candidates)}); set data.{key}")
        if candidates:
            chosen[key] = candidates[0]
    if chosen:
        print(f"convsum: {where}: using " + ", ".join(f"field {v!r} as the {_FIELD_WHAT[k]}" for k, v in chosen.items())
              + " (set " + ", ".join(f"data.{k}" for k in chosen) + " to choose)")
    return replace(cfg, **chosen) if chosen else cfg


def _jsonl_rows(path: Path, text: str, skip: bool) -> list[tuple[str, dict | str]]:
    from convsum.io import jsonl_objects

    if not skip:
        try:
            return [(f"{path}:{n}", obj) for n, obj in jsonl_objects(text, str(path))]
        except ConvsumError as e:
            raise ConvsumError(f"{e} (data.on_invalid=skip drops such rows)") from None
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.extend((f"{path}:{n}", obj) for _, obj in jsonl_objects(line, str(path)))
            except ConvsumError as e:
                rows.append((f"{path}:{n}", str(e).split(": ", 1)[-1]))
    return rows


def _json_array_rows(path: Path, text: str) -> list[tuple[str, dict | str]]:
    import json

    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConvsumError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    return [(f"{path}: item {i + 1}", x if isinstance(x, dict) else f"expected a JSON object, got {type(x).__name__}")
            for i, x in enumerate(items)]


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except ImportError:
        raise ConvsumError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError, ...) all mean "not a readable Parquet file"
        raise ConvsumError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    if table.num_rows == 0:
        raise ConvsumError(f"{path}: empty file (no records)")
    return [(f"{path}: row {i + 1}", row) for i, row in enumerate(table.to_pylist())]


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if None in row:
                raise ConvsumError(f"{path}:{reader.line_num}: more values than header columns")
            rows.append((f"{path}:{reader.line_num}", row))
    except csv.Error as e:
        raise ConvsumError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None
    return rows


def _to_record(row: dict, cfg: DataConfig, loc: str, index: int) -> Record:
    def text_field(name: str) -> str:
        if name not in row:
            raise ConvsumError(f"{loc}: missing field {name!r}")
        value = row[name]
        if not isinstance(value, str):
            raise ConvsumError(f"{loc}: field {name!r} must be a string, got {type(value).__name__}")
        value = clean_text(value)
        if not value:
            raise ConvsumError(f"{loc}: field {name!r} is empty")
        return value

    dialogue = text_field(cfg.dialogue_field)
    if cfg.summary_field in row:
        names = [cfg.summary_field]
    else:
        names = sorted((k for k in row if k.startswith(cfg.summary_field) and k[len(cfg.summary_field):].isdigit()),
                       key=lambda k: int(k[len(cfg.summary_field):]))
        if not names:
            raise ConvsumError(f"{loc}: missing field {cfg.summary_field!r} "
                               f"(nor {cfg.summary_field}1, {cfg.summary_field}2, ...)")
    refs = [text_field(n) for n in names]
    rid = row.get(cfg.id_field)
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        rid = f"row_{index}"
    return Record(id=str(rid), dialogue=dialogue, references=refs, reference_names=names)


def training_split(cfg: DataConfig) -> tuple[str, list[Record]]:
    """The split to train on: `train` if the source has it, else `validation` (said out loud)."""
    splits = available_splits(cfg)
    if not splits and Path(cfg.source).expanduser().is_dir():
        raise ConvsumError(f"{cfg.source}: no split files found (looked for {LOOKED_FOR})")
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
    report = {"train_rows": len(train), "skipped_invalid": {"train": len(train.skipped), "validation": len(val.skipped)},
              "dropped_overlap": dropped, "train_repeats": repeats,
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
        data = TrainingData(split, train, held_out, split, {f"{split}_rows": len(records),
                                                            "skipped_invalid": {split: len(getattr(records, "skipped", []))}})
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


def split_overlaps(loaded: dict[str, list[Record]]) -> dict[str, int]:
    """'a/b' -> how many dialogues of split a also occur in split b (compared as dialogue_key does)."""
    keys = {s: {dialogue_key(r.dialogue) for r in recs} for s, recs in loaded.items()}
    names = list(loaded)
    return {f"{a}/{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def main(cfg: Config) -> dict:
    """Validate every split of `cfg.data.source` (a single file once) and print length statistics, rows
    skipped with data.on_invalid=skip, and dialogues shared between splits."""
    from convsum.modeling import load_tokenizer

    if is_single_file(cfg.data):
        loaded = {"file": load_split(cfg.data, "train")}  # one file: shown once, whatever split it will serve
    else:
        loaded = {s: load_split(cfg.data, s) for s in available_splits(cfg.data)}
    if not loaded:
        raise ConvsumError(f"{cfg.data.source}: no split files found (looked for {LOOKED_FOR})")
    tokenizer = load_tokenizer(cfg.model)
    cols = ["dialogue words", "dialogue tokens", "summary words", "summary tokens"]
    print(f"source: {cfg.data.source}   model: {cfg.model.name}   max_length: {cfg.data.max_length}")
    print(f"{'split':<11}{'rows':>6}{'refs':>5}" + "".join(f"  {c:>20}" for c in cols) + "  truncated  skipped")
    print(f"{'':<22}" + f"  {'median    p95    max':>20}" * len(cols))
    out = {}
    for s, recs in loaded.items():
        st = split_stats(recs, tokenizer, cfg)
        st["skipped"] = len(getattr(recs, "skipped", []))
        out[s] = st
        print(f"{s:<11}{st['rows']:>6}{st['references']:>5}" + "".join(
            f"  {_summ(st[k]):>20}" for k in ("dialogue_words", "dialogue_tokens", "summary_words", "summary_tokens"))
            + f"  {st['truncated']:>9}  {st['skipped']:>7}")
    print("(summary columns count every reference; truncated = dialogues cut to fit data.max_length in training; "
          "skipped = invalid rows dropped by data.on_invalid=skip)")
    if len(loaded) > 1:
        shared = split_overlaps(loaded)
        out["overlaps"] = shared
        print("dialogues in two splits: " + ", ".join(f"{k} {v}" for k, v in shared.items())
              + " (train dialogues also in validation/test are dropped when training)")
    return out
