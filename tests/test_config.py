from pathlib import Path

import pytest

from convsum.config import Config, load_config
from convsum.errors import ConvsumError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"gemma3-270m.yaml", "llama2-7b-qlora.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("convsum " in first or "accelerate " in first or "torchrun " in first), first
    if "accelerate" in path.parts:  # accelerate configs are validated in test_distributed
        return
    if "sweeps" in path.parts:  # a grid: every combination must be a valid config
        from convsum.sweep import expand, load_grid

        assert len(expand(load_config(), load_grid(path))) >= 2
        return
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_qlora_preset_mirrors_the_lab():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "llama2-7b-qlora.yaml")
    assert cfg.model.name == "meta-llama/Llama-2-7b-hf"
    assert cfg.model.load_in_4bit and cfg.model.bnb_4bit_compute_dtype == "bfloat16"
    assert cfg.train.bf16 == "true"


def test_precedence_default_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  learning_rate: 1.0e-3\n  batch_size: 2\n")
    assert load_config().train.learning_rate == 2e-4
    cfg = load_config(y, {"train.batch_size": "5"})
    assert cfg.train.learning_rate == 1e-3 and cfg.train.batch_size == 5


@pytest.mark.parametrize("text,needle", [
    ("train:\n  batch_size: [1\n", "c.yaml:"),
    ("train:\n  bogus: 1\n", "unknown field 'train.bogus'"),
    ("nosuch:\n  a: 1\n", "unknown config section 'nosuch'"),
    ("train:\n  batch_size: many\n", "train.batch_size: input should be a valid integer"),
    ("train:\n  bf16: maybe\n", "train.bf16: input should be 'auto', 'true' or 'false'"),
    ("train:\n  lr_scheduler: cosin\n", "train.lr_scheduler: input should be 'cosine'"),
    ("lora:\n  dropout: 1.5\n", "lora.dropout"),
    ("prompt:\n  template: no placeholder\n", "{dialogue}"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, needle):
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ConvsumError) as e:
        load_config(y)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_yaml_and_cli_spellings_are_accepted(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  learning_rate: 1e-4\n  bf16: true\n  report_to: tensorboard\ndata:\n  val_size: null\n")
    cfg = load_config(y, {"lora.target_modules": "q_proj,v_proj", "data.max_train_examples": "none"})
    assert cfg.train.learning_rate == 1e-4 and cfg.train.bf16 == "true" and cfg.train.report_to == ["tensorboard"]
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.data.val_size is None
    assert cfg.data.max_train_examples is None


def test_preset_sits_between_defaults_and_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  epochs: 5\n")
    cfg = load_config(y, {"train.learning_rate": "1e-3"}, preset={"train.epochs": 3, "train.learning_rate": 4e-4,
                                                                   "lora.r": 4})
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.lora.r) == (5.0, 1e-3, 4)


def test_cli_flag_type_error_names_the_flag(capsys):
    with pytest.raises(ConvsumError, match="--set train.max_steps"):
        load_config(None, {"train.max_steps": "ten"})
    from convsum import cli

    assert cli.main(["summarize", "--base", "--engine", "vllm"]) == 2
    assert "--engine (generate.engine): input should be 'transformers' or 'llamacpp'" in capsys.readouterr().err
    assert cli.main(["merge", "r", "--output", "o", "--dtype", "float8"]) == 2
    err = capsys.readouterr().err
    assert "--dtype (merge.dtype)" in err and "float8" in err and err.count("\n") == 1


def test_missing_local_looking_model_folder_fails_fast_without_the_hub(tmp_path, monkeypatch):
    from convsum.config import ModelConfig
    from convsum.modeling import resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConvsumError, match=r"runs/missing: model folder not found \(./runs exists"):
        resolve(ModelConfig(name="runs/missing"))
    assert resolve(ModelConfig(name="google/gemma-3-270m")) == ("google/gemma-3-270m", None)  # still a Hub id
    (tmp_path / "runs" / "missing").mkdir()
    assert resolve(ModelConfig(name="runs/missing"))[0] == "runs/missing"
