import asyncio
import time

import httpx
import pytest

from convsum import serve, train
from convsum.generate import load_summarizer

DIALOGUES = [f"#Person1#: Hello, I am {n}. I would like a ticket.\n#Person2#: Sure, go to the station."
             for n in ("Tom", "Anna", "Bob", "Sara", "Mr. Lee", "the clerk")]


@pytest.fixture(scope="module")
def summarizers(tiny_model_dir, tmp_path_factory):
    from convsum.config import load_config

    from helpers import make_records, write_jsonl

    d = tmp_path_factory.mktemp("serve")
    write_jsonl(d / "train.jsonl", make_records(16))
    cfg = load_config(None, {"model.name": str(tiny_model_dir), "data.source": str(d / "train.jsonl"),
                             "data.val_size": 0, "train.output_dir": str(d / "run"), "train.max_steps": 3,
                             "train.save_steps": 100, "train.bf16": "false", "generate.max_new_tokens": 12,
                             "generate.bf16": "false"})
    train.main(cfg)
    return cfg, {"fine-tuned": load_summarizer(str(d / "run"), cfg), "base": load_summarizer(str(d / "run"), cfg, base=True)}


def run(app, coro_fn):
    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await coro_fn(client)
    return asyncio.run(go())


def make_app(summarizers, **limits):
    import copy

    cfg, s = summarizers
    cfg = copy.deepcopy(cfg)
    for k, v in limits.items():
        setattr(cfg.serve, k, v)
    return serve.create_app(s, cfg, metrics={"n": 1})


def test_endpoints(summarizers):
    app = make_app(summarizers)

    async def go(c):
        health = (await c.get("/health")).json()
        info = (await c.get("/v1/model")).json()
        page = await c.get("/")
        docs = await c.get("/openapi.json")
        t0 = time.perf_counter()
        one = await c.post("/v1/summarize", json={"dialogue": DIALOGUES[0]})
        one.wall_ms = 1000 * (time.perf_counter() - t0)
        many = await c.post("/v1/summarize", json={"dialogues": DIALOGUES[:3], "max_new_tokens": 5, "model": "base"})
        return health, info, page, docs, one, many

    health, info, page, docs, one, many = run(app, go)
    assert health["status"] == "ok"
    assert set(info["models"]) == {"fine-tuned", "base"} and "{dialogue}" in info["prompt_template"]
    assert info["metrics"] == {"n": 1}
    assert page.status_code == 200 and "<textarea" in page.text and "Summarize" in page.text
    assert "/v1/summarize" in docs.json()["paths"]
    body = one.json()
    assert one.status_code == 200 and len(body["summaries"]) == 1 and body["model"] == "fine-tuned"
    s = summarizers[1]["fine-tuned"]
    assert body["usage"]["prompt_tokens"] == len(s.encode(DIALOGUES[0]))
    assert body["usage"]["completion_tokens"] == len(s.generate_ids([s.encode(DIALOGUES[0])])[0])
    assert 0 < body["latency_ms"] <= one.wall_ms  # the server's own time, inside what the client waited
    b = many.json()
    assert many.status_code == 200 and len(b["summaries"]) == 3 and b["usage"]["completion_tokens"] <= 15


def test_crlf_and_non_bmp_text_reach_the_model_as_in_training_and_come_back_intact(summarizers):
    import json

    app = make_app(summarizers)
    lf = DIALOGUES[0] + "\n#Person1#: Thanks 😀 𝄞"
    crlf = json.dumps({"dialogue": "  " + lf.replace("\n", "\r\n") + " \r\n"})  # ASCII-escaped surrogate pairs

    async def go(c):
        return (await c.post("/v1/summarize", json={"dialogue": lf}),
                await c.post("/v1/summarize", content=crlf, headers={"content-type": "application/json"}))
    a, b = run(app, go)
    assert a.status_code == b.status_code == 200
    assert a.json()["summaries"] == b.json()["summaries"] and a.json()["usage"] == b.json()["usage"]
    s = summarizers[1]["fine-tuned"]  # what the model emits is decoded as a whole, so multi-token emoji survive
    assert s.decode(s.tokenizer.encode("Thanks 😀 𝄞", add_special_tokens=False)) == "Thanks 😀 𝄞"


@pytest.mark.parametrize("payload,status,needle", [
    ({"dialogue": ""}, 422, "empty dialogue"),
    ({"dialogue": "   "}, 422, "empty dialogue"),
    ({"dialogue": 5}, 422, "dialogue"),
    ({"dialogues": []}, 422, "empty list"),
    ({}, 422, "exactly one"),
    ({"dialogue": "a", "dialogues": ["b"]}, 422, "exactly one"),
    ({"dialogues": ["x"] * 17}, 422, "limit of 16"),
    ({"dialogue": "word " * 3000}, 422, "tokens is over the limit"),
    ({"dialogue": "hi", "max_new_tokens": 1000}, 422, "max_new_tokens"),
    ({"dialogue": "hi", "num_beams": 9}, 422, "num_beams"),
    ({"dialogue": "hi", "model": "other"}, 422, "not loaded"),
])
def test_limits_and_bad_input_are_clear_json_errors(summarizers, payload, status, needle):
    app = make_app(summarizers)
    r = run(app, lambda c: c.post("/v1/summarize", json=payload))
    assert r.status_code == status and needle in r.json()["error"]


def test_body_size_limit_413(summarizers):
    app = make_app(summarizers, max_body_bytes=1000)
    r = run(app, lambda c: c.post("/v1/summarize", json={"dialogue": "x" * 2000}))
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_queue_full_503_with_retry_after(summarizers):
    app = make_app(summarizers, max_queue=2)
    r = run(app, lambda c: c.post("/v1/summarize", json={"dialogues": DIALOGUES[:3]}))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_concurrent_requests_are_batched_and_equal_one_by_one(summarizers):
    one_by_one = [s for d in DIALOGUES for s in run(make_app(summarizers, max_batch=1),
                  lambda c, d=d: c.post("/v1/summarize", json={"dialogue": d})).json()["summaries"]]
    app = make_app(summarizers, batch_window_ms=200, max_batch=16)

    async def go(c):
        rs = await asyncio.gather(*(c.post("/v1/summarize", json={"dialogue": d}) for d in DIALOGUES),
                                  c.post("/v1/summarize", json={"dialogue": ""}))  # a bad one among them
        return rs, (await c.get("/health")).json()

    rs, health = run(app, go)
    assert [r.status_code for r in rs] == [200] * len(DIALOGUES) + [422]
    assert [r.json()["summaries"][0] for r in rs[:-1]] == one_by_one
    assert health["model_calls"] < len(DIALOGUES)  # served in fewer model calls than requests


def test_cli_serve_binds_loopback_by_default():
    from convsum.cli import build_parser
    from convsum.config import load_config

    assert load_config().serve.host == "127.0.0.1"
    args = build_parser().parse_args(["serve", "runs/x"])
    assert args.host is None  # so the config default (127.0.0.1) applies


def test_strategy_is_validated_and_mbr_is_served(summarizers):
    async def go(client):
        ok = await client.post("/v1/summarize", json={"dialogue": DIALOGUES[0], "strategy": "mbr", "mbr_samples": 3})
        assert ok.status_code == 200 and len(ok.json()["summaries"]) == 1
        for body, needle in [({"strategy": "sample"}, "strategy"), ({"strategy": "mbr", "mbr_samples": 99}, "mbr_samples"),
                             ({"strategy": "beam", "num_beams": 1}, "num_beams"), ({"num_beams": 9}, "num_beams")]:
            r = await client.post("/v1/summarize", json={"dialogue": DIALOGUES[1], **body})
            assert r.status_code == 422 and needle in r.json()["error"], (body, r.json())
        beam = await client.post("/v1/summarize", json={"dialogue": DIALOGUES[1], "num_beams": 2})
        assert beam.status_code == 200

    run(make_app(summarizers), go)
