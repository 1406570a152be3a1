"""The run-folder contract (rundir.RunDir) and the held-out carve (data.split_held_out)."""

import json

import pytest

from convsum import cli
from convsum.data import split_held_out
from convsum.errors import ConvsumError
from convsum.rundir import HELD_OUT, RunDir


def _eval(run: RunDir, split, limit=None, base=False, n=1):
    e = run.eval_dir(split, limit, base)
    e.path.mkdir(parents=True, exist_ok=True)
    e.metrics.write_text(json.dumps({"n": n}))
    e.predictions.write_text(json.dumps({"fname": "a", "prediction": "p"}) + "\n")
    return e


def test_eval_folders_are_named_and_found_one_way(tmp_path):
    run = RunDir(tmp_path)
    assert run.eval_dir("test").path.name == "eval-test"
    assert run.eval_dir("test", 100, base=True).path.name == "eval-test-first100-base"
    assert run.eval_dir(HELD_OUT).path.name == "eval-heldout"
    assert run.find_eval() == (None, None)
    _eval(run, "test", 20)
    _eval(run, "test", 100)
    _eval(run, "test", 100, base=True)
    (tmp_path / "eval-test").mkdir()  # started, never finished: no metrics
    tuned, base = run.find_eval()
    assert (tuned.limit, base.limit, base.base) == (100, 100, True)  # the largest finished slice, with its base
    _eval(run, "test")
    tuned, base = run.find_eval()
    assert tuned.limit is None and base is None  # the whole split wins; its base was not evaluated
    _eval(run, HELD_OUT)
    found = {(e.split, e.limit, e.base) for e in run.find_evals()}
    assert found == {("test", 20, False), ("test", 100, False), ("test", 100, True), ("test", None, False),
                     (HELD_OUT, None, False)}
    assert RunDir(tmp_path / "other").find_eval(("test", HELD_OUT)) == (None, None)
    assert run.find_eval(("validation", HELD_OUT))[0].split == HELD_OUT
    assert run.eval_dir("test", 20).read_predictions() == [{"fname": "a", "prediction": "p"}]


def test_split_held_out_is_seeded_disjoint_and_complete():
    records = list(range(100))
    train, held = split_held_out(records, 10, seed=1)
    assert len(held) == 10 and sorted(train + held) == records
    assert split_held_out(records, 10, seed=1) == (train, held)
    assert split_held_out(records, 10, seed=2)[1] != held
    assert split_held_out(records, 20, seed=1)[1][:10] == held  # a larger slice extends the smaller one


def test_held_out_that_does_not_fit_is_an_error_and_a_default_that_shrinks_says_so(capsys):
    with pytest.raises(ConvsumError, match=r"data.val_size=5: .* has 1 examples, .* leaves 0, fewer than one batch"):
        split_held_out([0], 5, seed=0)
    with pytest.raises(ConvsumError, match="fewer than one batch \\(4\\)"):
        split_held_out(list(range(10)), 7, seed=0, min_train=4)
    train, held = split_held_out(list(range(50)), None, seed=0)
    assert len(held) == 5 and "holding out 5 of 50 examples" in capsys.readouterr().out
    train, held = split_held_out(list(range(500)), None, seed=0)
    assert len(held) == 40 and capsys.readouterr().out == ""


def test_train_with_too_large_val_size_exits_2_with_one_line(tiny_cfg, tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"fname": "a", "dialogue": "#Person1#: Hi.", "summary": "They greet."}) + "\n")
    code = cli.main(["train", "--model", tiny_cfg.model.name, "--data", str(one), "--output", str(tmp_path / "r"),
                     "--set", "data.val_size=5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "data.val_size=5" in err
    assert not (tmp_path / "r").exists()  # nothing half-written
