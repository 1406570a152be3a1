"""Average the weights of full fine-tuned runs of one base model (a uniform model soup, Wortsman et al. 2022).

    python bench/soup.py runs/soup-42-43 runs/cpu-full runs/cpu-full-seed43
    convsum evaluate runs/soup-42-43 --split validation

An experiment aid, not a stage: the soup folder takes the first run's config.yaml, run.json and model files
other than the weights, so `convsum evaluate` reads it like that run.
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def weights(run: Path) -> dict:
    path = run / "model" / "model.safetensors"
    if not path.is_file():
        sys.exit(f"soup: {path}: not found (only full fine-tuned runs, which hold model/, can be averaged)")
    return load_file(str(path))


def main(out: Path, runs: list[Path]) -> None:
    total, first = None, None
    for run in runs:
        sd = weights(run)
        if total is None:
            first, total = sd, {k: v.to(torch.float64) for k, v in sd.items()}
        elif sd.keys() != total.keys() or any(sd[k].shape != total[k].shape for k in sd):
            sys.exit(f"soup: {run}: its weights do not match {runs[0]}'s (another base model?)")
        else:
            for k, v in sd.items():
                total[k] += v
    (out / "model").mkdir(parents=True, exist_ok=True)
    for f in (runs[0] / "model").iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, out / "model" / f.name)
    for name in ("config.yaml", "run.json"):
        shutil.copy(runs[0] / name, out / name)
    soup = {k: (v / len(runs)).to(first[k].dtype).contiguous() for k, v in total.items()}
    tmp = out / "model" / "model.safetensors.tmp"
    save_file(soup, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model" / "model.safetensors")
    print(f"soup of {len(runs)} runs ({', '.join(map(str, runs))}) -> {out}: {len(soup)} tensors")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    if len(args.runs) < 2:
        sys.exit("soup: give at least two runs to average")
    main(args.out, args.runs)
