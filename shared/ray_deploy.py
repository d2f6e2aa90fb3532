"""The Ray Serve deployments of ``titaninfer serve --ray``, in Ray Serve LLM's shape: ``EngineServer`` (a
replica: one ``LLMEngine``, its ``--tp`` ranks inside) and ``OpenAiIngress`` (the HTTP routes, calling the
replicas through a streaming ``DeploymentHandle``; a prefill/decode pair would be another deployment
answering ``handle_http``: the ingress is indifferent to what serves it).

A replica serves phase 4's own app (``shared.serve.build_app``) in-process: it gets the raw request and
yields its actor name, the response head, then the body as the app sends it, so validation, refusals
(400/401/404/413/429/503), JSON and SSE chunks are phase 4's, byte for byte.

A dead replica fails its calls with ``RayActorError``: the ingress retries the request elsewhere while
nothing of the answer has reached the client (``ATTEMPTS`` in all); a stream under way ends with an
error event (503) and ``[DONE]``, never a silent cut; Serve starts a replacement (also for a replica
whose engine thread died: ``check_health``). Shutdown drains at the ingress (``drain``) as phase 4's
server does. Limit: ``/metrics`` is per replica and left out (Ray's metrics cover the cluster).
"""


import asyncio
import json

import ray
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError
from starlette.exceptions import HTTPException

from phase4_scheduler.protocol import ApiError

ATTEMPTS = 3  # a request meets at most two dying replicas before the ingress gives up with a 503
RETRY_PAUSE_S = 0.2  # lets the router drop the dead replica before the next attempt
REPLICA_HEADER = "x-titaninfer-replica"  # the actor name of the replica that answered
TRIED_HEADER = "x-titaninfer-replicas-tried"  # every attempt's replica, in order ("?": died before taking it)
ANSWER_GRACE_S = 2.0  # after the drain timeout: time to write the error answers before Serve stops
DRAIN_ENDED = "the drain timeout ended this request before it finished: retry it"
ROUTES = (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
          ("GET", "/health"))


class EngineServer:
    """One engine replica: phase 4's app over one ``LLMEngine``, driven through ASGI in this process."""

    def __init__(self, config, *, max_queue: int, api_key: str | None, drain_timeout: float, threads: int):
        import torch

        from .serve import build_app

        if threads:  # a CPU replica computes on its own share of the cores, not on all of them
            torch.set_num_threads(threads)
        self.app, self.engine = build_app(config, max_queue=max_queue, api_key=api_key)
        self.loop, self.drain_timeout = self.app.state.loop, drain_timeout
        self.name = ray.get_runtime_context().get_actor_name()

    async def handle_http(self, method: str, path: str, query: bytes, headers: list, body: bytes):
        """This replica's name, the app's response head (a dict), then its body in the pieces the app sends."""
        sent: asyncio.Queue = asyncio.Queue()
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # a client that leaves cancels this call, and the app with it

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
                 "headers": headers, "client": ("ray-ingress", 0), "server": ("ray-replica", 0)}
        app = asyncio.create_task(self.app(scope, receive, sent.put))
        app.add_done_callback(lambda _: sent.put_nowait(None))
        yield self.name
        try:
            while (message := await sent.get()) is not None:
                if message["type"] == "http.response.start":
                    yield {"status": message["status"], "headers": message.get("headers", [])}
                elif message.get("body"):
                    yield message["body"]
            app.result()  # (an app that crashed before answering raises here)
        finally:
            app.cancel()  # the caller went away: the app's own cleanup aborts the request (frees its KV blocks)

    def check_health(self) -> None:
        """Serve's periodic probe: a dead engine thread makes Serve replace this replica."""
        if self.loop.error is not None:
            raise RuntimeError(f"the engine thread died: {self.loop.error!r}")

    def __del__(self):  # Serve's graceful shutdown, after the ongoing requests finished or timed out
        if getattr(self, "loop", None) is not None:
            self.loop.shutdown(drain=True, timeout=self.drain_timeout)
            self.engine.close()


# (above the ingress class: ``serve.ingress`` pickles its routes, with the globals defined by then)
def _headers(head: dict, tried: list[str]) -> dict:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head["headers"]}
    headers.pop("content-length", None)  # the ingress's response counts its own body
    return {**headers, REPLICA_HEADER: tried[-1], TRIED_HEADER: ",".join(tried)}


def _event(error: ApiError) -> str:
    return "data: " + json.dumps(error.body) + "\n\n"


def _gone(error: RayActorError) -> str:
    return f"the engine replica serving this request died ({type(error).__name__})"


ingress_app = FastAPI(title="TitanInfer on Ray Serve")


@ingress_app.exception_handler(HTTPException)
async def _refusal(request: Request, exc: HTTPException):
    message = f"no route {request.method} {request.url.path}: the API is " + ", ".join(p for _, p in ROUTES)
    return ApiError(exc.status_code, message if exc.status_code in (404, 405) else str(exc.detail)).response()


@serve.ingress(ingress_app)
class OpenAiIngress:
    """The OpenAI routes; each request goes to one engine replica (Serve's router picks the least busy
    of two) and comes back as the replica's head and body. ``drain`` is the shutdown's first step."""

    def __init__(self, server):
        self.server = server.options(stream=True)
        self.active: set = set()  # the replica calls under way (handle generators)
        self.draining = self.expired = False

    @ingress_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.forward(request)

    @ingress_app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self.forward(request)

    @ingress_app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        return await self.forward(request)

    @ingress_app.get("/health")
    async def health(self, request: Request) -> Response:
        """One replica's health (Serve itself replaces replicas that fail ``check_health``)."""
        return await self.forward(request)

    async def drain(self, timeout: float) -> int:
        """Refuse new requests (503), give those under way ``timeout`` seconds, then end the rest with an
        error answer (a stream: an error event and ``[DONE]``); how many it ended."""
        self.draining = True
        clock = asyncio.get_running_loop()
        deadline = clock.time() + timeout
        while self.active and clock.time() < deadline:
            await asyncio.sleep(0.05)
        late, self.expired = list(self.active), True
        for stream in late:
            stream.cancel()
        deadline = clock.time() + ANSWER_GRACE_S
        while self.active and clock.time() < deadline:
            await asyncio.sleep(0.05)
        return len(late)

    async def forward(self, request: Request) -> Response:
        call = (request.method, request.url.path, request.url.query.encode(), list(request.headers.raw),
                await request.body())
        if self.draining:
            return ApiError(503, "the server is shutting down and accepts no new requests").response()
        tried: list[str] = []
        for attempt in range(1, ATTEMPTS + 1):
            stream = self.server.handle_http.remote(*call)
            self.active.add(stream)
            tried.append("?")
            settled = relayed = False  # the call is over / handed to the relay (which ends it)
            try:
                tried[-1] = await stream.__anext__()
                head = await stream.__anext__()
                headers = _headers(head, tried)
                if not headers.get("content-type", "").startswith("text/event-stream"):
                    body = b"".join([chunk async for chunk in stream])
                    settled = True
                    return Response(body, status_code=head["status"], headers=headers)
                first = await anext(stream, b"")  # (a replica dying before the first event: retried too)
                settled = relayed = True
                return StreamingResponse(self.relay(stream, first), status_code=head["status"], headers=headers)
            except RayActorError as e:
                settled = True
                if attempt == ATTEMPTS:
                    return ApiError(503, f"{_gone(e)}, {ATTEMPTS} times: retry later").response()
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
            except (TaskCancelledError, asyncio.CancelledError):
                if not self.ended_by_drain(stream):
                    raise
                settled = True
                return ApiError(503, DRAIN_ENDED).response()
            finally:
                if not settled:  # the client left or the ingress failed: stop the replica's work
                    stream.cancel()
                if not relayed:
                    self.active.discard(stream)
        raise AssertionError("unreachable")

    async def relay(self, stream, first: bytes):
        finished = False
        try:
            yield first
            async for chunk in stream:
                yield chunk
            finished = True
        except RayActorError as e:  # the headers are sent: the failure becomes the stream's last event
            finished = True
            yield _event(ApiError(503, f"{_gone(e)} mid-stream: retry the request"))
            yield "data: [DONE]\n\n"
        except (TaskCancelledError, asyncio.CancelledError):
            if not self.ended_by_drain(stream):
                raise
            finished = True
            yield _event(ApiError(503, DRAIN_ENDED))
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client left: stop the replica's work
                stream.cancel()
            self.active.discard(stream)

    def ended_by_drain(self, stream) -> bool:
        """Whether a cancellation is the drain's (not this request's client leaving)."""
        return self.expired and stream.cancelled() and not asyncio.current_task().cancelling()
