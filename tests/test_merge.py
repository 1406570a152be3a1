import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convsum import checks, merge, train
from convsum.config import load_config
from convsum.errors import ConvsumError
from helpers import tiny_overrides, write_data_dir


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """One trained run for the module; every test merges it into its own new folder."""
    root = tmp_path_factory.mktemp("merge")
    cfg = load_config(None, {**tiny_overrides(tiny_model_dir, write_data_dir(root / "data"), root / "run"),
                             "train.max_steps": 4, "train.save_steps": 100,
                             "train.learning_rate": 2e-2})  # far from zero, so the merge matters
    train.main(cfg)
    return cfg.train.output_dir


def test_merge_matches_base_plus_adapter_and_loads_without_peft(trained_run, tmp_path):
    out = tmp_path / "merged"
    result = merge.main(trained_run, str(out))
    assert result["max_abs_logit_diff"] <= 1e-4 and result["greedy_identical"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "convsum.json", "README.md"):
        assert (out / name).is_file(), name
    umask = os.umask(0)
    os.umask(umask)
    for f in list(out.iterdir()) + list((Path(trained_run) / "adapter").iterdir()):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f  # no 0600 leftovers from temp-file writers
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] is not None and gen["pad_token_id"] != gen["eos_token_id"]
    info = json.loads((out / "convsum.json").read_text())
    assert info["kind"] == "merged" and "{dialogue}" in info["prompt_template"]
    # Plain transformers, with peft made unimportable, loads it and reproduces base+adapter logits.
    code = f"""
import sys; sys.modules['peft'] = None
import torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r})
torch.save(m(torch.tensor([[2, 5, 9, 14, 20]])).logits, {str(tmp_path / 'l.pt')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from convsum.config import load_config

    cfg = load_config(f"{trained_run}/config.yaml")
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.model.name), f"{trained_run}/adapter")
    with torch.no_grad():
        expected = ref(torch.tensor([[2, 5, 9, 14, 20]])).logits
    assert (torch.load(tmp_path / "l.pt") - expected).abs().max().item() <= 1e-4


def test_merged_folder_works_as_a_model_for_summarize_and_evaluate(trained_run, tmp_path, tiny_cfg, capsys):
    from convsum.generate import load_summarizer

    out = tmp_path / "merged"
    merge.main(trained_run, str(out))
    d = ["#Person1#: Hello, I am Tom. I would like a ticket.\n#Person2#: Sure."]
    assert load_summarizer(str(out), tiny_cfg)(d) == load_summarizer(trained_run, tiny_cfg)(d)


def test_merge_dtype_option(trained_run, tmp_path):
    from safetensors import safe_open

    merge.main(trained_run, str(tmp_path / "bf16"), dtype="bfloat16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_failed_check_writes_nothing(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "LOGIT_TOLERANCE", -1.0)
    with pytest.raises(ConvsumError, match="merge check failed"):
        merge.main(trained_run, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_merge_errors(tmp_path, trained_run):
    with pytest.raises(ConvsumError, match="not a convsum run"):
        merge.main(str(tmp_path), str(tmp_path / "m"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConvsumError, match="already exists"):
        merge.main(trained_run, str(tmp_path / "exists"))
