import json
from pathlib import Path

import pytest

from convsum import cli, report, sweep
from convsum.errors import ConvsumError

ROOT = Path(__file__).resolve().parents[1]


def test_grid_expansion_names_and_types(tiny_cfg, tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("lora.r: [2, 4]\ntrain.learning_rate: [1.0e-3, 3.0e-3]\nlora.target_modules: [attention, all-linear]\n")
    runs = sweep.expand(tiny_cfg, sweep.load_grid(g))
    assert len(runs) == 8 and len({n for n, _, _ in runs}) == 8
    name, combo, cfg = runs[0]
    assert name == "r-2_learning_rate-0.001_target_modules-attention"
    assert cfg.lora.r == 2 and cfg.train.learning_rate == 1e-3 and tiny_cfg.lora.r == 4  # base untouched


@pytest.mark.parametrize("text,needle", [("lora.r: 4\n", "non-empty list"), ("lora.bogus: [1]\n", "unknown field"),
                                         ("lora.r: [a]\n", "lora.r: input should be a valid integer"), ("[]\n", "mapping")])
def test_bad_grid_is_a_clear_error(tiny_cfg, tmp_path, text, needle):
    g = tmp_path / "g.yaml"
    g.write_text(text)
    with pytest.raises(ConvsumError, match=needle):
        sweep.expand(tiny_cfg, sweep.load_grid(g))


def test_sweep_runs_skips_and_resumes_without_reading_test(tiny_cfg, tmp_path, monkeypatch):
    import convsum.data as data

    splits_read = []
    orig = data.load_split

    def spy(cfg, split):
        splits_read.append(data.canonical_split(split))
        return orig(cfg, split)

    monkeypatch.setattr(data, "load_split", spy)
    tiny_cfg.train.max_steps = 2
    tiny_cfg.train.save_steps = 1
    g = tmp_path / "g.yaml"
    g.write_text("lora.r: [2, 4]\n")
    rows = sweep.main(tiny_cfg, str(g), str(tmp_path / "sw"))
    assert len(rows) == 2 and "test" not in splits_read
    assert rows[0]["heldout_rougeL"] >= rows[1]["heldout_rougeL"]
    assert (tmp_path / "sw" / "sweep.md").read_text().startswith("| lora.r |")
    for r in rows:
        assert json.loads((tmp_path / "sw" / r["run"] / "eval-heldout" / "metrics.json").read_text())["n"] == 4

    # Re-run: finished runs are skipped (no training), an interrupted one resumes from its checkpoint.
    import shutil

    from convsum import train

    run = tmp_path / "sw" / "r-4"
    shutil.rmtree(run / "eval-heldout")
    (run / "train_summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "checkpoint-2")
    calls = []
    orig_train = train.main
    monkeypatch.setattr(train, "main", lambda cfg, resume=False: calls.append((cfg.lora.r, resume)) or orig_train(cfg, resume))
    sweep.main(tiny_cfg, str(g), str(tmp_path / "sw"))
    assert calls == [(4, True)]


def _tiny_run_with_eval(tiny_cfg, out: Path, r: int) -> Path:
    from convsum import evaluate, train

    tiny_cfg.train.output_dir = str(out)
    tiny_cfg.lora.r = r
    tiny_cfg.train.select_by = "rougeL"  # evaluations with held-out ROUGE-L: the report's scaling plot
    train.main(tiny_cfg)
    evaluate.main(tiny_cfg, target=str(out), split="test", compare_base=True)
    return out


def test_report_from_two_runs(tiny_cfg, tmp_path):
    a = _tiny_run_with_eval(tiny_cfg, tmp_path / "a", 2)
    b = _tiny_run_with_eval(tiny_cfg, tmp_path / "b", 4)
    assert cli.main(["report", str(a), str(b), "--output", str(tmp_path / "rep" / "report.html")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "best examples by ROUGE-L" in html and "worst examples by ROUGE-L" in html and "base" in html
    assert "mean summary length (words), predicted vs references" in html and "±" in html
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "![curves](report_files/curves.png)" in md
    for name in ("curves", "scaling", "rouge", "lengths"):
        png = (tmp_path / "rep" / "report_files" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        from PIL import Image

        Image.open(tmp_path / "rep" / "report_files" / f"{name}.png").verify()


def test_report_rejects_non_runs(tmp_path):
    with pytest.raises(ConvsumError, match="not a convsum run"):
        report.main([str(tmp_path)])


def test_example_task_trains_end_to_end(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The shipped 'meeting notes -> action items' config, on the tiny model, through every stage."""
    monkeypatch.chdir(ROOT)
    cfgp = "configs/example-action-items.yaml"
    common = ["--config", cfgp, "--model", str(tiny_model_dir)]
    assert cli.main(["data", *common]) == 0
    assert "train" in capsys.readouterr().out
    run = tmp_path / "run"
    assert cli.main(["train", *common, "--output", str(run), "--max-steps", "2", "--set", "train.bf16=false"]) == 0
    assert cli.main(["evaluate", str(run), "--split", "test", "--limit", "4", "--max-new-tokens", "8"]) == 0
    assert json.loads((run / "eval-test-first4" / "metrics.json").read_text())["n"] == 4
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"notes": "Meeting about hiring. Maya will post the ad by Friday."}) + "\n")
    capsys.readouterr()
    assert cli.main(["summarize", str(run), str(notes), "--set", "data.dialogue_field=notes", "--json"]) == 0
    assert "summary" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_report_draws_held_out_rouge_against_dialogues_seen_and_minutes(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"effective_batch": 8, "started": 1000.0, "base_model": "x"}))
    (run / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [
        {"step": 10, "loss": 2.0, "time": 1060.0}, {"step": 25, "eval_rougeL": 30.0, "time": 1300.0},
        {"step": 50, "eval_rougeL": 33.5, "time": 1600.0}]))
    r = report.load_run(run)
    assert report.learning_points(r) == [{"examples": 200, "rougeL": 30.0, "minutes": 5.0},
                                         {"examples": 400, "rougeL": 33.5, "minutes": 10.0}]
    png = report.plot_scaling([r])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
