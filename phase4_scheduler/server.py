"""The OpenAI-compatible HTTP server: FastAPI routes in front of the engine loop's thread.

Each request becomes an engine ``Request``; the engine thread hands its events to this event loop
through an ``asyncio.Queue`` (``call_soon_threadsafe``). Streaming answers are server-sent events in
OpenAI's chunk format ending with ``data: [DONE]``. A client that goes away (the stream is cancelled,
or ``is_disconnected`` turns true while a plain request waits) gets its request aborted, which frees
its KV blocks. Errors follow OpenAI's JSON: 400 validation and context length, 404 unknown model,
429 full queue (with Retry-After), 503 while draining.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import SamplingParams
from phase4_scheduler.engine_loop import EngineLoop, QueueFull, ShuttingDown
from phase4_scheduler.metrics import ServerMetrics
from phase4_scheduler.protocol import (
    ChatRequest,
    CompletionRequest,
    SamplingFields,
    error,
    validation_message,
)

DEFAULT_MAX_TOKENS = 16
POLL_DISCONNECT_S = 0.1


def create_app(loop: EngineLoop, model_name: str, *, metrics: ServerMetrics | None = None) -> FastAPI:
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

    @app.exception_handler(RequestValidationError)
    async def on_validation(_, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return error(400, message, param=param)

    @app.get("/health")
    async def health():
        if loop.error is not None:
            return error(503, f"engine stopped: {loop.error}", type_="server_error")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "titaninfer"}]}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(loop.num_waiting)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    def make(body: SamplingFields, prompt_ids: list[int]):
        """The engine request, or an error response."""
        if body.model != model_name:
            return error(404, f"The model '{body.model}' does not exist; this server serves '{model_name}'",
                         param="model", code="model_not_found")
        if not prompt_ids:
            return error(400, "the prompt is empty: give at least one token", param="prompt")
        max_tokens = body.max_tokens or min(DEFAULT_MAX_TOKENS, max(engine.context_limit() - len(prompt_ids), 1))
        try:
            sampling = SamplingParams(body.temperature, body.top_k, body.top_p, body.seed)
            return engine.make_request(prompt_ids, max_tokens, sampling, stop=body.stop_strings(),
                                       priority=body.priority, ignore_eos=body.ignore_eos)
        except ValueError as e:
            return error(400, str(e), param="max_tokens", code="context_length_exceeded")
        except ModelError as e:
            return error(400, str(e))

    async def run(http: HttpRequest, body: SamplingFields, prompt_ids: list[int], chat: bool):
        r = make(body, prompt_ids)
        if isinstance(r, Response):
            return r
        events: asyncio.Queue = asyncio.Queue()
        aloop = asyncio.get_running_loop()

        def deliver(ev):  # engine thread
            if ev.finished:
                metrics.on_finish(ev.request)
            aloop.call_soon_threadsafe(events.put_nowait, ev)

        try:
            loop.submit(r, deliver)
        except QueueFull as e:
            metrics.rejected.inc()
            return error(429, str(e), type_="rate_limit_error", headers={"Retry-After": "1"})
        except ShuttingDown as e:
            return error(503, str(e), type_="server_error")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            return StreamingResponse(stream(r, events, rid, chat), media_type="text/event-stream")
        return await complete(http, r, events, rid, chat)

    async def complete(http: HttpRequest, r, events: asyncio.Queue, rid: str, chat: bool):
        parts = []
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), POLL_DISCONNECT_S)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    loop.abort(r.request_id)
                    return Response(status_code=499)
                continue
            parts.append(ev.text)
            if ev.finished:
                break
        if (r.finish_reason or "").startswith("error"):
            return error(500, r.finish_reason, type_="server_error")
        text = "".join(parts)
        choice = {"index": 0, "finish_reason": r.finish_reason, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "choices": [choice], "usage": usage(r)}

    async def stream(r, events: asyncio.Queue, rid: str, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        created_at = int(time.time())

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created_at, "model": model_name,
                                          "choices": [choice]}) + "\n\n"

        finished = False
        try:
            if chat:
                yield chunk("", None, first=True)
            while not finished:
                ev = await events.get()
                finished = ev.finished
                reason = r.finish_reason if finished else None
                if ev.text or finished:
                    yield chunk(ev.text, reason)
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away (the response was cancelled): free its KV blocks
                loop.abort(r.request_id)

    @app.post("/v1/completions")
    async def completions(http: HttpRequest, body: CompletionRequest):
        p = body.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            if len(p) != 1:
                return error(400, "give one prompt per request (a list of several prompts is not supported)",
                             param="prompt")
            p = p[0]
        if isinstance(p, list):
            vocab = engine.model.config.vocab_size
            if any(not 0 <= t < vocab for t in p):
                return error(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            ids = list(p)
        else:
            ids = engine.tokenizer.encode(p)
        return await run(http, body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest, body: ChatRequest):
        try:
            ids = engine.tokenizer.encode_chat([m.model_dump() for m in body.messages])
        except ModelError as e:
            return error(400, str(e), param="messages")
        return await run(http, body, ids, chat=True)

    return app


def usage(r) -> dict:
    return {"prompt_tokens": len(r.prompt_ids), "completion_tokens": len(r.output_ids),
            "total_tokens": len(r.prompt_ids) + len(r.output_ids)}
