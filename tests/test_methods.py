"""Training methods beyond plain LoRA: full fine-tuning, held-out ROUGE selection with early stopping."""

import pytest
import torch
from safetensors.torch import load_file

from convsum import cli, train
from convsum.errors import ConvsumError
from convsum.rundir import RunDir


def _weights(run):
    return load_file(str(RunDir(run).model / "model.safetensors"))


def test_full_fine_tuning_resumes_after_a_kill_with_the_same_weights(tiny_cfg, tmp_path, monkeypatch):
    from helpers import kill_then_resume

    tiny_cfg.train.method = "full"
    tiny_cfg.train.learning_rate = 1e-3
    tiny_cfg.train.output_dir = str(tmp_path / "full")
    summary = train.main(tiny_cfg)
    assert summary["method"] == "full" and summary["trainable_parameters"] < summary["total_parameters"]
    full = _weights(tmp_path / "full")

    tiny_cfg.train.output_dir = str(tmp_path / "killed")
    summary = kill_then_resume(tiny_cfg, monkeypatch, at_step=5)
    assert summary["resumed_from"].endswith("checkpoint-3") and not summary["first_run_left_weights"]
    resumed = _weights(tmp_path / "killed")
    assert resumed.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6)
    # the embedding stayed frozen: equal to the base model's
    from convsum.modeling import load_model

    base = load_model(tiny_cfg.model).get_input_embeddings().weight
    emb = next(v for k, v in full.items() if "embed_tokens" in k)
    assert torch.equal(emb, base.detach())


def test_a_full_run_is_used_like_a_merged_model(tiny_cfg, tmp_path, data_dir, capsys):
    tiny_cfg.train.method = "full"
    tiny_cfg.train.max_steps = 2
    train.main(tiny_cfg)
    run = tiny_cfg.train.output_dir
    assert not RunDir(run).adapter.exists() and RunDir(run).has_full_model()
    assert cli.main(["evaluate", run, "--data", str(data_dir), "--split", "test", "--limit", "2"]) == 0
    assert RunDir(run).eval_dir("test", 2).read_metrics()["model"] == "fine-tuned"
    assert cli.main(["merge", run, "--output", str(tmp_path / "m")]) == 2
    assert "nothing to merge" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert cli.main(["push", run, "--repo-id", "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "fully fine-tuned model" in out and "library_name: transformers" in out


def test_select_by_rouge_keeps_the_best_checkpoint_and_stops_early(tiny_cfg, monkeypatch):
    """A scripted held-out ROUGE-L peaks at the 2nd evaluation: the run keeps that step and stops
    after `early_stopping_patience` evaluations without improvement."""
    scores = iter([10.0, 30.0, 20.0, 15.0, 12.0, 11.0])
    monkeypatch.setattr(train, "held_out_scorer", lambda *a, **k: lambda model: {"rougeL": next(scores)})
    tiny_cfg.train.max_steps = 12
    tiny_cfg.train.eval_steps = 2
    tiny_cfg.train.save_steps = 2
    tiny_cfg.train.select_by = "rougeL"
    tiny_cfg.train.early_stopping_patience = 2
    summary = train.main(tiny_cfg)
    assert summary["kept_step"] == 4 and summary["eval_rougeL"] == 30.0
    assert summary["steps"] == 8  # evaluations at 6 and 8 did not improve: stopped
    log = RunDir(tiny_cfg.train.output_dir).read_log()
    assert [r["eval_rougeL"] for r in log if "eval_rougeL" in r] == [10.0, 30.0, 20.0, 15.0]
    assert not any("eval_loss" in r for r in log)  # selecting by ROUGE skips the loss pass (train.eval_loss auto)
    kept = load_file(str(RunDir(tiny_cfg.train.output_dir).adapter_weights))
    best = load_file(str(RunDir(tiny_cfg.train.output_dir).checkpoints / "checkpoint-4" / "adapter_model.safetensors"))
    for k in kept:
        torch.testing.assert_close(kept[k], best[k.replace(".default", "")] if k not in best else best[k])


def test_select_by_rouge_really_generates_on_the_held_out_slice(tiny_cfg, tmp_path):
    tiny_cfg.train.max_steps = 2
    tiny_cfg.train.eval_steps = 2
    tiny_cfg.train.save_steps = 2
    tiny_cfg.train.select_by = "rougeL"
    tiny_cfg.train.eval_loss = "true"
    summary = train.main(tiny_cfg)
    log = [r for r in RunDir(tiny_cfg.train.output_dir).read_log() if "eval_rougeL" in r]
    assert len(log) == 1 and summary["eval_rougeL"] == log[0]["eval_rougeL"] and "eval_loss" in log[0]
    assert log[0]["eval_generate_s"] > 0
    # The in-training score is the score of the kept adapter's greedy summaries of the held-out slice,
    # generated the way `convsum evaluate` does (sdpa, eval mode), not an approximation of it.
    from convsum import evaluate

    res = evaluate.main(tiny_cfg, tiny_cfg.train.output_dir, split="held-out", output=str(tmp_path / "ev"))
    assert res["fine-tuned"]["mean"]["rougeL"] == pytest.approx(log[0]["eval_rougeL"], abs=1e-9)
    assert res["fine-tuned"]["cut_off_summaries"] == log[0]["eval_cut_off"]


def test_frozen_layers_keep_their_weights_and_the_rest_trains(tiny_cfg, tmp_path):
    from convsum.modeling import load_model

    tiny_cfg.train.method, tiny_cfg.train.learning_rate, tiny_cfg.train.freeze_layers = "full", 1e-3, 1
    tiny_cfg.train.output_dir = str(tmp_path / "frozen")
    summary = train.main(tiny_cfg)
    base = {k: v.detach() for k, v in load_model(tiny_cfg.model).state_dict().items()}
    trained = _weights(tmp_path / "frozen")
    layer = {i: [k for k in trained if f"layers.{i}." in k] for i in (0, 1)}
    assert layer[0] and layer[1]
    assert all(torch.equal(trained[k], base[k]) for k in layer[0])  # frozen: exactly the base weights
    assert sum(not torch.equal(trained[k], base[k]) for k in layer[1]) >= 4  # trained: the projections moved
    per_layer = sum(base[k].numel() for k in layer[0])
    tiny_cfg.train.freeze_layers = 0
    all_but_embeddings, total = train.trainable_parameters(train.build_model(tiny_cfg)[0])
    assert summary["trainable_parameters"] == all_but_embeddings - per_layer and summary["total_parameters"] == total


def test_freezing_every_layer_is_an_error(tiny_cfg):
    tiny_cfg.train.method, tiny_cfg.train.freeze_layers = "full", 2
    with pytest.raises(ConvsumError, match="would freeze all 2 decoder layers"):
        train.build_model(tiny_cfg)


@pytest.mark.parametrize("bad,msg", [
    ({"train.select_by": "rougeL", "train.save_steps": 3, "train.eval_steps": 2}, "multiple"),
    ({"train.early_stopping_patience": 2}, "needs train.select_by"),
    ({"train.freeze_layers": -1}, "train.freeze_layers: must be >= 0"),
    ({"train.select_by": "eval_loss", "train.save_steps": 50, "data.val_size": 0}, "needs a held-out slice"),
])
def test_selection_settings_are_checked(bad, msg):
    from convsum.config import load_config

    with pytest.raises(ConvsumError, match=msg):
        load_config(None, bad)


# Each variant once, and each of the two CPU paths once (bf16 true: bf16 frozen weights + LoraDropout).
@pytest.mark.parametrize("variant,bf16", [("use_dora", "true"), ("use_rslora", "false")])
def test_peft_variants_train_and_generate(tiny_cfg, variant, bf16):
    import math

    from peft import PeftModel

    from convsum.inference import Summarizer, load_summarizer
    from convsum.modeling import load_model

    setattr(tiny_cfg.lora, variant, True)
    tiny_cfg.train.bf16 = bf16
    tiny_cfg.lora.dropout = 0.1
    tiny_cfg.train.max_steps = 3
    summary = train.main(tiny_cfg)
    assert math.isfinite(summary["train_loss"])
    adapter = RunDir(tiny_cfg.train.output_dir).adapter
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    # DoRA saves a learned magnitude per output row; plain LoRA and rsLoRA do not.
    assert any("lora_magnitude_vector" in k for k in weights) == (variant == "use_dora")
    peft_model = PeftModel.from_pretrained(load_model(tiny_cfg.model), str(adapter))
    layer = next(m for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict))
    r, alpha = tiny_cfg.lora.r, tiny_cfg.lora.alpha
    assert layer.scaling["default"] == pytest.approx(alpha / math.sqrt(r) if variant == "use_rslora" else alpha / r)
    # load_summarizer folds the adapter into the weights; its summaries are those of the unmerged PEFT model.
    merged = load_summarizer(tiny_cfg.train.output_dir, tiny_cfg)
    unmerged = Summarizer(peft_model, merged.tokenizer, merged.template, merged.gen, "unmerged")
    dialogues = ["#Person1#: Hello, I am Tom.\n#Person2#: Hi Tom.", "#Person1#: I would like a ticket.\n#Person2#: Sure."]
    assert merged(dialogues) == unmerged(dialogues)
