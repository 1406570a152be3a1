"""Serve stage: an HTTP API (FastAPI + uvicorn) with server-side batching, limits, and a page to try it.

    convsum serve runs/r1                      # http://127.0.0.1:8000  (page at /, docs at /docs)
    convsum serve runs/r1 --compare-base       # the page shows base and fine-tuned side by side
    curl -s localhost:8000/v1/summarize -d '{"dialogue": "#Person1#: Hi ..."}' -H 'content-type: application/json'

Concurrent requests are collected for `serve.batch_window_ms` (up to `serve.max_batch` dialogues)
and generated in one model call per (model, decoding settings) group, in a worker thread so the
event loop keeps accepting requests. Each request is validated before it is queued, so one bad
request never fails another.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from convsum.config import Config, ServeConfig
from convsum.errors import ConvsumError
from convsum.rundir import RunDir


@dataclass
class Job:
    prompt: list[int]
    settings: tuple  # (field, value) pairs of the request's decoding settings: jobs with equal ones batch together
    future: asyncio.Future
    model: str = "fine-tuned"


@dataclass
class Batcher:
    """Collects jobs from concurrent requests and runs them through the model in batches."""

    summarizers: dict
    cfg: ServeConfig
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    model_calls: int = 0
    pending: int = 0
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Graceful: finish every job already accepted, then stop."""
        while self.pending:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()

    def submit(self, jobs: list[Job]) -> None:
        if self.pending + len(jobs) > self.cfg.max_queue:
            raise QueueFull()
        self.pending += len(jobs)
        for j in jobs:
            self.queue.put_nowait(j)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.cfg.batch_window_ms / 1000
            while len(batch) < self.cfg.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list[Job]] = {}
            for j in batch:
                groups.setdefault((j.model, j.settings), []).append(j)
            for (model, settings), jobs in groups.items():
                s = self.summarizers[model]
                try:
                    self.model_calls += 1
                    outs = await loop.run_in_executor(
                        None, lambda: s.generate_ids([j.prompt for j in jobs], **dict(settings)))
                    for j, ids in zip(jobs, outs):
                        if not j.future.done():
                            j.future.set_result(ids)
                except Exception as e:  # the model failed: fail this group only, keep serving
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_exception(e)
                finally:
                    self.pending -= len(jobs)


class QueueFull(Exception):
    pass


def _request_model():
    from pydantic import BaseModel, Field

    class SummarizeRequest(BaseModel):
        dialogue: str | None = Field(None, description="One conversation, turns as '#Person1#: ...' lines.")
        dialogues: list[str] | None = Field(None, description="Several conversations (instead of `dialogue`).")
        max_new_tokens: int | None = Field(None, ge=1, description="Up to serve.max_new_tokens_limit.")
        strategy: Literal["greedy", "beam", "mbr"] | None = Field(
            None, description="Decoding: greedy, beam or mbr (default: the model's; num_beams > 1 alone means beam).")
        num_beams: int | None = Field(None, ge=1, description="Beam width for strategy beam, up to serve.max_num_beams.")
        mbr_samples: int | None = Field(None, ge=1, description="Samples for strategy mbr, up to serve.max_mbr_samples.")
        model: str | None = Field(None, description="'fine-tuned' (default) or, with --compare-base, 'base'.")

    return SummarizeRequest


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def plan_request(req, summarizers: dict, scfg: ServeConfig):
    """(summarizer, decoding settings, prompt ids, truncated count) for a request, checked against the
    server's limits before anything is queued; a RequestError (422) names the field that is wrong."""
    name = req.model or ("fine-tuned" if "fine-tuned" in summarizers else "base")
    if (req.dialogue is None) == (req.dialogues is None):
        raise RequestError(422, "give exactly one of 'dialogue' or 'dialogues'")
    dialogues = [req.dialogue] if req.dialogue is not None else req.dialogues
    if not dialogues:
        raise RequestError(422, "dialogues: empty list")
    if len(dialogues) > scfg.max_dialogues_per_request:
        raise RequestError(422, f"dialogues: {len(dialogues)} is over the limit of {scfg.max_dialogues_per_request} "
                                "per request")
    if name not in summarizers:
        raise RequestError(422, f"model: {name!r} is not loaded (available: {', '.join(summarizers)})")
    s = summarizers[name]
    strategy = req.strategy or ("beam" if (req.num_beams or 1) > 1 else s.gen.strategy)
    try:
        gen = s.gen.with_overrides(max_new_tokens=req.max_new_tokens, strategy=strategy, mbr_samples=req.mbr_samples,
                                   num_beams=req.num_beams or (s.gen.num_beams if strategy == "beam" else 1))
    except ConvsumError as e:
        raise RequestError(422, str(e).replace("generate.", "")) from None
    for field_name, limit in (("max_new_tokens", scfg.max_new_tokens_limit), ("num_beams", scfg.max_num_beams),
                              ("mbr_samples", scfg.max_mbr_samples)):
        if getattr(gen, field_name) > limit and (field_name != "mbr_samples" or strategy == "mbr"):
            raise RequestError(422, f"{field_name}: {getattr(gen, field_name)} is over the limit of {limit}")
    if strategy == "beam" and not s.supports_beam:
        raise RequestError(422, "strategy: beam is not available with the llama.cpp engine (use greedy or mbr)")
    prompts, truncated = [], 0
    for i, d in enumerate(dialogues):
        if not d.strip():
            raise RequestError(422, f"dialogues[{i}]: empty dialogue")
        ids = s.fmt.dialogue_ids(d)  # tokenized once: counted here, then put in the prompt
        if len(ids) > scfg.max_dialogue_tokens:
            raise RequestError(422, f"dialogues[{i}]: {len(ids)} tokens is over the limit of {scfg.max_dialogue_tokens}")
        prompt, cut = s.fmt.prompt_ids(ids, s.gen.max_input_tokens)
        prompts.append(prompt)
        truncated += cut
    return name, s, gen, prompts, truncated


def _error(status: int, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _guard(app, scfg: ServeConfig) -> None:
    """Size limit on bodies (chunked ones too) and validation errors as one-line JSON."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > scfg.max_body_bytes:
            return _error(413, f"request body of {length} bytes is over the limit of {scfg.max_body_bytes}")
        if request.method == "POST":
            body = await request.body()  # also catches chunked bodies without a content-length
            if len(body) > scfg.max_body_bytes:
                return _error(413, f"request body is over the limit of {scfg.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return _error(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}")


def create_app(summarizers: dict, cfg: Config, metrics: dict | None = None):
    """`summarizers`: {"fine-tuned": Summarizer, optionally "base": Summarizer}."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    scfg = cfg.serve
    batcher = Batcher(summarizers, scfg)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="convsum", version="0.1.0", lifespan=lifespan,
                  description="Summarize conversations with a LoRA fine-tuned causal LM.")
    app.state.batcher = batcher
    _guard(app, scfg)
    SummarizeRequest = _request_model()

    async def summarize(req):
        t0 = time.perf_counter()
        try:
            name, s, gen, prompts, truncated = plan_request(req, summarizers, scfg)
        except RequestError as e:
            return _error(e.status, str(e))
        loop = asyncio.get_running_loop()
        settings = tuple((k, v) for k, v in {**gen.settings(), "num_beams": gen.num_beams}.items()
                         if k != "max_input_tokens")
        jobs = [Job(p, settings, loop.create_future(), name) for p in prompts]
        try:
            batcher.submit(jobs)
        except QueueFull:
            return _error(503, "server busy: queue full, retry shortly", {"Retry-After": "1"})
        try:
            outs = await asyncio.gather(*(j.future for j in jobs))
        except Exception as e:
            return _error(500, f"generation failed: {type(e).__name__}")
        return {"summaries": [s.decode(ids) for ids in outs], "model": name,
                "usage": {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": sum(map(len, outs))},
                "truncated": truncated,  # dialogues cut at the end to fit generate.max_input_tokens
                "latency_ms": round(1000 * (time.perf_counter() - t0), 1)}

    summarize.__annotations__ = {"req": SummarizeRequest}  # FastAPI needs the class, not PEP 563's string
    app.post("/v1/summarize")(summarize)
    _read_routes(app, summarizers, scfg, batcher, metrics)
    return app


def _read_routes(app, summarizers: dict, scfg: ServeConfig, batcher: Batcher, metrics: dict | None) -> None:
    from fastapi.responses import HTMLResponse

    primary = summarizers.get("fine-tuned") or next(iter(summarizers.values()))

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": batcher.pending, "model_calls": batcher.model_calls}

    @app.get("/v1/model")
    async def model_info():
        return {"models": {name: {**s.info, "name": name} for name, s in summarizers.items()},
                "prompt_template": primary.template, "metrics": metrics,
                "generate": primary.gen.settings(),
                "limits": {k: getattr(scfg, k) for k in ("max_body_bytes", "max_dialogue_tokens",
                                                         "max_dialogues_per_request", "max_new_tokens_limit",
                                                         "max_num_beams", "max_mbr_samples", "max_batch",
                                                         "max_queue")}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (resources.files("convsum") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/v1/examples")
    async def examples():
        import json

        path = resources.files("convsum") / "sample_data" / "dialogues.jsonl"
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()[:6]]
        return {"examples": [{"title": r.get("topic", r["fname"]), "dialogue": r["dialogue"]} for r in rows]}


def main(cfg: Config, target: str | None, compare_base: bool = False) -> None:
    import uvicorn

    from convsum.inference import load_summarizer

    if target is None:
        raise ConvsumError("give a MODEL to serve: a run folder, a merged model folder or a model id")
    summarizers = {"fine-tuned": load_summarizer(target, cfg)}
    if summarizers["fine-tuned"].name == "base":
        summarizers = {"base": summarizers["fine-tuned"]}
    elif compare_base:
        summarizers["base"] = load_summarizer(target, cfg, base=True)
    metrics = None
    tuned, _ = RunDir(target).find_eval()
    if tuned:
        m = tuned.read_metrics()
        metrics = {k: m[k] for k in ("n", "per_reference", "mean", "best") if k in m}
    app = create_app(summarizers, cfg, metrics)
    print(f"convsum: serving {target} on http://{cfg.serve.host}:{cfg.serve.port} (page at /, API docs at /docs)")
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level="warning", timeout_graceful_shutdown=30)
