"""Prefill/decode disaggregation on Ray Serve (``serve --ray --pd``), in Ray Serve LLM's PD shape.

Three deployments behind the unchanged ``OpenAiIngress``: ``PrefillServer`` (an ``LLMEngine``: runs a
request's prompt with ``keep_kv``, samples the first token, exports the prompt's K/V with phase 4's
``export_kv``, ``ray.put``s it, then ``release_kv``), ``DecodeServer`` (an ``LLMEngine``: pulls the
payload from the object store, ``add_prefilled`` imports it into the blocks its scheduler allocated, and
streams the text) and ``PDFront``, which answers the ingress's ``handle_http`` with phase 4's own app
(``server.create_app``: validation, 4xx, JSON and SSE byte for byte) over ``PDLoop``, a stand-in for
phase 4's ``EngineLoop`` that sends each request to prefill then decode instead of to a local engine.
The front asks the decode side for its tokenizer and limits on its first request: it loads no weights.

Limits: the KV crosses on CPU through Ray's object store (a GPU engine copies it to the host and back;
NIXL/RDMA between GPUs is not done); the first token's text reaches the client with the decode side's
first step, not at prefill; seeded sampling restarts its generator on the decode side (greedy equals
the colocated engine); a dead prefill or decode replica fails its requests with a 500 (the ingress
retries only a dead front), and ``/metrics`` is left out.
"""

from __future__ import annotations

import asyncio
import dataclasses

import ray

from phase4_scheduler.disagg.kv_transfer import export_kv, import_kv
from phase4_scheduler.engine import BatchingEngine, Event, error_reason
from phase4_scheduler.engine_loop import EngineLoop, QueueFull, ShuttingDown
from phase4_scheduler.request import RemoteEngine
from phase4_scheduler.text_stream import TextStream

from .ray_deploy import EngineServer


def _spec(r) -> dict:
    """What a PD side needs to rebuild the front's request with its own engine's ``make_request``."""
    return {"prompt_ids": list(r.prompt_ids), "max_tokens": r.max_tokens, "sampling": r.sampling, "stop": r.stop,
            "priority": r.priority, "ignore_eos": not r.eos_ids, "processing": r.processing}


class PDEngine:
    """A ``BatchingEngine`` as ``EngineLoop`` drives it, for a PD side: a request with a KV loader in
    ``loads`` is added prefilled, and an aborted request's kept KV blocks (``keep_kv``) are freed too."""

    def __init__(self, engine: BatchingEngine):
        self.engine, self.loads = engine, {}

    def add(self, request):
        load = self.loads.pop(request.request_id, None)
        return self.engine.add(request) if load is None else self.engine.add_prefilled(request, load)

    def abort(self, request_id: int):
        request = self.engine.abort(request_id)
        self.engine.release_kv(request_id)
        return request

    def __getattr__(self, name):  # everything else is the engine's
        return getattr(self.engine, name)


class PDSide:
    """One side's engine: an ``LLMEngine``'s batched path in phase 4's ``EngineLoop`` thread."""

    def __init__(self, config, *, max_queue: int, drain_timeout: float, threads: int):
        import torch

        from .engine import LLMEngine

        if threads:  # a CPU side computes on its own share of the cores
            torch.set_num_threads(threads)
        self.llm = LLMEngine(config)
        self.engine = PDEngine(self.llm.batched)
        if self.engine.runner.graphs is not None:
            self.engine.runner.graphs.warmup()
        self.loop, self.drain_timeout = EngineLoop(self.engine, max_queue=max_queue).start(), drain_timeout

    def describe(self) -> dict:
        """What the front needs to check and tokenize requests as this engine would."""
        return {"tokenizer": self.engine.tokenizer, "limits": self.engine.request_limits()}

    def kv_free(self) -> tuple[int, int]:
        """(free, total) KV blocks; with no request under way all of them are free."""
        return self.engine.blocks.num_free_gpu_blocks, self.engine.blocks.num_gpu_blocks

    def check_health(self) -> None:
        if self.loop.error is not None:
            raise RuntimeError(f"the engine thread died: {self.loop.error!r}")

    def __del__(self):
        if getattr(self, "loop", None) is not None:
            self.loop.shutdown(drain=True, timeout=self.drain_timeout)
            self.llm.close()


class PrefillServer(PDSide):
    async def prefill(self, spec: dict) -> dict:
        """Run the prompt, sample the first token: ``{first, reason, text, kv}``; ``reason`` None means
        decoding goes on from ``kv`` (``[ObjectRef]`` of a ``KVPayload``), else the request ended here."""
        engine, aloop, done = self.engine, asyncio.get_running_loop(), asyncio.Event()
        r = engine.make_request(**spec)
        wanted, r.max_tokens, r.keep_kv = r.max_tokens, 1, True
        out: dict = {}

        def on_event(ev) -> None:  # the engine thread: the blocks are still this request's until released
            if not ev.finished:
                return
            try:
                out.update(first=r.output_ids[0] if r.output_ids else None, reason=r.finish_reason, text=ev.text)
                if r.finish_reason == "length" and wanted > 1:
                    out.update(reason=None, payload=export_kv(engine.runner.kv, engine.blocks.block_table(
                        r.request_id), len(r.prompt_ids)))
            except Exception as e:  # noqa: BLE001 - this request's failure, told to its caller
                out.update(reason=error_reason(e), payload=None)
            finally:
                engine.release_kv(r.request_id)
                aloop.call_soon_threadsafe(done.set)

        self.loop.submit(r, on_event)
        try:
            await done.wait()
        except asyncio.CancelledError:  # the front gave up on it: free its blocks
            self.loop.abort(r.request_id)
            raise
        payload = out.pop("payload", None)
        if payload is None:
            return {**out, "kv": None}
        host = dataclasses.replace(payload, kv=payload.kv.cpu())  # (the object store holds host memory)
        return {**out, "kv": [ray.put(host)]}  # (in a list: Serve passes it on as a reference)


class DecodeServer(PDSide):
    async def decode(self, spec: dict, first: int, kv: list):
        """Decode a prefilled request from its first token and the K/V in ``kv[0]`` (an ``ObjectRef``):
        ``(text, finished, finish_reason, output_ids when finished)`` per step."""
        payload = await kv[0]
        engine, aloop, events = self.engine, asyncio.get_running_loop(), asyncio.Queue()
        r = engine.make_request(**spec)
        r.output_ids.append(first)
        r.num_computed = len(r.prompt_ids)
        # add_prefilled feeds the first token to a stop-string matcher and drops its text: recompute it
        lead = TextStream(engine.tokenizer, r.stop, r.eos_ids).push(first)[0] if r.stop else ""
        engine.loads[r.request_id] = lambda caches, table: import_kv(caches, table, payload)
        try:
            self.loop.submit(r, lambda ev: events.put_nowait((ev.text, ev.finished)), aloop)  # (run on aloop)
        except BaseException:
            engine.loads.pop(r.request_id, None)
            raise
        finished = False
        try:
            while not finished:
                text, finished = await events.get()
                yield lead + text, finished, r.finish_reason, list(r.output_ids) if finished else None
                lead = ""
        finally:
            if not finished:  # the front went away: free its blocks
                self.loop.abort(r.request_id)


class PDLoop:
    """Phase 4's ``EngineLoop`` interface over the prefill and decode deployments: ``submit`` starts a
    task (prefill, then decode) that hands the app phase 4's ``Event``s; ``abort`` cancels it."""

    def __init__(self, engine, prefill, decode, *, max_queue: int):
        self.engine, self.prefill, self.decode = engine, prefill, decode
        self.decoding = decode.options(stream=True)  # (its tokens as they come)
        self.max_queue, self.tasks = max_queue, {}
        self.error, self.accepting, self.on_step = None, True, None

    @property
    def num_waiting(self) -> int:
        return len(self.tasks)

    def submit(self, request, callback, event_loop=None) -> None:
        """(``event_loop``: the app's, where the request's task — and so ``callback`` — runs anyway.)"""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down and accepts no new requests")
        if len(self.tasks) >= self.max_queue:
            raise QueueFull(f"the queue holds {self.max_queue} requests: retry later")
        self.tasks[request.request_id] = asyncio.get_running_loop().create_task(self.serve(request, callback))

    def abort(self, request_id: int) -> None:
        task = self.tasks.pop(request_id, None)
        if task is not None:
            task.cancel()  # the Serve calls under way are cancelled, and the sides abort the request

    def shutdown(self, drain: bool = True, timeout: float = 60.0) -> None:
        self.accepting = False  # (the ingress drains; each side drains its own engine at its shutdown)

    async def serve(self, r, callback) -> None:
        spec = _spec(r)
        try:
            head = await self.prefill.prefill.remote(spec)
            r.output_ids[:] = [] if head["first"] is None else [head["first"]]
            if head["reason"] is not None:  # EOS, a stop string, max_tokens 1 or an error: it ends here
                r.finish_reason = head["reason"]
                callback(Event(r, head["text"], True))
                return
            async for text, finished, reason, ids in self.decoding.decode.remote(spec, head["first"], head["kv"]):
                r.finish_reason = reason
                if ids is not None:
                    r.output_ids[:] = ids
                callback(Event(r, text, finished))
        except Exception as e:  # noqa: BLE001 - a side failed this request: the app answers 500
            r.finish_reason = error_reason(getattr(e, "cause", None) or e)
            callback(Event(r, "", True))
        finally:
            self.tasks.pop(r.request_id, None)


class PDFront(EngineServer):
    """Phase 4's app over ``PDLoop``, answering ``handle_http`` as an ``EngineServer`` replica does."""

    def __init__(self, prefill, decode, *, model_name: str, max_queue: int, api_key: str | None):
        self.model_name, self.api_key = model_name, api_key
        self.loop = PDLoop(None, prefill, decode, max_queue=max_queue)  # its engine: at the first request
        self.app, self.starting = None, asyncio.Lock()
        self.name = ray.get_runtime_context().get_actor_name()

    async def handle_http(self, method: str, path: str, query: bytes, headers: list, body: bytes):
        async with self.starting:  # the app is built on the first request: the sides' limits come from them
            if self.app is None:
                self.app = await self.build()
        async for piece in super().handle_http(method, path, query, headers, body):
            yield piece

    async def build(self):
        from phase4_scheduler.server import create_app

        prefill, decode = await self.loop.prefill.describe.remote(), await self.loop.decode.describe.remote()
        limits = dataclasses.replace(decode["limits"], context_limit=min(prefill["limits"].context_limit,
                                                             decode["limits"].context_limit))
        self.loop.engine = RemoteEngine(decode["tokenizer"], limits)
        extra = {"api_key": self.api_key} if self.api_key is not None else {}
        return create_app(self.loop, self.model_name, **extra)

    def __del__(self):  # the ingress drained the requests; each side drains its own engine
        self.loop.shutdown()


def build_pd_application(config, spec, *, device: str, cpus: float, max_queue: int = 256,
                         api_key: str | None = None, drain_timeout: float = 30.0):
    """The Serve application of ``--ray --pd``: ``OpenAiIngress`` -> ``PDFront`` -> ``PrefillServer`` and
    ``DecodeServer`` (each ``spec``'s replicas; on CPU the cores are shared between the two sides)."""
    from ray import serve

    from .ray_deploy import OpenAiIngress
    from .ray_serve import deployment_options

    options = deployment_options(spec, config, device=device, cpus=cpus / 2, drain_timeout=drain_timeout)
    threads = options["ray_actor_options"]["num_cpus"] if device == "cpu" else 0
    sides = [serve.deployment(cls, name=cls.__name__, **options).bind(
        config, max_queue=max_queue, drain_timeout=drain_timeout, threads=threads)
        for cls in (PrefillServer, DecodeServer)]
    # the front and the ingress only relay: no CPU of their own reserved, no cap below the sides' queues
    relay = {"num_replicas": 1, "max_ongoing_requests": 100_000, "ray_actor_options": {"num_cpus": 0}}
    front = serve.deployment(PDFront, **relay).bind(*sides, model_name=config.model, max_queue=max_queue,
                                                    api_key=api_key)
    return serve.deployment(OpenAiIngress, **relay).bind(front)
