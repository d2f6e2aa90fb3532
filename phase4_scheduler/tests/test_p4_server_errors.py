"""The server refuses bad requests cleanly, in-process (httpx's ASGI transport, the bundled model on CPU
with a 128-token context): each bad body is a 400 in OpenAI's error JSON naming the field, a body over
the limit a 413, a missing API key a 401, a dead engine a 503 at once, a failure while preparing or
decoding one request a 500 of that request alone, and tokenizing runs off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from phase0_prototype.errors import ModelError
from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.engine_loop import EngineDead, EngineLoop
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.server import MAX_CHARS_PER_TOKEN, create_app

MODEL = "kjv-llama-18m"
CONTEXT = 128
LIMIT = 64 << 10  # the body limit of these apps


@pytest.fixture(scope="module")
def loaded():
    return load_model(MODEL, dtype="fp32", device="cpu")


def engine_loop(loaded, cls=EngineLoop) -> EngineLoop:
    engine = BatchingEngine(loaded, BatchingConfig(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64),
                                            max_model_len=CONTEXT))
    return cls(engine)


@pytest.fixture
def loop(loaded):
    loop = engine_loop(loaded).start()
    yield loop
    loop.shutdown(drain=False)


@pytest.fixture(scope="module")
def app(loaded):
    loop = engine_loop(loaded).start()
    yield create_app(loop, MODEL, max_body_bytes=LIMIT)
    loop.shutdown(drain=False)


async def _send(app, method: str, url: str, **kw) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, url, **kw)


def call(app, method: str, url: str, **kw) -> httpx.Response:
    return asyncio.run(_send(app, method, url, **kw))


def post(app, url: str, body, headers: dict | None = None) -> httpx.Response:
    """``body`` as JSON text (a lone surrogate travels as its ``\\ud800`` escape, as a client sends it)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(app, "POST", url, content=content, headers={"content-type": "application/json", **(headers or {})})


def assert_error(resp: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    assert "Traceback" not in err["message"]
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert err["code"] == code
    return err


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "In the beginning", "max_tokens": 4, **fields}


def chat(content="Who made the light?", **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


C, CHAT = "/v1/completions", "/v1/chat/completions"


@pytest.mark.parametrize("url, body, status, param", [
    (C, completion(seed=2**63), 400, "seed"),
    (C, completion(seed=-2**63 - 1), 400, "seed"),
    (C, completion(max_tokens=-1), 400, "max_tokens"),
    (C, completion(max_tokens=0), 400, "max_tokens"),
    (C, completion(max_tokens=2**40), 400, "max_tokens"),
    (C, completion(temperature=2.5), 400, "temperature"),
    (C, completion(temperature="hot"), 400, "temperature"),
    (C, completion(top_p=0), 400, "top_p"),
    (C, completion(top_k=-1), 400, "top_k"),
    (C, completion(priority=2**63), 400, "priority"),
    (C, completion(n=129), 400, "n"),
    (C, completion(stream="maybe"), 400, "stream"),
    (C, completion(stop=["x"] * 17), 400, "stop"),
    (C, completion(stop=["ok", "x" * 513]), 400, "stop.1"),
    (C, completion(stop="x" * 513), 400, "stop"),
    (C, completion(stop=7), 400, "stop"),
    (C, completion(stop=["ok", "a\ud800"]), 400, "stop.1"),
    (C, completion(prompt="a\ud800b"), 400, "prompt"),
    (C, completion(prompt=["a\udc00"]), 400, "prompt.0"),
    (C, completion(model="m\ud800"), 400, "model"),
    (C, completion(prompt=5), 400, "prompt"),
    (C, completion(prompt=[]), 400, "prompt"),
    (C, completion(prompt=["one", "two"]), 400, "prompt"),
    (C, completion(prompt=[1, -2]), 400, "prompt.1"),
    (C, completion(prompt=[1, 2, 8192]), 400, "prompt.2"),
    (C, {"model": MODEL}, 400, "prompt"),
    (C, completion(model="gpt-4"), 404, "model"),
    (CHAT, chat("a\ud800"), 400, "messages.0.content"),
    (CHAT, chat(["parts"]), 400, "messages.0.content"),
    (CHAT, {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
    (C, b'{"model": "kjv-llama-18m", "prompt": ', 400, None),
    (C, b"[1, 2]", 400, None),
    (C, b'"In the beginning"', 400, None),
])
def test_bad_body_is_a_400_naming_the_field(app, url, body, status, param):
    assert_error(post(app, url, body), status, param)


@pytest.mark.parametrize("fields", [
    {"seed": 2**63 - 1, "temperature": 2.0, "top_p": 1.0, "top_k": 2**31 - 1, "priority": 2**63 - 1},
    {"seed": -2**63, "temperature": 0.5, "top_p": 1e-9, "priority": -2**63, "stop": ["x" * 512] * 16},
    {"prompt": [0, 8191], "max_tokens": CONTEXT - 2},
])
def test_the_bounds_themselves_are_served(app, fields):
    resp = post(app, C, completion(**fields))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_invalid_json_names_the_offset_in_the_message_not_as_param(app):
    err = assert_error(post(app, C, b'{"model": }'), 400, None)
    assert "not valid JSON" in err["message"] and "character 10" in err["message"]


def test_unknown_route_and_wrong_method(app):
    assert_error(call(app, "GET", "/v1/nothing"), 404, None)
    resp = call(app, "GET", C)
    assert_error(resp, 405, None)
    assert resp.headers["allow"] == "POST"


def test_an_unexpected_failure_is_a_500_in_json_and_its_traceback_goes_to_the_log(app, monkeypatch, caplog):
    def broken():
        raise OSError("registry on fire")

    monkeypatch.setattr(app.state.metrics, "render", broken)
    resp = call(app, "GET", "/metrics")
    assert "OSError" in assert_error(resp, 500, None)["message"] and "registry on fire" not in resp.text
    assert any(r.exc_info and r.exc_info[0] is OSError for r in caplog.records)


def test_the_schema_lists_what_the_server_answers(app):
    schema = call(app, "GET", "/openapi.json").json()
    assert "422" not in json.dumps(schema["paths"]) and "HTTPValidationError" not in json.dumps(schema)
    for path in (C, CHAT):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "429", "500", "503"} <= set(responses)
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "503" in schema["paths"]["/health"]["get"]["responses"]
    seed = schema["components"]["schemas"]["CompletionRequest"]["properties"]["seed"]["anyOf"][0]
    assert seed["minimum"] == -2**63 and seed["exclusiveMaximum"] == 2**63  # exact, though floats


def test_too_long_for_the_context_before_tokenizing(app, loaded, monkeypatch):
    def never(*_):
        raise AssertionError("tokenized a prompt that cannot fit")

    monkeypatch.setattr(loaded.tokenizer, "encode", never)
    too_long = "x" * (CONTEXT * MAX_CHARS_PER_TOKEN + 1)
    assert_error(post(app, C, completion(prompt=too_long)), 400, "prompt", "context_length_exceeded")
    assert_error(post(app, CHAT, chat(too_long)), 400, "messages", "context_length_exceeded")
    assert_error(post(app, C, completion(prompt=[5] * (CONTEXT + 1))), 400, "prompt", "context_length_exceeded")
    monkeypatch.undo()
    err = assert_error(post(app, C, completion(prompt=[5] * (CONTEXT - 2))), 400, "max_tokens",
                       "context_length_exceeded")
    assert f"context limit of {CONTEXT} tokens" in err["message"]


def test_body_over_the_limit_is_a_413_with_and_without_content_length(app):
    big = json.dumps(completion(prompt="x" * LIMIT)).encode()
    assert_error(post(app, C, big), 413, None, "request_too_large")

    async def chunks(data: bytes):
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    resp = call(app, "POST", C, content=chunks(big), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers  # sent chunked: counted while reading
    assert_error(resp, 413, None, "request_too_large")
    small = json.dumps(completion()).encode()
    resp = call(app, "POST", C, content=chunks(small), headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4


def test_api_key_guards_v1_only(loop):
    app = create_app(loop, MODEL, api_key="s3cret")
    assert_error(call(app, "GET", "/v1/models"), 401, None, "invalid_api_key")
    assert_error(call(app, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, None)
    assert_error(post(app, C, b"{not json", headers={"Authorization": "Bearer s3"}), 401, None)  # before the body
    assert call(app, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    resp = post(app, C, completion(), headers={"Authorization": "Bearer s3cret"})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4
    assert call(app, "GET", "/health").status_code == 200 and call(app, "GET", "/metrics").status_code == 200
    schema = call(app, "GET", "/openapi.json").json()
    assert schema["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]


def test_dead_engine_is_a_503_at_once_and_health_says_why(loaded, monkeypatch):
    loop = engine_loop(loaded)
    steps = []

    def step():
        steps.append(1)
        if len(steps) > 3:
            raise RuntimeError("device lost")
        return BatchingEngine.step(loop.engine)

    monkeypatch.setattr(loop.engine, "step", step)
    app = create_app(loop.start(), MODEL)
    resp = post(app, C, completion(max_tokens=40, stream=True, ignore_eos=True))
    lines = [line for line in resp.text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    err = json.loads(lines[-2][len("data: "):])["error"]
    assert "device lost" in err["message"] and err["type"] == "server_error"
    assert len(lines) > 2  # text came before the engine died
    err = assert_error(call(app, "GET", "/health"), 503, None)
    assert "device lost" in err["message"]

    monkeypatch.setattr(loaded.tokenizer, "encode", lambda *_: pytest.fail("tokenized for a dead engine"))
    assert_error(post(app, C, completion()), 503, None)  # refused before any work (the tokenizer fails the test)
    assert_error(post(app, CHAT, chat(stream=True)), 503, None)


def test_submit_raising_engine_dead_is_a_503(loaded):
    class Dying(EngineLoop):
        def submit(self, request, callback, event_loop=None):
            raise EngineDead("the engine stopped (RuntimeError: boom): restart the server")

    err = assert_error(post(create_app(engine_loop(loaded, Dying), MODEL), C, completion()), 503, None)
    assert "boom" in err["message"]


def test_a_request_that_fails_alone_is_a_500(app, loaded, monkeypatch):
    engine = app.state.loop.engine
    real_add = engine.add

    def add(request):
        if request.max_tokens == 7:
            raise RuntimeError("no sampler for you")
        return real_add(request)

    monkeypatch.setattr(engine, "add", add)
    err = assert_error(post(app, C, completion(max_tokens=7)), 500, None)
    assert "no sampler for you" in err["message"]
    assert post(app, C, completion()).status_code == 200  # the others go on
    assert call(app, "GET", "/health").status_code == 200


@pytest.mark.parametrize("raised, status", [(ModelError("the template refuses role 'x'"), 400),
                                            (RuntimeError("tokenizer crashed"), 500)])
def test_tokenizer_failure_fails_that_request(app, loaded, monkeypatch, raised, status):
    def fail(*_):
        raise raised

    monkeypatch.setattr(loaded.tokenizer, "encode", fail)
    assert str(raised) in assert_error(post(app, C, completion()), status, "prompt" if status == 400 else None)["message"]
    monkeypatch.setattr(loaded.tokenizer, "encode_chat", fail)
    assert_error(post(app, CHAT, chat()), status, "messages" if status == 400 else None)


def test_make_request_raising_is_a_500(app, monkeypatch):
    def boom(*_, **__):
        raise KeyError("boom")

    monkeypatch.setattr(app.state.loop.engine, "make_request", boom)
    assert "boom" in assert_error(post(app, C, completion()), 500, None)["message"]


class _BrokenText:
    finished = False

    def __init__(self, request):
        self.request = request

    @property
    def text(self):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_text_that_cannot_be_decoded_fails_that_request_and_aborts_it(loaded):
    class BrokenLoop(EngineLoop):
        def submit(self, request, callback, event_loop=None):
            callback(_BrokenText(request))

        def abort(self, request_id):
            aborted.append(request_id)

    aborted = []
    app = create_app(engine_loop(loaded, BrokenLoop), MODEL)
    assert "decoding" in assert_error(post(app, C, completion()), 500, None)["message"]
    resp = post(app, CHAT, chat(stream=True))
    lines = [line for line in resp.text.splitlines() if line]
    assert json.loads(lines[-2][6:])["error"]["type"] == "server_error" and lines[-1] == "data: [DONE]"
    assert len(aborted) == 2


def test_health_answers_while_a_prompt_is_tokenized(app, loaded, monkeypatch):
    """The tokenizer is held inside ``encode`` until /health has answered: on the event loop, /health
    could not answer until the hold timed out."""
    entered, released, held = threading.Event(), threading.Event(), []
    real_encode = loaded.tokenizer.encode

    def slow_encode(text, **kw):
        entered.set()
        held.append(released.wait(10))
        return real_encode(text, **kw)

    monkeypatch.setattr(loaded.tokenizer, "encode", slow_encode)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            big = asyncio.create_task(client.post(C, json=completion()))
            assert await asyncio.to_thread(entered.wait, 10)
            health = await client.get("/health")  # answered while the tokenizer still holds
            released.set()
            return health, await big

    health, big = asyncio.run(scenario())
    assert held == [True], "the event loop was blocked while tokenizing"
    assert health.json() == {"status": "ok"}
    assert big.status_code == 200 and big.json()["usage"]["completion_tokens"] == 4
