"""bench/soup.py: the uniform weight average used for the seed soup in bench/RESULTS.md."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SOUP = Path(__file__).resolve().parents[1] / "bench" / "soup.py"


def fake_run(folder: Path, weights: dict, tag: str) -> Path:
    (folder / "model").mkdir(parents=True)
    save_file(weights, str(folder / "model" / "model.safetensors"))
    (folder / "model" / "config.json").write_text(tag)
    (folder / "config.yaml").write_text(f"tag: {tag}\n")
    (folder / "run.json").write_text("{}")
    return folder


def load_soup():
    spec = importlib.util.spec_from_file_location("soup", SOUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soup_is_the_mean_of_the_runs_and_reads_like_the_first(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    b = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    c = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)}
    runs = [fake_run(tmp_path / n, w, n) for n, w in (("a", a), ("b", b), ("c", c))]
    load_soup().main(tmp_path / "soup", runs)
    soup = load_file(str(tmp_path / "soup" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(soup[k], (a[k] + b[k] + c[k]) / 3)
    assert (tmp_path / "soup" / "config.yaml").read_text() == "tag: a\n"
    assert (tmp_path / "soup" / "model" / "config.json").read_text() == "a"
    assert not list((tmp_path / "soup" / "model").glob("*.tmp"))


@pytest.mark.parametrize("second", ["mismatch", "missing"])
def test_soup_refuses_runs_it_cannot_average_in_one_line(tmp_path, second):
    first = fake_run(tmp_path / "a", {"w": torch.zeros(2, 2)}, "a")
    other = tmp_path / "b"
    if second == "mismatch":
        fake_run(other, {"w": torch.zeros(3, 2)}, "b")
    else:
        other.mkdir()
    out = subprocess.run([sys.executable, str(SOUP), str(tmp_path / "soup"), str(first), str(other)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(other) in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "soup" / "model" / "model.safetensors").exists()
