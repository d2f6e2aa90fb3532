"""A live server on 127.0.0.1 (a free port) with the bundled model on CPU, driven by the official
``openai`` client (plain and streaming) and by httpx for the error cases, disconnects and draining."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from phase0_prototype import load_impl as phase0_impl
from phase4_scheduler import SchedulerConfig
from phase4_scheduler.serve import ServerThread, build_app

MODEL = "kjv-llama-18m"


@pytest.fixture(scope="module")
def server():
    app, loop = build_app(MODEL, scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64), max_queue=64)
    with ServerThread(app) as srv:
        srv.loop = loop
        yield srv
    assert not loop._thread.is_alive(), "the engine thread must stop with the server"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _greedy_text(loop, prompt: str, n: int) -> str:
    model = loop.engine.model
    ids = model.tokenizer.encode(prompt)
    out = phase0_impl("solution").build(model, compile=False).generate(ids, n).sequences()[0]
    return model.tokenizer.decode([t for t in out if t not in model.tokenizer.eos_ids])


def _wait_idle(loop, timeout=5.0):
    deadline = time.monotonic() + timeout
    while loop.engine.has_unfinished() or loop._inbox:
        assert time.monotonic() < deadline, "requests still running after the client left"
        time.sleep(0.02)


def test_completion_plain_and_streaming_equal_the_reference(server, client):
    prompt = "And God said, Let there be"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=14, temperature=0)
    assert r.choices[0].text == _greedy_text(server.loop, prompt, 14)
    assert r.usage.completion_tokens <= 14 and r.usage.prompt_tokens == len(server.loop.engine.tokenizer.encode(prompt))
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=14, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_concurrent_streams_each_get_their_own_text(server, client):
    prompts = ["In the beginning", "The LORD is my shepherd", "Jesus wept", "Blessed are the"]
    results = {}

    def one(p):
        s = client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0, stream=True)
        results[p] = "".join(c.choices[0].text for c in s)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in prompts:
        assert results[p] == _greedy_text(server.loop, p, 10)


def test_chat_plain_and_streaming(server, client):
    messages = [{"role": "user", "content": "Who made the light?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    tok = server.loop.engine.tokenizer
    ids = tok.encode_chat(messages)
    ref = phase0_impl("solution").build(server.loop.engine.model, compile=False).generate(ids, 12).sequences()[0]
    assert r.choices[0].message.content == tok.decode([t for t in ref if t not in tok.eos_ids])
    assert r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content


def test_sse_wire_format_ends_with_done(server):
    body = {"model": MODEL, "prompt": "In the beginning", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(p["object"] == "text_completion" and p["model"] == MODEL for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def _ttft_count(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    for name in ("titaninfer_queue_length", "titaninfer_running_requests", "titaninfer_kv_cache_usage_ratio",
                 "titaninfer_time_to_first_token_seconds_count", "titaninfer_time_per_output_token_seconds_count",
                 "titaninfer_generation_tokens_per_second"):
        assert name in text
    line = next(x for x in text.splitlines() if x.startswith("titaninfer_time_to_first_token_seconds_count"))
    return float(line.split()[1])


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    before = _ttft_count(server)
    client.completions.create(model=MODEL, prompt="Jesus wept", max_tokens=3, temperature=0)
    deadline = time.monotonic() + 5
    while _ttft_count(server) < before + 1:  # this request's first token is measured when it finishes
        assert time.monotonic() < deadline, "the request's time to first token was not recorded"
        time.sleep(0.02)


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "n": 129}, 400, "n"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 600}, 400, "context limit of 512 tokens"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
])
def test_errors_in_openai_format(server, body, status, fragment):
    resp = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert resp.status_code == status
    err = resp.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


def test_openai_client_raises_on_context_overflow(client):
    with pytest.raises(openai.BadRequestError, match="context limit"):
        client.completions.create(model=MODEL, prompt="In the beginning " * 200, max_tokens=100)


@pytest.mark.parametrize("n", [1, 3])
def test_client_disconnect_aborts_and_frees_blocks(server, monkeypatch, n):
    """A client leaving mid-stream aborts its request — every one of its ``n`` choices — and frees the blocks."""
    engine = server.loop.engine
    step = engine.step

    def slow_step():  # 400 steps take 20 s: only the abort can free the blocks within the wait below
        time.sleep(0.05)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    body = {"model": MODEL, "prompt": "In the beginning", "max_tokens": 400, "stream": True, "ignore_eos": True,
            "n": n}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break  # tokens arrive: the choices hold KV blocks now
        assert engine.scheduler.num_running == n and engine.blocks.num_free_gpu_blocks < engine.blocks.num_gpu_blocks
    _wait_idle(server.loop)  # leaving the block closed the connection mid-stream
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks


def test_full_queue_gets_429_and_shutdown_drains_accepted_requests():
    app, loop = build_app(MODEL, scheduler=SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=16), max_queue=1)
    body = {"model": MODEL, "prompt": "In the beginning", "max_tokens": 40, "ignore_eos": True}
    results = []
    with ServerThread(app) as srv:
        def post():
            results.append(httpx.post(srv.url + "/v1/completions", json=body, timeout=120))

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while len(results) < 3 and time.monotonic() < deadline:  # the refused ones answer at once
            time.sleep(0.02)
    # leaving the block stopped the server: accepted requests must have finished first
    for t in threads:
        t.join(120)
    codes = sorted(r.status_code for r in results)
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429, 503}
    for r in results:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        elif r.status_code == 503:  # arrived after the drain began
            assert "shutting down" in r.json()["error"]["message"]
        else:
            assert r.json()["usage"]["completion_tokens"] == 40
    assert loop.engine.blocks.num_free_gpu_blocks == loop.engine.blocks.num_gpu_blocks
