"""Load test for `convsum serve`: N concurrent clients on loopback, batching on vs off.

    python bench/serve_load.py runs/gemma3-270m-lora --clients 50 --seconds 60

For each mode the script starts `convsum serve MODEL` in a subprocess (batching: serve.max_batch=16;
off: serve.max_batch=1), waits for /health, then runs `--clients` concurrent clients that each post
one DialogSum test dialogue at a time for `--seconds`, and reports throughput (dialogues/s),
p50/p95 latency and the error count (which must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dialogsum"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, dialogues: list[str], clients: int, seconds: float, max_new_tokens: int) -> dict:
    latencies, errors, done = [], 0, 0
    stop = time.perf_counter() + seconds

    async def client(i: int, c: httpx.AsyncClient):
        nonlocal errors, done
        k = i
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/summarize", json={"dialogue": dialogues[k % len(dialogues)],
                                                              "max_new_tokens": max_new_tokens})
                if r.status_code == 200 and r.json()["summaries"][0] is not None:
                    latencies.append(time.perf_counter() - t)
                    done += 1
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            k += clients

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(i, c) for i in range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"completed": done, "errors": errors, "wall_s": wall, "throughput": done / wall,
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None}


def serve(model: str, port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "convsum.cli", "serve", model, "--port", str(port),
           "--set", f"serve.max_batch={max_batch}", "--set", "serve.max_queue=1000", "--set", "serve.batch_window_ms=20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"server failed to start:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    sys.exit("server did not start in 5 minutes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="bundled:gemma3-270m", help="run folder, merged folder or model id")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--modes", default="batching,no-batching")
    args = ap.parse_args()
    if (args.data / "dialogsum.test.jsonl").is_file():
        dialogues = [json.loads(x)["dialogue"] for x in (args.data / "dialogsum.test.jsonl").read_text().splitlines()[:200]]
    else:
        from convsum.demo import sample_path

        dialogues = [json.loads(x)["dialogue"] for x in sample_path().read_text().splitlines()]
    results = {}
    for mode in args.modes.split(","):
        port = free_port()
        proc = serve(args.model, port, 16 if mode == "batching" else 1)
        try:
            results[mode] = asyncio.run(load(f"http://127.0.0.1:{port}", dialogues, args.clients, args.seconds,
                                             args.max_new_tokens))
            results[mode]["model_calls"] = httpx.get(f"http://127.0.0.1:{port}/health").json()["model_calls"]
        finally:
            proc.terminate()
            proc.wait(60)
        r = results[mode]
        print(f"  {mode}: {r['completed']} done, {r['errors']} errors", flush=True)
    print(f"\n{args.model}: {args.clients} concurrent clients for {args.seconds:.0f} s on loopback, "
          f"max_new_tokens {args.max_new_tokens}, {os.cpu_count()} CPU cores")
    print(f"{'mode':<14}{'completed':>10}{'errors':>8}{'dialogues/s':>13}{'p50 ms':>9}{'p95 ms':>9}{'model calls':>13}")
    for mode, r in results.items():
        print(f"{mode:<14}{r['completed']:>10}{r['errors']:>8}{r['throughput']:>13.2f}{r['p50_ms'] or 0:>9.0f}"
              f"{r['p95_ms'] or 0:>9.0f}{r['model_calls']:>13}")


if __name__ == "__main__":
    main()
