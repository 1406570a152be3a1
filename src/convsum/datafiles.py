"""Reading dataset files: the layouts convsum recognises in a folder, and JSON Lines / JSON / CSV /
Parquet files turned into validated `Record`s, with one-line errors naming file, line and field
(or, with data.on_invalid=skip, the rows dropped and why). convsum.data builds the splits on it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from convsum.config import DataConfig
from convsum.errors import ConvsumError, first_line
from convsum.io import clean_text

SPLITS = ("train", "validation", "test")
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
    return records_from_rows(str(path), rows, cfg)


def records_from_rows(where: str, rows: list[tuple[str, dict | str]], cfg: DataConfig) -> Records:
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
    return check_ids(out, where, cfg, locs)


def check_ids(records: Records, where: str, cfg: DataConfig, locs: list[str] | None = None) -> Records:
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
