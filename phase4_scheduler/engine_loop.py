"""The engine in a background thread, beside the server's event loop.

Other threads never touch the engine: ``submit`` and ``abort`` put commands in an inbox that the
engine thread drains between steps, and each request's events go to the callback given at submit
(the server's callback hands them to its event loop with ``call_soon_threadsafe``). The thread sleeps
on a condition while there is no work. ``shutdown(drain=True)`` refuses new requests and keeps
stepping until every accepted request has finished: nothing accepted is lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from phase4_scheduler.engine import Event, LLMEngine
from phase4_scheduler.request import Request


class QueueFull(RuntimeError):
    """The waiting queue is at its limit; retry later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The server is draining and takes no new requests (HTTP 503)."""


class EngineLoop:
    def __init__(self, engine: LLMEngine, *, max_queue: int = 256, on_step: Callable[[LLMEngine, float], None] | None = None):
        self.engine, self.max_queue, self.on_step = engine, max_queue, on_step
        self._inbox: deque = deque()
        self._callbacks: dict[int, Callable[[Event], None]] = {}
        self._cv = threading.Condition()
        self._accepting, self._stop = True, False
        self._pending_adds = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    # ------------------------------------------------------------------ called from other threads
    def submit(self, request: Request, callback: Callable[[Event], None]) -> None:
        with self._cv:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down and accepts no new requests")
            if self.engine.scheduler.num_waiting + self._pending_adds >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} waiting requests: retry later")
            self._pending_adds += 1
            self._inbox.append(("add", request, callback))
            self._cv.notify()

    def abort(self, request_id: int) -> None:
        with self._cv:
            self._inbox.append(("abort", request_id, None))
            self._cv.notify()

    def shutdown(self, drain: bool = True, timeout: float = 60.0) -> None:
        with self._cv:
            self._accepting = False
            if not drain:
                self._stop = True
            self._cv.notify()
        deadline = time.monotonic() + timeout
        while drain and self._thread.is_alive() and time.monotonic() < deadline:
            with self._cv:
                idle = not self._inbox and not self.engine.has_unfinished()
                if idle:
                    self._stop = True
                    self._cv.notify()
            time.sleep(0.01)
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)

    @property
    def num_waiting(self) -> int:
        return self.engine.scheduler.num_waiting + self._pending_adds

    # ------------------------------------------------------------------ the engine thread
    def _drain_inbox(self) -> None:
        with self._cv:
            commands = list(self._inbox)
            self._inbox.clear()
            self._pending_adds = 0
        for kind, item, callback in commands:
            if kind == "add":
                try:
                    self.engine.add(item)
                except ValueError as e:  # cannot fit: end it at once, the caller sees finish_reason "error"
                    item.finish_reason = f"error: {e}"
                    callback(Event(item, "", True))
                    continue
                self._callbacks[item.request_id] = callback
            elif self.engine.abort(item) is not None:
                self._callbacks.pop(item, None)

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._inbox and not self.engine.has_unfinished():
                        self._cv.wait(timeout=0.5)
                    if self._stop:
                        return
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    continue
                t0 = time.perf_counter()
                events = self.engine.step()
                for ev in events:
                    cb = self._callbacks.get(ev.request.request_id)
                    if ev.finished:
                        self._callbacks.pop(ev.request.request_id, None)
                    if cb is not None:
                        cb(ev)
                if self.on_step is not None:
                    self.on_step(self.engine, time.perf_counter() - t0)
        except BaseException as e:  # a crashed engine must not hang the clients: fail them all
            self.error = e
            for request_id, cb in list(self._callbacks.items()):
                r = self.engine.scheduler.by_id.get(request_id)
                if r is not None:
                    r.finish_reason = f"error: {type(e).__name__}: {e}"
                    cb(Event(r, "", True))
            raise
