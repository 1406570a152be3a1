
import pytest

from convsum import cli
from convsum.config import DataConfig
from convsum.data import available_splits, load_split, training_split
from convsum.errors import ConvsumError


def test_folder_maps_dialogsum_files_to_splits(data_dir):
    cfg = DataConfig(source=str(data_dir))
    assert available_splits(cfg) == ["validation", "test"]
    dev = load_split(cfg, "dev")
    assert len(dev) == 24 and dev[0].id == "ex_0" and dev[0].references == [dev[0].summary]
    test = load_split(cfg, "test")
    assert test[0].reference_names == ["summary1", "summary2", "summary3"] and len(test[0].references) == 3


def test_training_split_falls_back_to_validation_and_says_so(data_dir, capsys):
    split, recs = training_split(DataConfig(source=str(data_dir)))
    assert split == "validation" and len(recs) == 24
    assert "no train split" in capsys.readouterr().out


def test_csv_with_custom_columns(tmp_path):
    p = tmp_path / "notes.csv"
    p.write_text('id,text,target\n1,"#Person1#: hi, there\n#Person2#: hello",They greet.\n2,b b,c c\n')
    recs = load_split(DataConfig(source=str(p), dialogue_field="text", summary_field="target", id_field="id"), "train")
    assert [r.id for r in recs] == ["1", "2"] and recs[0].dialogue.startswith("#Person1#: hi, there\n")


def _write(tmp_path, content: bytes, name="bad.jsonl"):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("content,needle", [
    (b"", "empty file"),
    (b"\n\n", "empty file"),
    (b'{"fname": "a", "dialogue": "x", "summary": "y"}\n{"fname": "b", "dialogue": "x"\n', ":2: invalid JSON"),
    (b'{"fname": "a", "summary": "y"}\n', ":1: missing field 'dialogue'"),
    (b'{"fname": "a", "dialogue": 3, "summary": "y"}\n', ":1: field 'dialogue' must be a string"),
    (b'{"fname": "a", "dialogue": "  ", "summary": "y"}\n', ":1: field 'dialogue' is empty"),
    (b'{"fname": "a", "dialogue": "x"}\n', ":1: missing field 'summary'"),
    (b'{"fname": "a", "dialogue": "x", "summary": "y"}\n{"fname": "a", "dialogue": "x", "summary": "y"}\n',
     ":2: field 'fname': duplicate id"),
    (b'{"fname": "a", "dialogue": "caf\xe9", "summary": "y"}\n', ":1: not valid UTF-8"),
    (b'[1, 2]\n', ":1: expected a JSON object"),
])
def test_bad_jsonl_is_a_one_line_error_naming_file_line_field(tmp_path, content, needle):
    p = _write(tmp_path, content)
    with pytest.raises(ConvsumError) as e:
        load_split(DataConfig(source=str(p)), "train")
    msg = str(e.value)
    assert str(p) in msg and needle in msg and "\n" not in msg


def test_csv_extra_values_is_an_error(tmp_path):
    p = _write(tmp_path, b"dialogue,summary\na,b,c\n", "x.csv")
    with pytest.raises(ConvsumError, match=r"x.csv:2: more values"):
        load_split(DataConfig(source=str(p)), "train")


def test_hub_failure_says_offline(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(ConvsumError, match="offline\\? use --data PATH"):
        load_split(DataConfig(source="knkarthick/dialogsum"), "test")


def test_missing_local_path_is_clear():
    with pytest.raises(ConvsumError, match="no such file or folder"):
        load_split(DataConfig(source="./nope/data.jsonl"), "test")


def test_cli_bad_input_exits_nonzero_without_traceback(tmp_path, capsys):
    p = _write(tmp_path, b'{"fname": "a", "dialogue": "x", "summary": 5}\n')
    code = cli.main(["data", "--data", str(p)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"convsum: error: {p}:1: field 'summary' must be a string, got int "
                                        "(data.on_invalid=skip drops such rows)"]


def test_cli_data_prints_stats(tiny_model_dir, data_dir, capsys):
    assert cli.main(["data", "--data", str(data_dir), "--model", str(tiny_model_dir), "--set", "data.max_length=40"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.split() and ln.split()[0] in ("validation", "test")}
    assert set(lines) == {"validation", "test"}
    assert lines["validation"].split()[1] == "24" and lines["test"].split()[2] == "3"
    assert int(lines["validation"].split()[-2]) > 0  # max_length 40 truncates some dialogues
    assert lines["validation"].split()[-1] == "0"  # nothing skipped
    # the synthetic dialogues cycle through names/things/places, so some test dialogues repeat dev ones
    from convsum.config import DataConfig
    from convsum.data import dialogue_key, load_split
    dcfg = DataConfig(source=str(data_dir))
    both = {dialogue_key(r.dialogue) for r in load_split(dcfg, "validation")} \
        & {dialogue_key(r.dialogue) for r in load_split(dcfg, "test")}
    assert both and f"dialogues in two splits: validation/test {len(both)} " in out


def _split_folder(tmp_path):
    """train / dev / test where train repeats one dev and one test dialogue (in other case and
    punctuation) and one of its own (other whitespace)."""
    from helpers import write_jsonl

    def rec(i, prefix):
        return {"fname": f"{prefix}_{i}", "dialogue": f"#Person1#: Hi, this is call number {prefix} {i}.\n"
                f"#Person2#: Hello {i}!", "summary": f"Call {prefix} {i}."}
    d = tmp_path / "three"
    d.mkdir()
    dev, test = [rec(i, "dev") for i in range(10)], [rec(i, "test") for i in range(5)]
    train = [rec(i, "train") for i in range(30)]
    train.append({**dev[3], "fname": "train_dev3", "dialogue": dev[3]["dialogue"].upper().replace(",", "")})
    train.append({**test[1], "fname": "train_test1", "dialogue": test[1]["dialogue"].replace("!", " !")})
    train.append({**train[0], "fname": "train_again0", "dialogue": train[0]["dialogue"].replace(" ", "  ")})
    write_jsonl(d / "dialogsum.train.jsonl", train)
    write_jsonl(d / "dialogsum.dev.jsonl", dev)
    write_jsonl(d / "dialogsum.test.jsonl", [{"fname": r["fname"], "dialogue": r["dialogue"], "summary1": r["summary"],
                                              "summary2": r["summary"]} for r in test])
    return d


def test_train_split_minus_overlaps_and_selection_on_validation(tmp_path, capsys):
    from convsum.config import load_config
    from convsum.data import train_and_held_out

    cfg = load_config(None, {"data.source": str(_split_folder(tmp_path)), "data.val_size": 4})
    data = train_and_held_out(cfg)
    assert (data.split, data.held_out_from) == ("train", "validation")
    assert len(data.held_out) == 4 and all(r.id.startswith("dev_") for r in data.held_out)
    assert data.held_out == train_and_held_out(cfg).held_out  # seeded
    ids = {r.id for r in data.train}
    assert len(data.train) == 31 and "train_dev3" not in ids and "train_test1" not in ids and "train_again0" in ids
    assert data.report["dropped_overlap"] == {"validation": 1, "test": 1} and data.report["train_repeats"] == 1
    out = capsys.readouterr().out
    assert "dropped 1 also in validation, 1 also in test; 1 repeat" in out
    cfg.data.drop_train_repeats = True
    assert {r.id for r in train_and_held_out(cfg).train} == ids - {"train_again0"}
    cfg.data.max_train_examples = 5
    sub = train_and_held_out(cfg).train
    assert len(sub) == 5 and [r.id for r in sub] != [f"train_{i}" for i in range(5)]  # a seeded sample, not the head
    cfg.data.val_size = 11
    with pytest.raises(ConvsumError, match="validation split has only 10"):
        train_and_held_out(cfg)


def test_run_json_records_splits_and_dropped_overlaps(tiny_cfg, tmp_path):
    import json

    from convsum import train

    tiny_cfg.data.source = str(_split_folder(tmp_path))
    tiny_cfg.train.max_steps = 1
    train.main(tiny_cfg)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["train_split"], run["held_out_from"], run["held_out"], run["train_examples"]) == \
        ("train", "validation", 4, 31)
    assert run["data"]["dropped_overlap"] == {"validation": 1, "test": 1} and run["data"]["train_rows"] == 33
