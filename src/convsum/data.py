"""Data stage: load DialogSum-style records from a folder, a JSONL/CSV file or the Hub, validated.

`convsum data --data DIR` prints per split: rows, dialogue/summary lengths in words and in tokens
of the configured model, and how many examples the configured max length would truncate.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import NamedTuple

from convsum.config import Config, DataConfig
from convsum.datafiles import (EXTENSIONS, FIELD_NAMES, LOOKED_FOR, SPLITS, Record, Records,  # noqa: F401
                               canonical_split, check_ids, read_records, records_from_rows, resolve_fields,
                               split_files)
from convsum.errors import ConvsumError, first_line

DEFAULT_VAL_SIZE = 40  # what data.val_size=None holds out when the data allows it


def _is_local(source: str) -> bool:
    p = Path(source)
    return p.exists() or source.startswith((".", "/", "~")) or p.suffix.lower() in EXTENSIONS


def is_single_file(cfg: DataConfig) -> bool:
    return Path(cfg.source).expanduser().is_file()


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
        return check_ids(Records([r for part in parts for r in part], [x for part in parts for x in part.skipped]),
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
    return records_from_rows(where, [(f"{where}: row {i + 1}", dict(row)) for i, row in enumerate(ds)], cfg)


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
