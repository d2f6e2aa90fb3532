"""Several API server processes in front of one engine process (vLLM's ``--api-server-count``).

One Python process cannot stream tokens as fast as a GPU makes them: in phase 4's host-cost table ~90 % of a
streamed request's CPU is HTTP, JSON and SSE, not the engine. Here the engine (scheduler, runner, detokenizer)
stays in this process, ``EngineService`` beside its ``EngineLoop``, and ``n`` spawned API processes share one
listening socket (the kernel spreads connections over them). Each runs phase 4's unchanged FastAPI app over a
``RemoteLoop``, which talks to the engine through a pipe: a request goes in (made and checked in the API
process from the engine's ``RequestLimits`` and tokenizer), each step's new tokens, text and finish come back —
one message per API process per step, with the engine's gauges for ``/metrics``.
Faults stay contained: a client leaving aborts its request; an API process dying aborts its requests alone;
the engine dying ends every request with an error and the API processes exit 1, as the one-process server does.
Limits: an API process admits from the engine's last reported queue, so two may both take the last place (the
engine then ends the extra request with a ``queue`` error); per-request metrics (TTFT, finish reasons, 429s)
are each API process's own.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
import sys
import threading
import time
from functools import partial

from phase4_scheduler.engine import Event, describe_error
from phase4_scheduler.engine_loop import EngineDead, EngineLoop, QueueFull, ShuttingDown, hand_over
from phase4_scheduler.metrics import ServerMetrics, engine_stats
from phase4_scheduler.request import RemoteEngine, RequestLimits, Status

# Engine -> API process: ("events", [Delta, ...], (stats, sampled, seconds) or None) | ("dead", reason).
# A Delta is (request id in the API process, new token ids, their logprobs, new text, finished, finish reason,
# first-token time, finish time). API process -> engine: ("add", Request) | ("abort", its request id) |
# ("ready", None) once its server listens.


class _Outbox:
    """What goes to one API process: the events and step figures gathered since the last send, sent by a
    thread of its own in one message (the engine thread never waits on a pipe)."""

    def __init__(self, conn):
        self.conn, self._cv = conn, threading.Condition()
        self._items, self._step, self._dead, self._closed = [], None, None, False
        threading.Thread(target=self._run, name="api-outbox", daemon=True).start()

    def put(self, item: tuple, wake: bool = True) -> None:
        """Queue ``item``; without ``wake`` it waits for the next ``step`` (one message per step, not per token)."""
        with self._cv:
            self._items.append(item)
            if wake:
                self._cv.notify()

    def step(self, stats: tuple, sampled: int, seconds: float) -> None:
        with self._cv:
            _, s, t = self._step or (None, 0, 0.0)
            self._step = (stats, s + sampled, t + seconds)
            self._cv.notify()

    def die(self, reason: str) -> None:
        with self._cv:
            self._dead = reason
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._items or self._step or self._dead or self._closed):
                    self._cv.wait()
                if self._closed:
                    return
                items, step, dead = self._items, self._step, self._dead
                self._items, self._step = [], None
            try:
                if items or step:
                    self.conn.send(("events", items, step))
                if dead is not None:
                    self.conn.send(("dead", dead))
                    return
            except OSError:  # the API process is gone: its reader aborts its requests
                return


class EngineService:
    """The engine process's side: API process ``i``'s requests into ``loop``, their events back to it."""

    def __init__(self, loop: EngineLoop, conns: list):
        self.loop, self.conns = loop, conns
        self._boxes = [_Outbox(c) for c in conns]
        self._routes: dict[tuple[int, int], int] = {}  # (API process, its request id) -> the engine's id
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.ready = [threading.Event() for _ in conns]
        loop.on_step, loop.on_death = self._on_step, self._on_death
        for i in range(len(conns)):
            threading.Thread(target=self._read, args=(i,), name=f"api-reader-{i}", daemon=True).start()

    def _on_step(self, engine, seconds: float) -> None:  # the engine thread, after each step
        stats, sampled = engine_stats(engine), engine.last_step.num_sampled if engine.last_step else 0
        for box in self._boxes:
            box.step(stats, sampled, seconds)

    def _on_death(self, error: BaseException) -> None:
        for box in self._boxes:
            box.die(describe_error(error))

    def _read(self, i: int) -> None:
        conn = self.conns[i]
        while True:
            try:
                kind, item = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "add":
                self._add(i, item)
            elif kind == "ready":
                self.ready[i].set()
            else:
                with self._lock:
                    rid = self._routes.get((i, item))
                if rid is not None:
                    self.loop.abort(rid)
        with self._lock:  # the API process is gone: nobody reads its requests' tokens any more
            gone = [rid for (j, _), rid in self._routes.items() if j == i]
        for rid in gone:
            self.loop.abort(rid)
        self._boxes[i].close()

    def _add(self, i: int, request) -> None:
        api_rid, request.request_id = request.request_id, next(self._ids)  # ids are unique per process only
        with self._lock:
            self._routes[(i, api_rid)] = request.request_id
        try:
            self.loop.submit(request, partial(self._deliver, i, api_rid, [0, 0]))
        except (QueueFull, ShuttingDown, EngineDead) as e:
            with self._lock:
                del self._routes[(i, api_rid)]
            self._boxes[i].put((api_rid, [], [], "", True, f"error: {e}", None, time.perf_counter()))

    def _deliver(self, i: int, api_rid: int, sent: list[int], ev: Event) -> None:  # the engine thread
        r = ev.request
        new, logprobs = r.output_ids[sent[0]:], r.token_logprobs[sent[1]:]
        sent[0], sent[1] = len(r.output_ids), len(r.token_logprobs)
        if ev.finished:
            with self._lock:
                self._routes.pop((i, api_rid), None)
        # A token event comes from a step, whose on_step wakes the sender; a finish may come from outside one
        # (a refused add, the drain deadline), so it wakes the sender itself.
        self._boxes[i].put((api_rid, new, logprobs, ev.text, ev.finished, r.finish_reason, r.first_token_time,
                            r.finish_time), wake=ev.finished)


class RemoteLoop:
    """``EngineLoop``'s interface to the server (submit, abort, drain, death) over a pipe to ``EngineService``."""

    def __init__(self, conn, engine: RemoteEngine, max_queue: int, metrics: ServerMetrics):
        self.conn, self.engine, self.max_queue, self.metrics = conn, engine, max_queue, metrics
        self.on_step = None  # (the engine's steps reach ``metrics`` from the engine process)
        self._on_death = None
        self.error: BaseException | None = None
        self._accepting, self._waiting, self._sent_since = True, 0, 0
        self._requests: dict[int, tuple] = {}  # request id -> (request, callback, event loop)
        self._lock, self._send_lock = threading.Lock(), threading.Lock()
        threading.Thread(target=self._receive, name="engine-pipe", daemon=True).start()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def on_death(self):
        return self._on_death

    @on_death.setter
    def on_death(self, hook) -> None:
        """Set by the server; if the engine died before (while this process was starting), it runs now."""
        with self._lock:
            self._on_death, dead = hook, self.error
        if dead is not None and hook is not None:
            hook(dead)

    def ready(self) -> None:
        """Tell the engine process this server listens."""
        self._send(("ready", None))

    @property
    def num_waiting(self) -> int:
        return self._waiting + self._sent_since

    def _send(self, message: tuple) -> bool:
        """Whether ``message`` went out (False once the engine process is gone: its death is on its way)."""
        try:
            with self._send_lock:
                self.conn.send(message)
        except OSError:
            return False
        return True

    def submit(self, request, callback, event_loop=None) -> None:
        with self._lock:
            if self.error is not None:
                raise EngineDead(f"the engine stopped ({describe_error(self.error)}): restart the server")
            if not self._accepting:
                raise ShuttingDown("the server is shutting down and accepts no new requests")
            if self.num_waiting >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} waiting requests: retry later")
            self._requests[request.request_id] = (request, callback, event_loop)
            self._sent_since += 1
        if not self._send(("add", request)):
            with self._lock:
                self._requests.pop(request.request_id, None)
            raise EngineDead("the engine process is gone: restart the server")

    def abort(self, request_id: int) -> None:
        with self._lock:
            live = self._requests.pop(request_id, None) is not None
        if live:
            self._send(("abort", request_id))

    def stop_accepting(self, drain_timeout: float | None = None) -> None:
        """No new requests; with ``drain_timeout``, this process's requests unfinished that many seconds later
        end with an error event (aborted in the engine)."""
        self._accepting = False
        if drain_timeout is not None:
            timer = threading.Timer(drain_timeout, self._fail_all, args=(
                "error: the server stopped before this request finished (drain timeout)", True))
            timer.daemon = True
            timer.start()

    def shutdown(self, drain: bool = True, timeout: float = 60.0) -> None:
        self.stop_accepting(timeout if drain else 0.0)
        deadline = time.monotonic() + (timeout if drain else 0.0) + 5
        while self._requests and time.monotonic() < deadline:
            time.sleep(0.02)

    def _receive(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = ("dead", "the engine process is gone")
            if message[0] == "dead":
                with self._lock:
                    self.error, self._accepting, hook = RuntimeError(message[1]), False, self._on_death
                self._fail_all(f"error: the engine stopped: {message[1]}", False)
                if hook is not None:
                    hook(self.error)
                return
            _, items, step = message
            if step is not None:
                self.metrics.record_step(*step)
                self._waiting, self._sent_since = step[0][0], 0
            self._apply(items)

    def _apply(self, items: list[tuple]) -> None:
        pairs = []
        with self._lock:
            for rid, new, logprobs, text, finished, reason, first, end in items:
                entry = self._requests.get(rid)
                if entry is None:  # aborted here meanwhile
                    continue
                r = entry[0]
                r.output_ids += new
                r.token_logprobs += logprobs
                r.first_token_time = first if first is not None else r.first_token_time
                if finished:
                    r.status, r.finish_reason, r.finish_time = Status.FINISHED, reason, end
                    del self._requests[rid]
                pairs.append(((entry[1], entry[2]), Event(r, text, finished)))
        hand_over(pairs)

    def _fail_all(self, reason: str, abort: bool) -> None:
        with self._lock:
            entries, self._requests = list(self._requests.values()), {}
        for r, _, _ in entries:
            r.status, r.finish_reason, r.finish_time = Status.FINISHED, reason, time.perf_counter()
            if abort:
                self._send(("abort", r.request_id))
        hand_over([((callback, event_loop), Event(r, "", True)) for r, callback, event_loop in entries])


def _api_process(sock, conn, tokenizer, limits: RequestLimits, model_name: str, max_queue: int,
                 options: dict) -> None:
    """One API process: phase 4's app over a ``RemoteLoop``, served on the shared socket until drained (exit 0)
    or the engine dies (exit 1)."""
    from phase4_scheduler.serve import DrainingServer
    from phase4_scheduler.server import create_app

    metrics = ServerMetrics()
    loop = RemoteLoop(conn, RemoteEngine(tokenizer, limits), max_queue, metrics)
    extra = {"api_key": options["api_key"]} if options.get("api_key") else {}
    app = create_app(loop, model_name, metrics=metrics, **extra)
    server = DrainingServer(app, loop, drain_timeout=options["drain_timeout"], log_level=options["log_level"])

    def tell_ready() -> None:
        while not (server.started or server.should_exit):
            time.sleep(0.01)
        if server.started:
            loop.ready()

    threading.Thread(target=tell_ready, name="ready", daemon=True).start()
    server.run(sockets=[sock])
    sys.exit(1 if server.death is not None else 0)


class ApiServers:
    """``count`` API processes over ``loop``'s engine on ``host``:``port`` (0: a free one, in ``url``)."""

    def __init__(self, loop: EngineLoop, model_name: str, count: int, *, host: str = "127.0.0.1", port: int = 0,
                 max_queue: int = 256, api_key: str | None = None, drain_timeout: float = 30.0,
                 log_level: str = "warning"):
        from phase4_scheduler.serve import listen

        if count < 1:
            raise ValueError(f"--api-server-count must be >= 1, got {count}")
        self.loop, self.sock = loop, listen(host, port)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.sock.getsockname()[1]}"
        ends = [mp.Pipe() for _ in range(count)]
        self.service = EngineService(loop, [mine for mine, _ in ends])
        engine, ctx = loop.engine, mp.get_context("spawn")
        options = {"api_key": api_key, "drain_timeout": drain_timeout, "log_level": log_level}
        self.processes = [ctx.Process(target=_api_process, name=f"titaninfer-api-{i}", args=(
            self.sock, theirs, engine.tokenizer, engine.request_limits(), model_name, max_queue, options))
            for i, (_, theirs) in enumerate(ends)]
        for p in self.processes:
            p.start()
        for _, theirs in ends:
            theirs.close()
        # The children hold the listening socket now: once they all stop listening (a drain), new connections
        # are refused at once instead of waiting in a backlog nobody accepts from.
        self.sock.close()

    def wait_ready(self, timeout: float = 60.0) -> "ApiServers":
        """Until every API process serves (``RuntimeError`` when one exits first or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while not all(e.is_set() for e in self.service.ready):
            if any(not p.is_alive() for p in self.processes) or time.monotonic() > deadline:
                raise RuntimeError(f"the API processes did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (each process drains) and wait; the worst exit code."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> int:
        for p in self.processes:
            p.join(timeout)
        return max((p.exitcode or 0) if p.exitcode is not None else 1 for p in self.processes)


def run_api_servers(loop: EngineLoop, model_name: str, count: int, *, host: str, port: int, max_queue: int,
                    api_key: str | None, drain_timeout: float, log_level: str, announce) -> int:
    """The CLI's ``serve --api-server-count N``: serve until SIGTERM / Ctrl-C (drained, 0) or the engine's death
    (1); ``announce(url)`` once the socket listens."""
    from phase0_prototype.errors import ModelError

    servers = ApiServers(loop, model_name, count, host=host, port=port, max_queue=max_queue, api_key=api_key,
                         drain_timeout=drain_timeout, log_level=log_level)
    try:
        servers.wait_ready(timeout=300)
    except RuntimeError as e:
        servers.stop(timeout=10)
        raise ModelError(f"{e}: see the API processes' messages above") from None
    announce(servers.url)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the API processes too: they drain themselves
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in servers.processes if p.is_alive()])
    code = servers.wait()
    loop.shutdown(drain=True, timeout=drain_timeout)
    if loop.error is not None:
        print(f"error: the engine stopped ({describe_error(loop.error)}): the server exits for a restart",
              file=sys.stderr)
        return 1
    return code
