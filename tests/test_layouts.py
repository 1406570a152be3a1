"""Dataset layouts people actually have: split files by the ecosystem's names, .json / .parquet,
field-name fallbacks, data.on_invalid=skip, text hygiene and the train-data leakage refusal."""

import json

import pytest

from convsum import cli
from convsum.config import DataConfig, load_config
from convsum.data import available_splits, load_split, read_records, split_files
from convsum.errors import ConvsumError


def rows(n, prefix="r", dialogue="dialogue", summary="summary", id_field="id"):
    return [{id_field: f"{prefix}{i}", dialogue: f"#Person1#: Hello {prefix} {i}.\n#Person2#: Hi {i}!",
             summary: f"They greet {i}."} for i in range(n)]


def jsonl(path, items):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    return path


def parquet(path, items):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(items), path)
    return path


@pytest.mark.parametrize("names", [
    ("train.jsonl", "validation.json", "test.csv"),
    ("mydata.train.json", "mydata.dev.jsonl", "mydata.test.parquet"),
    ("mydata_train.parquet", "mydata_val.csv", "mydata_test.json"),
    ("train.json", "valid.parquet", "test.jsonl"),
])
def test_split_files_by_the_names_the_ecosystem_uses(tmp_path, names):
    for name, n in zip(names, (6, 4, 3)):
        items = rows(n, prefix=name[:5])
        path = tmp_path / name
        if name.endswith(".parquet"):
            parquet(path, items)
        elif name.endswith(".csv"):
            path.write_text("id,dialogue,summary\n" + "".join(
                f'{x["id"]},"{x["dialogue"]}",{x["summary"]}\n' for x in items))
        else:
            jsonl(path, items)
    cfg = DataConfig(source=str(tmp_path))
    assert available_splits(cfg) == ["train", "validation", "test"]
    assert [len(load_split(cfg, s)) for s in ("train", "dev", "test")] == [6, 4, 3]
    assert load_split(cfg, "validation")[1].dialogue == "#Person1#: Hello " + names[1][:5] + " 1.\n#Person2#: Hi 1!"


def test_json_array_and_json_lines_read_alike(tmp_path):
    items = rows(3)
    (tmp_path / "a.json").write_text(json.dumps(items, indent=2))
    jsonl(tmp_path / "b.json", items)
    cfg = DataConfig(source=str(tmp_path))
    assert read_records(tmp_path / "a.json", cfg) == read_records(tmp_path / "b.json", cfg)
    (tmp_path / "c.json").write_text(json.dumps([items[0], 5]))
    with pytest.raises(ConvsumError, match=r"c\.json: item 2: expected a JSON object, got int"):
        read_records(tmp_path / "c.json", cfg)


def test_hub_layout_shards_are_read_in_order(tmp_path):
    parquet(tmp_path / "data" / "train-00000-of-00002.parquet", rows(3, "a"))
    parquet(tmp_path / "data" / "train-00001-of-00002.parquet", rows(2, "b"))
    parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows(2, "t"))
    cfg = DataConfig(source=str(tmp_path))
    assert list(split_files(tmp_path)) == ["train", "test"]
    assert [r.id for r in load_split(cfg, "train")] == ["a0", "a1", "a2", "b0", "b1"]


def test_unrecognised_folder_and_ambiguous_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    jsonl(tmp_path / "stuff.jsonl", rows(2))
    assert cli.main(["data", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no split files found (looked for {split}.EXT" in err and "jsonl/json/csv/parquet" in err
    assert len(err.splitlines()) == 1
    jsonl(tmp_path / "train.jsonl", rows(2))
    jsonl(tmp_path / "train.json", rows(2))
    with pytest.raises(ConvsumError, match=r"several files for the train split \(train.json, train.jsonl\)"):
        split_files(tmp_path)


def test_field_names_fall_back_to_common_ones_and_say_so(tmp_path, capsys):
    p = jsonl(tmp_path / "x.jsonl", rows(2, dialogue="conversation", summary="target", id_field="ID"))
    recs = read_records(p, DataConfig(source=str(p)))
    assert [r.id for r in recs] == ["r0", "r1"] and recs[0].summary == "They greet 0."
    out = capsys.readouterr().out
    assert "using field 'conversation' as the dialogue, field 'target' as the summary, field 'ID' as the id" in out
    amb = jsonl(tmp_path / "y.jsonl", [{"dialog": "a", "text": "b", "summary": "c"}])
    with pytest.raises(ConvsumError, match=r"several could be the dialogue \(dialog, text\); set data.dialogue_field"):
        read_records(amb, DataConfig(source=str(amb)))
    # A field the user named is never swapped for another.
    with pytest.raises(ConvsumError, match="missing field 'body'"):
        read_records(p, DataConfig(source=str(p), dialogue_field="body"))


def test_on_invalid_skip_drops_counts_and_reports_bad_rows(tmp_path, capsys):
    good = rows(4)
    text = "".join(json.dumps(x) + "\n" for x in good[:2]) + "{not json\n" + json.dumps({**good[2], "dialogue": " "}) \
        + "\n" + json.dumps({**good[3], "summary": 7}) + "\n" + json.dumps(good[0]) + "\n" + json.dumps(good[3]) + "\n"
    p = tmp_path / "train.jsonl"
    p.write_text(text)
    with pytest.raises(ConvsumError, match=r"train\.jsonl:3: invalid JSON .*\(data\.on_invalid=skip drops such rows\)"):
        read_records(p, DataConfig(source=str(p)))
    recs = read_records(p, DataConfig(source=str(p), on_invalid="skip"))
    assert [r.id for r in recs] == ["r0", "r1", "r3"]
    assert len(recs.skipped) == 4
    assert recs.skipped[0].endswith("train.jsonl:3: invalid JSON (Expecting property name enclosed in double quotes "
                                    "at column 2)")
    assert "train.jsonl:4: field 'dialogue' is empty" in recs.skipped[1]
    assert "train.jsonl:5: field 'summary' must be a string" in recs.skipped[2]
    assert "train.jsonl:6: field 'id': duplicate id 'r0'" in recs.skipped[3]
    out = capsys.readouterr().out
    assert "skipped 4 invalid rows (data.on_invalid=skip), e.g. " in out and "train.jsonl:3" in out


def test_crlf_and_stray_whitespace_are_normalised_for_training_and_inference(tmp_path, tiny_model_dir):
    from convsum.modeling import load_tokenizer
    from convsum.prompt import PromptFormatter

    lf = "#Person1#: Hi 😀\n#Person2#: Hello 𝄞!"
    crlf = "  #Person1#: Hi 😀  \r\n#Person2#: Hello 𝄞!\r\n\r\n"
    p = jsonl(tmp_path / "x.jsonl", [{"id": "a", "dialogue": crlf, "summary": "Greeting 😀 \r\n"}])
    rec = read_records(p, DataConfig(source=str(p)))[0]
    assert rec.dialogue == lf and rec.summary == "Greeting 😀"
    fmt = PromptFormatter(load_tokenizer(load_config(None, {"model.name": str(tiny_model_dir)}).model), "{dialogue}")
    assert fmt.prompt_ids(crlf, 512) == fmt.prompt_ids(lf, 512)  # serve / summarize see the same tokens
    assert fmt.tokenizer.decode(fmt.prompt_ids(crlf, 512)[0], skip_special_tokens=True) == lf  # emoji survive


def test_single_file_is_shown_once_and_the_training_file_is_not_scored_silently(tiny_cfg, tmp_path, capsys):
    from helpers import make_records

    from convsum import train

    f = jsonl(tmp_path / "mine.jsonl", make_records(24))
    assert cli.main(["data", "--data", str(f), "--model", tiny_cfg.model.name]) == 0
    out = capsys.readouterr().out
    assert "\nfile " in out and "\ntrain " not in out and "\ntest " not in out
    tiny_cfg.data.source, tiny_cfg.train.max_steps = str(f), 1
    train.main(tiny_cfg)
    run = tiny_cfg.train.output_dir
    assert cli.main(["evaluate", run, "--split", "test", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "that very file" in err and "--allow-train-data" in err
    assert cli.main(["evaluate", run, "--split", "held-out", "--limit", "2"]) == 0  # the carved slice is fine
    assert cli.main(["evaluate", run, "--split", "test", "--limit", "2", "--allow-train-data"]) == 0


def test_a_folder_exported_by_datasets_trains_evaluates_and_summarizes_without_data_flags(tiny_cfg, tmp_path, capsys):
    from datasets import Dataset

    from convsum import train

    folder = tmp_path / "exported"
    folder.mkdir()
    data = {"train": rows(16, "tr"), "validation": rows(6, "va"), "test": rows(4, "te")}
    data["train"].append({"id": "bad", "dialogue": "", "summary": "x"})  # one empty row, as real datasets have
    for split, items in data.items():
        ds = Dataset.from_list(items)
        ds.to_json(folder / f"{split}.json") if split != "test" else ds.to_parquet(folder / f"{split}.parquet")
    cfg = load_config(None, {"model.name": tiny_cfg.model.name, "data.source": str(folder), "data.val_size": 2,
                             "data.on_invalid": "skip", "data.max_length": 128, "train.output_dir": str(tmp_path / "r"),
                             "train.max_steps": 2, "train.batch_size": 4, "train.grad_accum": 1,
                             "train.bf16": "false", "generate.max_new_tokens": 8, "generate.bf16": "false"})
    train.main(cfg)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (run["train_split"], run["held_out_from"], run["train_examples"]) == ("train", "validation", 16)
    assert run["data"]["skipped_invalid"] == {"train": 1, "validation": 0}
    assert cli.main(["evaluate", str(tmp_path / "r"), "--split", "test"]) == 0
    assert json.loads((tmp_path / "r" / "eval-test" / "metrics.json").read_text())["n"] == 4
    d = jsonl(tmp_path / "mine.jsonl", [{"dialogue": "#Person1#: Hi.\r\n#Person2#: Hello 😀"}])
    capsys.readouterr()
    assert cli.main(["summarize", str(tmp_path / "r"), str(d), "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
