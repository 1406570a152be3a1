"""GGUF export (llama.cpp's own converter) and the llama.cpp engine, on tiny Llama and Gemma-3 models
with SentencePiece tokenizers trained in the test."""

import json
from pathlib import Path

import pytest

from convsum import cli, export, train
from convsum.config import load_config
from convsum.rundir import RunDir

pytest.importorskip("xllamacpp", reason="the [gguf] extra is not installed (pip install -e '.[gguf]')")
gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module", params=["llama", "gemma"])
def spm_run(request, tmp_path_factory):
    from helpers import build_spm_model, make_records, write_jsonl

    root = tmp_path_factory.mktemp(f"export-{request.param}")
    model = build_spm_model(root / "model", request.param)
    (root / "data").mkdir()
    write_jsonl(root / "data" / "dialogsum.dev.jsonl", make_records(24))
    write_jsonl(root / "data" / "dialogsum.test.jsonl", make_records(6, offset=200))
    cfg = load_config(None, {
        "model.name": str(model), "data.source": str(root / "data"), "data.val_size": 4, "data.max_length": 256,
        "train.output_dir": str(root / "run"), "train.batch_size": 4, "train.grad_accum": 1, "train.max_steps": 2,
        "train.save_steps": 2, "train.learning_rate": 1e-2, "train.bf16": "false", "lora.r": 4, "lora.alpha": 8,
        "lora.dropout": 0.0, "generate.max_new_tokens": 16, "generate.batch_size": 4, "generate.bf16": "false"})
    train.main(cfg)
    return request.param, root / "run", cfg


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {"arch": reader.fields["general.architecture"].contents(),
            "file_type": reader.fields["general.file_type"].contents(), "tensors": len(reader.tensors),
            "chat_template": reader.fields["tokenizer.chat_template"].contents()}


def test_f32_export_reads_back_and_generates_what_transformers_generates(spm_run, tmp_path, capsys):
    from convsum.generate import load_summarizer
    from convsum.checks import CHECK_DIALOGUES

    arch, run, cfg = spm_run
    result = export.main(str(run), outtype="f32", output=str(tmp_path / "g"))
    assert result["check"]["fixed_identical"] == result["check"]["fixed_dialogues"] == 3  # the export's own gate
    folder = tmp_path / "g"
    assert {"Modelfile", "README.md", "convsum.json", "config.yaml", "model-f32.gguf"} <= {p.name for p in folder.iterdir()}
    f = _fields(folder / "model-f32.gguf")
    assert f["arch"] == {"llama": "llama", "gemma": "gemma3"}[arch] and f["file_type"] == 0  # ALL_F32
    n_weights = sum(1 for _ in __import__("safetensors").safe_open(str(cfg.model.name) + "/model.safetensors", "pt").keys())
    assert f["tensors"] >= n_weights - 1  # every weight (a tied head is written once)
    # our prompt travels inside the GGUF as its chat template, so llama.cpp chat endpoints use it
    from jinja2 import Template

    rendered = Template(f["chat_template"]).render(messages=[{"role": "user", "content": "DIALOGUE"}])
    assert rendered == cfg.prompt.template.format(dialogue="DIALOGUE")
    info = json.loads((folder / "convsum.json").read_text())
    assert info["prompt_template"] == cfg.prompt.template and info["kind"] == "gguf"
    assert 'FROM ./model-f32.gguf' in (folder / "Modelfile").read_text()
    # the engine, as a user calls it: a .gguf path is a model; same greedy summaries as transformers
    gcfg = load_config(None, {"generate.max_new_tokens": 16, "generate.bf16": "false"})
    ours = load_summarizer(str(folder / "model-f32.gguf"), gcfg)
    reference = load_summarizer(str(run), cfg)
    assert ours(CHECK_DIALOGUES) == reference(CHECK_DIALOGUES)
    assert ours.info["engine"] == "llamacpp"
    import urllib.request  # llama.cpp itself renders the embedded template into exactly our prompt

    req = urllib.request.Request(ours.engine.server.listening_address + "/apply-template", data=json.dumps(
        {"messages": [{"role": "user", "content": "DIALOGUE"}]}).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {ours.engine.key}"})
    assert json.load(urllib.request.urlopen(req))["prompt"] == cfg.prompt.template.format(dialogue="DIALOGUE")
    ours.close()


def test_adapter_only_export_loads_as_a_lora(spm_run, tmp_path):
    arch, run, cfg = spm_run
    result = export.main(str(run), outtype="f32", output=str(tmp_path / "a"), adapter_only=True)
    assert result["files"] == {"model": "base-f32.gguf", "adapter": "adapter-f32.gguf"}
    assert result["check"]["fixed_identical"] == 3  # base GGUF + LoRA GGUF == transformers base + adapter
    reader = gguf.GGUFReader(str(tmp_path / "a" / "adapter-f32.gguf"))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"


def test_q8_0_export_reports_held_out_agreement_and_evaluate_runs_on_llamacpp(spm_run, tmp_path, capsys):
    arch, run, cfg = spm_run
    if arch == "gemma":
        pytest.skip("one architecture is enough for the q8_0 path")
    result = export.main(str(run), outtype="q8_0")
    check = result["check"]
    assert check["held_out"] == 4 and abs(check["rougeL_diff"]) <= 0.5 or pytest.fail(f"q8_0 drifted: {check}")
    # The agreement the check reports is the agreement one gets by running both engines oneself.
    from dataclasses import replace

    from convsum.data import train_and_held_out
    from convsum.inference import load_gguf_summarizer, load_summarizer

    greedy = replace(cfg, generate=replace(cfg.generate, strategy="greedy", num_beams=1, batch_size=8))
    held = [r.dialogue for r in train_and_held_out(cfg)[2][:4]]
    engine = load_gguf_summarizer(RunDir(run).path / "gguf", greedy)
    try:
        theirs = engine(held)
    finally:
        engine.close()
    ours = load_summarizer(str(run), greedy)(held)
    assert check["held_out_identical"] == sum(a == b for a, b in zip(theirs, ours))
    assert _fields(RunDir(run).path / "gguf" / "model-q8_0.gguf")["file_type"] == 7  # MOSTLY_Q8_0
    assert f"held-out {check['held_out_identical']}/4 identical" in capsys.readouterr().out
    data = cfg.data.source
    assert cli.main(["evaluate", str(run), "--engine", "llamacpp", "--data", data, "--split", "test",
                     "--limit", "3", "--output", str(tmp_path / "e")]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 3 and m["engine"] == "llamacpp"


def test_export_errors_are_one_line(spm_run, tmp_path, capsys):
    arch, run, cfg = spm_run
    assert cli.main(["export", str(run), "--outtype", "q4_k_m"]) == 2
    err = capsys.readouterr().err
    assert "--outtype (export.outtype)" in err and "'q4_k_m'" in err
    assert cli.main(["export", str(tmp_path), "--format", "gguf"]) == 2
    assert "not a convsum run folder" in capsys.readouterr().err
    (tmp_path / "d.txt").write_text("#Person1#: Hi.")
    assert cli.main(["summarize", str(tmp_path / "missing.gguf"), str(tmp_path / "d.txt"), "--engine", "llamacpp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "convsum export" in err


def test_gguf_folder_is_pushed_with_a_card_and_served(spm_run, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from convsum.inference import load_gguf_summarizer
    from convsum.serve import create_app

    arch, run, cfg = spm_run
    if arch == "gemma":
        pytest.skip("one architecture is enough here")
    export.main(str(run), outtype="f32", output=str(tmp_path / "g"), check=False)
    assert cli.main(["push", str(tmp_path / "g"), "--repo-id", "me/x-gguf", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model-f32.gguf" in out and "library_name: gguf" in out and "ollama create" in out
    summarizer = load_gguf_summarizer(tmp_path / "g", cfg)
    with TestClient(create_app({"fine-tuned": summarizer}, cfg)) as client:
        r = client.post("/v1/summarize", json={"dialogues": ["#Person1#: Hello, I am Tom.", "#Person1#: Hi, Anna."]})
        assert r.status_code == 200 and len(r.json()["summaries"]) == 2
        assert client.post("/v1/summarize", json={"dialogue": "x", "strategy": "beam", "num_beams": 2}).status_code == 422
    summarizer.close()


def test_export_folder_carries_the_runs_decoding_settings(spm_run, tmp_path, capsys):
    """`convsum summarize EXPORT` needs no flags: the run's settings (here a chosen eos_bias) travel along."""
    from convsum.config import save_config

    arch, run, cfg = spm_run
    if arch == "gemma":
        pytest.skip("one architecture is enough here")
    cfg.generate.eos_bias = -1e9  # never stop: every summary runs to max_new_tokens
    save_config(cfg, RunDir(run).config)
    try:
        export.main(str(run), outtype="f32", output=str(tmp_path / "g"), check=False)
        (tmp_path / "d.txt").write_text("#Person1#: Hello, I am Tom.")
        capsys.readouterr()
        assert cli.main(["summarize", str(tmp_path / "g"), str(tmp_path / "d.txt"), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
        from transformers import AutoTokenizer

        assert len(AutoTokenizer.from_pretrained(str(tmp_path / "g"))(summary, add_special_tokens=False)[
            "input_ids"]) >= 14  # ~16 tokens; decoding may merge a few
    finally:
        cfg.generate.eos_bias = 0.0
        save_config(cfg, RunDir(run).config)
