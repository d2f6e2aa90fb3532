"""The OpenAI-compatible HTTP server: FastAPI routes in front of the engine loop's thread.

Each request becomes an engine ``Request``; the engine thread hands each step's events to this event loop
in one ``call_soon_threadsafe`` (``EngineLoop.submit``'s ``event_loop``) into their requests' ``asyncio.Queue``. Streams are server-sent events in OpenAI's chunk
format ending with ``data: [DONE]``. A client that goes away gets its request aborted (its KV blocks
freed). Tokenizing and chat templating run in a worker thread (the tokenizer releases the GIL), so a
long prompt does not stall the other connections. A request of ``n`` choices is ``n`` engine requests
(``responses.ParentRequest``, seeds ``seed + i``); its answer waits for all, a stream interleaves their
chunks by ``index``, and one child's failure or the client leaving aborts the others.

Refusals, in OpenAI's error JSON (``protocol.ApiError``), before any work they would waste: 401 without
the API key and 413 for a body over ``max_body_bytes``, before the body is read (``RequestGate``); 400
for a field out of range (``protocol``) or a prompt too long for the context (by its characters, before
tokenizing); 404 unknown model or route; 429 full queue; 503 while draining or once the engine died;
500 when preparing or decoding one request fails — that request alone (a stream: an ``{"error": ...}``
event, then ``[DONE]``). Tracebacks go to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import SEED_RANGE, SamplingParams
from phase4_scheduler.engine import describe_error
from phase4_scheduler.engine_loop import EngineDead, EngineLoop, QueueFull, ShuttingDown
from phase4_scheduler.metrics import ServerMetrics
from phase4_scheduler.protocol import (
    ApiError,
    ChatCompletion,
    ChatRequest,
    Completion,
    CompletionRequest,
    ErrorBody,
    SamplingFields,
    validation_message,
)
from phase4_scheduler.request_gate import RequestGate
from phase4_scheduler.responses import ParentRequest, answer_choice, chunk_choice

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16
POLL_S = 0.1  # how often a waiting request looks for a client that left or an engine that died
# 8 MiB: a prompt that fills a 128K-token context is ~0.5 MB of text (~1 MB as a list of token ids);
# the limit keeps a client from making the server buffer and parse hundreds of MB.
DEFAULT_MAX_BODY_BYTES = 8 << 20
# A generous bound on the characters one token covers: the longest token of the bundled vocabulary is
# 16 characters, and 128 leaves 8× room for vocabularies with long runs of spaces or punctuation. A text
# longer than context × 128 characters cannot fit, whatever the tokenizer: it is refused untokenized.
MAX_CHARS_PER_TOKEN = 128

_ERROR = {"model": ErrorBody}
GENERATION_RESPONSES = {
    400: {**_ERROR, "description": "a field out of range, a prompt too long for the context, invalid JSON"},
    401: {**_ERROR, "description": "missing or wrong API key (when the server has one)"},
    404: {**_ERROR, "description": "unknown model"},
    413: {**_ERROR, "description": "request body over the server's limit"},
    429: {**_ERROR, "description": "the queue is full: retry later",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
    500: {**_ERROR, "description": "preparing or decoding this request failed"},
    503: {**_ERROR, "description": "the server is draining, or its engine stopped"},
}
# With "stream": server-sent events (the schema of one event): each data is a JSON chunk, or an
# {"error": ...} object when the request failed midway; the last is [DONE].
STREAM = {"text/event-stream": {"schema": {"type": "object", "required": ["data"],
                                           "properties": {"data": {"type": "string"}}}}}


def create_app(loop: EngineLoop, model_name: str, *, metrics: ServerMetrics | None = None,
               api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The app serving ``loop``'s engine as ``model_name``; with ``api_key``, ``/v1/*`` needs
    ``Authorization: Bearer <api_key>`` (``/health`` and ``/metrics`` stay open)."""
    engine = loop.engine
    metrics = metrics or ServerMetrics()
    loop.on_step = metrics.on_step
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(loop.shutdown, True)  # drain: every accepted request finishes

    app = FastAPI(title="TitanInfer", lifespan=lifespan)
    app.state.loop, app.state.metrics = loop, metrics
    app.add_middleware(RequestGate, max_body_bytes=max_body_bytes, api_key=api_key)
    app.openapi = lambda: _openapi(app, secured=api_key is not None)

    @app.exception_handler(ApiError)
    async def on_refusal(_, exc: ApiError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def on_http_error(http: HttpRequest, exc: HTTPException):
        where = f"{http.method} {http.url.path}"
        message = {404: f"no route {where}: see /docs for the API",
                   405: f"method not allowed: {where} (see /docs for the API)"}.get(exc.status_code, str(exc.detail))
        return ApiError(exc.status_code, message, headers=exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def on_validation(_, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return ApiError(400, message, param=param).response()

    @app.exception_handler(Exception)
    async def on_crash(http: HttpRequest, exc: Exception):
        log.error("%s %s failed", http.method, http.url.path, exc_info=exc)
        return ApiError(500, f"internal server error ({type(exc).__name__}): the server's log has the details"
                        ).response()

    def engine_stopped() -> ApiError:
        return ApiError(503, f"the engine stopped ({describe_error(loop.error)}): restart the server")

    @app.get("/health", responses={503: {**_ERROR, "description": "the engine stopped"}})
    async def health():
        if loop.error is not None:
            raise engine_stopped()
        return {"status": "ok"}

    @app.get("/v1/models", responses={401: GENERATION_RESPONSES[401]})
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "titaninfer"}]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        metrics.queue.set(loop.num_waiting)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    def check_ready(body: SamplingFields) -> None:
        if body.model != model_name:
            raise ApiError(404, f"the model '{body.model}' does not exist: this server serves '{model_name}'",
                           param="model", code="model_not_found")
        if loop.error is not None:
            raise engine_stopped()

    def check_length(n: int, unit: str, param: str) -> None:
        """Refuse a prompt that cannot fit the context, by its length in ``unit`` before tokenizing."""
        limit = engine.context_limit()
        most = limit * (MAX_CHARS_PER_TOKEN if unit == "characters" else 1)
        if n > most:
            raise ApiError(400, f"the {param} has {n} {unit}, more than the context limit of {limit} tokens can "
                           "hold: shorten it", param=param, code="context_length_exceeded")

    async def tokenize(fn, arg, param: str) -> list[int]:
        try:
            return await asyncio.to_thread(fn, arg)
        except ValueError as e:  # ModelError included: the input's fault (a template refusing a role...)
            raise ApiError(400, describe_error(e), param=param) from None
        except Exception as e:
            log.exception("tokenizing the %s failed", param)
            raise ApiError(500, f"tokenizing the {param} failed ({describe_error(e)})") from None

    def make(body: SamplingFields, prompt_ids: list[int], param: str, chat: bool) -> ParentRequest:
        """The ``n`` engine requests of one OpenAI request (ApiError when they cannot be made)."""
        if not prompt_ids:
            raise ApiError(400, f"the {param} is empty: give at least one token", param=param)
        if chat and body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if body.n > getattr(loop, "max_queue", body.n):  # (each choice waits in the queue as a request)
            raise ApiError(400, f"n ({body.n}) exceeds the {loop.max_queue} requests this server's queue holds: "
                           "lower n", param="n")
        if body.best_of is not None and body.best_of != body.n:
            raise ApiError(400, f"best_of ({body.best_of}) other than n ({body.n}) is not supported by this server: "
                           "omit it, or send n's value", param="best_of")
        if body.seed is not None and body.seed + body.n - 1 > SEED_RANGE[1]:
            raise ApiError(400, f"seed: the {body.n} choices sample with seeds seed .. seed + {body.n - 1}, past "
                           f"int64: send a seed <= {SEED_RANGE[1] - body.n + 1}", param="seed")
        limit, asked = engine.context_limit(), body.max_completion_tokens or body.max_tokens
        room = max(limit - len(prompt_ids), 1)
        # No max_tokens: a chat answers until the context is full (as vLLM does), a completion stops at 16
        # tokens (OpenAI's default for the legacy endpoint).
        max_tokens = asked or (room if chat else min(DEFAULT_MAX_TOKENS, room))
        try:
            return ParentRequest([engine.make_request(
                prompt_ids, max_tokens, SamplingParams(body.temperature, body.top_k, body.top_p,
                                                       None if body.seed is None else body.seed + i),
                stop=body.stop_strings(), priority=body.priority, ignore_eos=body.ignore_eos,
                processing=body.processing(), logprobs=body.logprobs_k()) for i in range(body.n)])
        except ModelError as e:
            raise ApiError(400, describe_error(e)) from None
        except ValueError as e:
            field = ("max_completion_tokens" if body.max_completion_tokens else "max_tokens") if asked else param
            raise ApiError(400, describe_error(e), param=field,
                           code="context_length_exceeded") from None
        except Exception as e:
            log.exception("making the request failed")
            raise ApiError(500, f"preparing the request failed ({describe_error(e)})") from None

    def submit(parent: ParentRequest, events: asyncio.Queue) -> None:
        """Every child into the engine loop, or none (a refusal aborts those already in)."""
        def deliver(ev):  # on this event loop's thread: a step's events cross in one hand-over (EngineLoop)
            if ev.finished:
                metrics.on_finish(ev.request)
            events.put_nowait(ev)

        submitted, here = [], asyncio.get_running_loop()
        try:
            for r in parent.children:
                loop.submit(r, deliver, here)
                submitted.append(r.request_id)
        except QueueFull as e:
            metrics.rejected.inc()
            error = ApiError(429, str(e), type_="rate_limit_error", headers={"Retry-After": "1"})
        except (ShuttingDown, EngineDead) as e:
            error = ApiError(503, str(e))
        else:
            return
        for rid in submitted:
            loop.abort(rid)
        raise error

    async def run(http: HttpRequest, body: SamplingFields, prompt_ids: list[int], param: str, chat: bool,
                  echo: str = ""):
        """``echo``: text the answer starts with (completions' ``echo``: the prompt)."""
        parent = make(body, prompt_ids, param, chat)
        events: asyncio.Queue = asyncio.Queue()
        submit(parent, events)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            with_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(stream(parent, events, rid, chat, with_usage, echo),
                                     media_type="text/event-stream")
        return await complete(http, parent, events, rid, chat, echo)

    def abort_unfinished(parent: ParentRequest) -> None:
        """Free the KV blocks of the children still running (the request failed, or its client left)."""
        for request_id in parent.unfinished_ids():
            loop.abort(request_id)

    async def next_event(parent: ParentRequest, events: asyncio.Queue,
                         http: HttpRequest | None = None) -> tuple[int, str, bool] | None:
        """(choice index, new text, finished) of the next event of ``parent``'s children; None when
        ``http``'s client left; ApiError when a child failed (500) or the engine died (503)."""
        while True:
            try:
                ev = await _next_item(events, POLL_S)
                break
            except asyncio.TimeoutError:
                if http is not None and await http.is_disconnected():
                    return None
                if loop.error is not None:
                    await asyncio.sleep(0)  # let the events the engine handed over before dying arrive
                    if events.empty():
                        raise engine_stopped() from None
        r, i = ev.request, parent.index(ev.request)
        if ev.finished:
            parent.done.add(i)
        try:
            text = ev.text  # (a lazy event decodes here)
        except Exception as e:
            log.exception("decoding request %s failed", r.request_id)
            raise ApiError(500, f"decoding the output failed ({describe_error(e)})") from None
        reason = r.finish_reason or ""
        if ev.finished and reason.startswith("error"):
            # the engine died, or the drain deadline ended it: the server's fault of the moment, not the request's
            status = 503 if loop.error is not None or not loop.accepting else 500
            raise ApiError(status, reason.removeprefix("error: "))
        return i, text, ev.finished

    async def complete(http: HttpRequest, parent: ParentRequest, events: asyncio.Queue, rid: str, chat: bool,
                       echo: str = ""):
        parts = [[echo] for _ in parent.children]
        try:
            while not parent.finished:
                got = await next_event(parent, events, http)
                if got is None:  # the client left
                    return Response(status_code=499)
                parts[got[0]].append(got[1])
        finally:
            abort_unfinished(parent)  # failed or left: free the KV blocks of the others
        choices = [answer_choice(engine.tokenizer, r, i, "".join(parts[i]), chat)
                   for i, r in enumerate(parent.children)]
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "choices": choices, "usage": parent.usage()}

    async def stream(parent: ParentRequest, events: asyncio.Queue, rid: str, chat: bool, with_usage: bool,
                     echo: str = ""):
        obj = "chat.completion.chunk" if chat else "text_completion"
        created_at = int(time.time())

        def chunk(i: int, text: str | None, finish: str | None, first: bool = False) -> str:
            choice = chunk_choice(engine.tokenizer, parent, i, text, finish, chat, first)
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created_at, "model": model_name,
                                          "choices": [choice]}) + "\n\n"

        try:
            for i in range(len(parent.children)):
                if chat:
                    yield chunk(i, "", None, first=True)
                if echo:
                    yield chunk(i, echo, None, first=True)
            while not parent.finished:
                # Under load several steps' events wait in the queue: one chunk per choice carries them all (the
                # per-chunk cost — JSON, SSE framing, a socket write — is what caps a busy server's tokens/s).
                texts, done, failure = {}, set(), None
                i, text, finished = await next_event(parent, events)
                while True:
                    texts[i] = texts.get(i, "") + text
                    if finished:
                        done.add(i)
                    if events.empty() or parent.finished:
                        break
                    try:
                        i, text, finished = await next_event(parent, events)
                    except Exception as e:  # send what arrived before the failure, then report it
                        failure = e
                        break
                for i, text in texts.items():
                    if text or i in done:
                        yield chunk(i, text, parent.children[i].finish_reason if i in done else None)
                if failure is not None:
                    raise failure
        except Exception as e:  # the headers are sent: the failure becomes an event (never a silent end)
            if not isinstance(e, ApiError):
                log.exception("streaming request %s failed", rid)
                e = ApiError(500, f"streaming failed ({describe_error(e)})")
            yield "data: " + json.dumps(e.body) + "\n\n"
        finally:
            # failed, or the client went away (the response was cancelled): free the KV blocks of the others
            abort_unfinished(parent)
        if with_usage and parent.finished:  # stream_options.include_usage: OpenAI's last chunk, no choices
            yield "data: " + json.dumps({"id": rid, "object": obj, "created": created_at, "model": model_name,
                                          "choices": [], "usage": parent.usage()}) + "\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/completions", responses={200: {"model": Completion, "content": STREAM}, **GENERATION_RESPONSES})
    async def completions(http: HttpRequest, body: CompletionRequest):
        check_ready(body)
        p = body.prompt
        if isinstance(p, list) and isinstance(p[0], int):  # token ids (pydantic made sure there is one)
            check_length(len(p), "tokens", "prompt")
            vocab = engine.vocab_size
            bad = next((i for i, t in enumerate(p) if t >= vocab), None)
            if bad is not None:
                raise ApiError(400, f"prompt token id {p[bad]} is outside the vocabulary: give ids in [0, {vocab})",
                               param=f"prompt.{bad}")
            ids = list(p)
            text = engine.tokenizer.decode(ids) if body.echo else ""
        else:
            text = p if isinstance(p, str) else p[0]
            check_length(len(text), "characters", "prompt")
            ids = await tokenize(engine.tokenizer.encode, text, "prompt")
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs: the prompt's log-probabilities are not returned; drop one",
                           param="echo")
        return await run(http, body, ids, "prompt", chat=False, echo=text if body.echo else "")

    @app.post("/v1/chat/completions",
              responses={200: {"model": ChatCompletion, "content": STREAM}, **GENERATION_RESPONSES})
    async def chat_completions(http: HttpRequest, body: ChatRequest):
        check_ready(body)
        check_length(sum(len(m.text()) for m in body.messages), "characters", "messages")
        ids = await tokenize(engine.tokenizer.encode_chat, [m.for_template() for m in body.messages], "messages")
        return await run(http, body, ids, "messages", chat=True)

    return app


_TIMEOUT = getattr(asyncio, "timeout", None)  # Python 3.11+


async def _next_item(queue: asyncio.Queue, timeout: float):
    """The queue's next item, or ``TimeoutError`` after ``timeout`` s. Every stream waits here once per token:
    ``asyncio.timeout`` arms one timer around the get, where ``wait_for`` also wraps the get in a new task."""
    if not queue.empty():
        return queue.get_nowait()
    if _TIMEOUT is None:
        return await asyncio.wait_for(queue.get(), timeout)
    async with _TIMEOUT(timeout):
        return await queue.get()


def _openapi(app: FastAPI, *, secured: bool) -> dict:
    """FastAPI's schema without the 422 it declares for every body (this server answers 400), and with
    the bearer scheme of ``/v1/*`` when the server has an API key."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                if secured and path.startswith("/v1/"):
                    operation["security"] = [{"bearer": []}]
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        if secured:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
    return app.openapi_schema
