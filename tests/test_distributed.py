"""Multi-process training and sharded evaluation on the standard engines (torchrun + gloo on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ACCEL = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCEL, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file configs/accelerate/" + path.name)
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.distributed_type is not None
    if "deepspeed" in path.name:
        assert cfg.deepspeed_config["zero_stage"] in (2, 3)
    if "fsdp" in path.name:
        assert cfg.fsdp_config["fsdp_version"] == 2


def _torchrun(n: int, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    import socket

    with socket.socket() as sock:  # torchrun's static rendezvous needs a concrete free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={port}",
           "-m", "convsum.cli", *args] if n > 1 else [sys.executable, "-m", "convsum.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_effective_batch(tiny_model_dir, data_dir, tmp_path):
    common = ["--model", str(tiny_model_dir), "--data", str(data_dir), "--max-steps", "4",
              "--set", "lora.dropout=0", "--set", "train.group_by_length=false", "--set", "train.bf16=false",
              "--set", "data.max_length=128", "--set", "train.save_steps=2", "--set", "train.learning_rate=3e-3",
              "--set", "lora.r=4", "--set", "data.val_size=4", "--set", "train.grad_accum=1"]
    _torchrun(1, ["train", *common, "--output", str(tmp_path / "one"), "--set", "train.batch_size=4"], tmp_path)
    _torchrun(2, ["train", *common, "--output", str(tmp_path / "two"), "--set", "train.batch_size=2"], tmp_path)
    one, two = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in ("one", "two"))
    for k in one:  # stated tolerance: 1e-5 absolute (gloo all-reduce sums in a different order)
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["effective_batch"] == 4 and run["num_processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["steps"] == 4

    # Sharded evaluation writes exactly what one process writes.
    ev = ["evaluate", str(tmp_path / "one"), "--data", str(data_dir), "--split", "test", "--max-new-tokens", "8"]
    _torchrun(1, [*ev, "--output", str(tmp_path / "ev1")], tmp_path)
    _torchrun(2, [*ev, "--output", str(tmp_path / "ev2")], tmp_path)
    p1 = [json.loads(x) for x in (tmp_path / "ev1" / "predictions.jsonl").read_text().splitlines()]
    p2 = [json.loads(x) for x in (tmp_path / "ev2" / "predictions.jsonl").read_text().splitlines()]
    assert p1 == p2 and len(p1) == 6
