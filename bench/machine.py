"""The machine line every benchmark prints: speed figures only compare within one machine.

    python bench/machine.py
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch

ISA = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # what decides CPU matmul speed in fp32 / bf16


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    reps, t = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if time.perf_counter() - t > seconds or reps >= 20:
            break
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _cpu() -> tuple[str, list[str]]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", text)
    flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split()) if "flags" in text else set()
    return (model.group(1).strip() if model else platform.processor() or "unknown CPU"), [f for f in ISA if f in flags]


def describe(ceilings: bool = True) -> dict:
    cpu, isa = _cpu()
    info = {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "onednn": _onednn(), "gpu": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None}
    if ceilings:
        info["fp32_gflops"] = round(matmul_gflops(torch.float32))
        # Without native bf16 a bf16 matmul is emulated and very slow: measure a small one only.
        info["bf16_gflops"] = round(matmul_gflops(torch.bfloat16, n=2048 if "avx512_bf16" in isa or "amx_bf16" in isa
                                                  else 256), 1)
    return info


def _onednn() -> str:
    config = torch.__config__.show()
    m = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", config)
    return m.group(1) if m else "n/a"


def line(info: dict) -> str:
    isa = ", ".join(info["isa"]) or "no AVX2"
    ceil = f"; matmul ceiling fp32 {info['fp32_gflops']} / bf16 {info['bf16_gflops']} GFLOP/s" if "fp32_gflops" in info else ""
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ""
    return (f"machine: {info['cpu']} ({isa}), {info['cores']} cores, {info['threads']} threads; torch {info['torch']}, "
            f"oneDNN {info['onednn']}{gpu}{ceil}")


if __name__ == "__main__":
    print(line(describe()))
