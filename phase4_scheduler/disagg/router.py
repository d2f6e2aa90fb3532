"""The proxy of a disaggregated engine, and the colocated baseline behind the same offline API.

``DisaggregatedEngine`` (solution) starts a prefill and a decode worker (``workers``) once, then for each
request: send it to the prefill worker, hear its first token (TTFT), and collect its tokens from the
decode worker, which got the prompt's K/V straight from the prefill worker. ``generate_colocated``
(framework) runs the same requests through one ``BatchingEngine``, prefill chunks and decodes in the
same steps. Both take optional arrival offsets (seconds) and return ``Completion`` records.

A worker that dies (killed, crashed) or fails in its loop ends ``generate`` with a one-line
``ModelError`` and closes the engine; the router never waits on a dead pipe (it polls the workers'
liveness while it waits). ``close()`` stops both workers; it also runs at interpreter exit.
Limit: one ``generate`` at a time (offline); the per-request seeded sampling of a non-greedy request
restarts its generator on the decode side (greedy tokens equal the colocated engine's).
"""

from __future__ import annotations

import atexit
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase4_scheduler.disagg.workers import KV_FREE, ROLES, Job, WorkerSpec, serve
from phase4_scheduler.engine import BatchingConfig, BatchingEngine

START_TIMEOUT_S = 300.0  # a worker's model load (and CUDA context)
STOP_TIMEOUT_S = 10.0
POLL_S = 0.5  # how often a waiting router checks that both workers are alive


@dataclass
class Completion:
    """One request's outcome; times are ``time.perf_counter()`` values (one clock for every process).
    ``kv_bytes`` / ``transfer_s``: its prompt's K/V and the device time of the copies that moved it."""

    output_ids: list[int]
    finish_reason: str | None
    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None
    kv_bytes: int = 0
    transfer_s: float = 0.0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (DistServe's TPOT); None for one token."""
        if self.first_token_time is None or self.finish_time is None or len(self.output_ids) < 2:
            return None
        return (self.finish_time - self.first_token_time) / (len(self.output_ids) - 1)


def _schedule(n: int, max_tokens, arrivals) -> tuple[list[int], list[float]]:
    lengths = [max_tokens] * n if isinstance(max_tokens, int) else list(max_tokens)
    offsets = [0.0] * n if arrivals is None else list(arrivals)
    if len(lengths) != n or len(offsets) != n:
        raise ValueError(f"give one max_tokens and one arrival per prompt ({n} prompts)")
    return lengths, offsets


def generate_colocated(engine: BatchingEngine, prompts: list[list[int]], max_tokens: int | list[int],
                       sampling: SamplingParams = GREEDY, *, arrivals: list[float] | None = None,
                       ignore_eos: bool = False, stop: tuple[str, ...] = ()) -> list[Completion]:
    """The baseline: every request through one ``BatchingEngine``, each added at its arrival offset."""
    lengths, offsets = _schedule(len(prompts), max_tokens, arrivals)
    requests = [engine.make_request(p, n, sampling, stop=stop, ignore_eos=ignore_eos)
                for p, n in zip(prompts, lengths, strict=True)]
    order = sorted(range(len(prompts)), key=offsets.__getitem__)
    t0, i = time.perf_counter(), 0
    while i < len(order) or engine.has_unfinished():
        now = time.perf_counter() - t0
        while i < len(order) and offsets[order[i]] <= now:
            r = requests[order[i]]
            r.arrival_time = t0 + offsets[order[i]]
            engine.add(r)
            i += 1
        if engine.has_unfinished():
            engine.step()
        elif i < len(order):
            time.sleep(offsets[order[i]] - now)
    return [Completion(list(r.output_ids), r.finish_reason, r.arrival_time, r.first_token_time, r.finish_time)
            for r in requests]


class DisaggregatedEngine:
    """A prefill worker and a decode worker behind one offline ``generate``. ``model``: a directory or a
    random model's name (each worker loads it); ``decode_device``: the decode worker's, default ``device``;
    ``threads``: each worker's CPU threads."""

    def __init__(self, model: str, *, prefill: BatchingConfig, decode: BatchingConfig, dtype: str = "fp32",
                 device: str = "cpu", decode_device: str | None = None, seed: int = 0, threads: int = 1):
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked CUDA or thread state
        self.conns, self.processes = {}, {}
        atexit.register(self.close)
        kv_send, kv_recv = ctx.Pipe()  # prefill -> decode: the KV (and the job) never pass the router
        specs = {"prefill": WorkerSpec(model, dtype, device, seed, prefill, threads),
                 "decode": WorkerSpec(model, dtype, decode_device or device, seed, decode, threads)}
        try:
            for role, kv_end in zip(ROLES, (kv_send, kv_recv), strict=True):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=serve, args=(role, specs[role], child, kv_end), daemon=True,
                                name=f"titaninfer-{role}")
                p.start()
                child.close()
                self.conns[role], self.processes[role] = parent, p
            kv_send.close()
            kv_recv.close()
            for role in ROLES:
                self._expect_ready(role)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> dict[str, int]:
        return {role: p.pid for role, p in self.processes.items()}

    def _expect_ready(self, role: str) -> None:
        conn, deadline = self.conns[role], time.monotonic() + START_TIMEOUT_S
        while not conn.poll(POLL_S):
            if not self.processes[role].is_alive() or time.monotonic() > deadline:
                raise ModelError(f"the {role} worker did not start within {START_TIMEOUT_S:.0f} s or exited "
                                 "(its stderr says why)")
        status, detail = self._recv(role)
        if status != "ready":
            raise ModelError(f"the {role} worker failed to start: {detail}")

    def _dead(self) -> ModelError:
        """The error naming the worker(s) gone; the engine is closed."""
        for p in self.processes.values():
            p.join(0.5)  # a worker whose pipe just closed is about to report its exit code
        gone = [f"the {role} worker (pid {p.pid}) exited with code {p.exitcode}"
                for role, p in self.processes.items() if not p.is_alive()]
        why = "; ".join(gone) or "a worker closed its pipe"
        self.close()
        return ModelError(f"{why}: the disaggregated engine is closed, start a new one")

    def _recv(self, role: str):
        try:
            return self.conns[role].recv()
        except (EOFError, OSError):
            raise self._dead() from None

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int], sampling: SamplingParams = GREEDY, *,
                 arrivals: list[float] | None = None, ignore_eos: bool = False,
                 stop: tuple[str, ...] = ()) -> list[Completion]:
        """Every request through prefill then decode, each sent at its arrival offset; a request that cannot
        run (too long, ...) comes back with finish reason ``"error: ..."``."""
        if not self.processes:
            raise ModelError("the disaggregated engine is closed: start a new one")
        lengths, offsets = _schedule(len(prompts), max_tokens, arrivals)
        out = [Completion([], None, 0.0) for _ in prompts]
        order = sorted(range(len(prompts)), key=offsets.__getitem__)
        t0, i, open_ = time.perf_counter(), 0, len(prompts)
        by_conn = {conn: role for role, conn in self.conns.items()}
        while open_:
            now = time.perf_counter() - t0
            while i < len(order) and offsets[order[i]] <= now:
                k = order[i]
                out[k].arrival_time = t0 + offsets[k]
                try:
                    self.conns["prefill"].send(Job(k, list(prompts[k]), lengths[k], sampling, tuple(stop), ignore_eos))
                except OSError:
                    raise self._dead() from None
                i += 1
            wait_s = POLL_S if i == len(order) else min(POLL_S, max(0.0, offsets[order[i]] - now))
            ready = wait(list(by_conn), wait_s)
            if not ready and not all(p.is_alive() for p in self.processes.values()):
                raise self._dead()
            for conn in ready:
                open_ -= self._on_message(self._recv(by_conn[conn]), out)
        return out

    def kv_free(self) -> dict[str, tuple[int, int]]:
        """Each worker's (free, total) KV blocks; between ``generate`` calls all of them are free."""
        if not self.processes:
            raise ModelError("the disaggregated engine is closed: start a new one")
        out = {}
        for role in ROLES:
            try:
                self.conns[role].send(KV_FREE)
            except OSError:
                raise self._dead() from None
            _, free, total = self._recv(role)
            out[role] = (free, total)
        return out

    def _on_message(self, message, out: list[Completion]) -> int:
        """Apply a worker's message; 1 when it finished a request."""
        kind = message[0]
        if kind == "fatal":
            self.close()
            raise ModelError(f"{message[1]}: the disaggregated engine is closed, start a new one")
        if kind == "first":
            _, k, token, reason, when = message
            c = out[k]
            c.first_token_time = when
            if reason is None:  # decoding goes on (the decode worker's "done" may even have come first)
                return 0
            c.output_ids = [token] if token is not None else []
            c.finish_reason, c.finish_time = reason, when
            return 1
        _, k, ids, reason, when, transfer = message  # "done"
        c = out[k]
        c.output_ids, c.finish_reason, c.finish_time = ids, reason, when
        c.kv_bytes, c.transfer_s = transfer["kv_bytes"], transfer["export_s"] + transfer["import_s"]
        return 1

    def close(self) -> None:
        """Stop both workers (``None`` down each pipe, then terminate one that does not exit). Idempotent."""
        atexit.unregister(self.close)
        for conn in self.conns.values():
            try:
                conn.send(None)
            except OSError:  # that worker is gone already
                pass
        for p in self.processes.values():
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join(STOP_TIMEOUT_S)
        for conn in self.conns.values():
            conn.close()
        self.conns, self.processes = {}, {}

    def __enter__(self) -> "DisaggregatedEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
