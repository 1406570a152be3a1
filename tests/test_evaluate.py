import io
import json
from pathlib import Path

import pytest

from convsum import cli, train
from convsum.errors import ConvsumError
from convsum.evaluate import read_predictions
from convsum.data import load_split
from convsum.config import DataConfig, load_config
from helpers import tiny_overrides, write_data_dir


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """One trained run for the module (tests only read it, or write evaluations into it)."""
    root = tmp_path_factory.mktemp("evaluate")
    cfg = load_config(None, {**tiny_overrides(tiny_model_dir, write_data_dir(root / "data"), root / "run"),
                             "train.max_steps": 2})
    train.main(cfg)
    return cfg.train.output_dir


def test_evaluate_writes_predictions_and_metrics_with_base_side_by_side(run, data_dir, capsys):
    assert cli.main(["evaluate", run, "--compare-base", "--data", str(data_dir), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "base " in out and "fine-tuned " in out and "mean of 3" in out
    from pathlib import Path

    for d in ("eval-test", "eval-test-base"):
        preds = [json.loads(x) for x in (Path(run) / d / "predictions.jsonl").read_text().splitlines()]
        assert [p["fname"] for p in preds] == [f"ex_{i}" for i in range(100, 106)]
        assert set(preds[0]) == {"fname", "dialogue", "prediction", "cut_off", "references"}
        assert set(preds[0]["references"]) == {"summary1", "summary2", "summary3"}
        m = json.loads((Path(run) / d / "metrics.json").read_text())
        assert m["n"] == 6 and set(m["per_reference"]) == {"summary1", "summary2", "summary3"}
        assert {"mean", "best", "gen_length_words", "time_s", "prompt_template"} <= set(m)
        assert m["cut_off_summaries"] == sum(p["cut_off"] for p in preds)


def test_evaluate_limit_and_output(run, data_dir, tmp_path):
    assert cli.main(["evaluate", run, "--data", str(data_dir), "--limit", "2", "--output", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == 2


def test_score_json_is_exactly_the_documented_shape(data_dir, tmp_path, capsys):
    recs = load_split(DataConfig(source=str(data_dir)), "test")
    txt = tmp_path / "p.txt"
    txt.write_text("".join(r.references[0] + "\n" for r in recs))
    assert cli.main(["score", str(txt), "--data", str(data_dir), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["n", "per_reference", "mean", "best"] and out["n"] == 6
    assert list(out["per_reference"]) == ["summary1", "summary2", "summary3"]
    assert list(out["mean"]) == ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    assert out["per_reference"]["summary1"]["rouge1"] == 100.0 and out["best"]["rougeL"] == 100.0
    assert out["per_reference"]["summary2"]["rouge1"] < 100.0

    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps({"fname": r.id, "prediction": r.references[0]}) + "\n" for r in reversed(recs)))
    assert cli.main(["score", str(jl), "--data", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == out  # order in the file does not matter: matched by fname


@pytest.mark.parametrize("content,suffix,needle", [
    ("a\nb\n", ".txt", "2 predictions for 6 dialogues"),
    ('{"fname": "ex_100", "prediction": "x"}\n', ".jsonl", "1 predictions for 6 dialogues"),
    ('{"fname": "nope", "prediction": "x"}\n', ".jsonl", "'nope' is not in the split"),
    ('{"fname": "ex_100"}\n', ".jsonl", "field 'prediction' missing"),
    ('{"fname": "ex_100", "prediction": "x"}\n{"fname": "ex_100", "prediction": "y"}\n', ".jsonl", "duplicate"),
    ("{bad\n", ".jsonl", ":1: invalid JSON"),
])
def test_score_errors(data_dir, tmp_path, content, suffix, needle):
    p = tmp_path / f"p{suffix}"
    p.write_text(content)
    with pytest.raises(ConvsumError, match=needle):
        read_predictions(p, load_split(DataConfig(source=str(data_dir)), "test"))


def test_summarize_from_stdin_and_jsonl(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("#Person1#: Hello, I am Tom.\n#Person2#: Hi Tom."))
    assert cli.main(["summarize", run, "-", "--json"]) == 0
    assert len([json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]) == 1
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"dialogue": "#Person1#: a"}) + "\n" + json.dumps({"dialogue": "#Person1#: b"}) + "\n")
    assert cli.main(["summarize", run, str(f), "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.strip("\n").split("\n")) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    assert cli.main(["summarize", run, str(bad)]) == 2
    assert "bad.jsonl:1: field 'dialogue'" in capsys.readouterr().err


def test_summarize_base_and_unfinished_run_errors(tiny_cfg, capsys):
    from pathlib import Path

    run = Path(tiny_cfg.train.output_dir)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": tiny_cfg.model.name, "prompt_template": "{dialogue}"}))
    from convsum.config import save_config

    save_config(tiny_cfg, run / "config.yaml")
    f = run / "d.txt"
    f.write_text("#Person1#: hi")
    assert cli.main(["summarize", str(run), str(f)]) == 2
    assert "no trained weights yet" in capsys.readouterr().err
    assert cli.main(["summarize", str(run), str(f), "--base", "--max-new-tokens", "3"]) == 0


def test_evaluate_the_runs_own_held_out_slice(run, tiny_cfg, capsys):
    from convsum.data import train_and_held_out
    from convsum.rundir import HELD_OUT, RunDir

    assert cli.main(["evaluate", run, "--split", "held-out"]) == 0
    e = RunDir(run).eval_dir(HELD_OUT)
    held = train_and_held_out(tiny_cfg)[2]
    assert [p["fname"] for p in e.read_predictions()] == [r.id for r in held] and e.read_metrics()["n"] == 4


def test_score_takes_the_held_out_slice_of_a_runs_config(run, tiny_cfg, tmp_path, capsys):
    from convsum.data import train_and_held_out

    held = train_and_held_out(tiny_cfg)[2]
    pred = tmp_path / "p.txt"
    pred.write_text("".join(r.references[0] + "\n" for r in held))
    assert cli.main(["score", str(pred), "--config", str(Path(run) / "config.yaml"), "--split", "held-out", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["n"] == len(held) and out["mean"]["rouge1"] == 100.0


def test_score_against_prints_a_paired_bootstrap(data_dir, tmp_path, capsys):
    recs = load_split(DataConfig(source=str(data_dir)), "test")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(r.references[0] + "\n" for r in recs))
    b.write_text("".join("nothing\n" for _ in recs))
    assert cli.main(["score", str(a), "--against", str(b), "--data", str(data_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rouge1"]["a_wins"] == 1.0 and out["rouge1"]["mean_diff"] > 50 and out["rouge1"]["n"] == 6


def test_summaries_that_hit_the_token_cap_are_counted_as_cut_off(tiny_cfg):
    from convsum.generate import Summarizer
    from convsum.modeling import load_tokenizer

    class Engine:  # the engine contract: prompt ids in, summary ids out (stop token already removed)
        def decode_prompts(self, prompts, gen, tokenizer, stop_ids, repeats=1, keys=None):
            return [[5] * (gen.max_new_tokens if len(p) % 2 else 3) for p in prompts]

        def close(self):
            pass

    tok = load_tokenizer(tiny_cfg.model)
    s = Summarizer(Engine(), tok, tiny_cfg.prompt.template, tiny_cfg.generate, "x")
    dialogues = ["a b", "a b c d e", "hello there", "x"]
    parity = [len(s.encode(d)) % 2 == 1 for d in dialogues]
    s.truncated = 0
    s(dialogues)
    assert s.cut_off_flags == parity and s.cut_off == sum(parity)
    s(dialogues[:1])
    assert s.cut_off == sum(parity) + parity[0]  # the count adds up over calls; the flags are the last call's

