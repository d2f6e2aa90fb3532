"""The engine in a background thread, beside the server's event loop.

Other threads never touch the engine: ``submit`` and ``abort`` put commands in an inbox that the
engine thread drains between steps, and each request's events go to the callback given at submit. The
thread sleeps on a condition while there is no work. Event text is decoded here, before the callback.

Delivery: a callback submitted with its asyncio ``event_loop`` (the server's) runs on that loop; a step's
events for one loop cross in ONE ``call_soon_threadsafe`` (each such call writes to the loop's wake-up pipe
and hands the GIL over: one per token costs more than the step at hundreds of streams). A callback without
a loop runs on the engine thread.

Faults: what fails for one request (adding it, sampling or decoding it, its callback) ends that request
alone with a finished event whose ``finish_reason`` is ``"error: ..."``. What fails for the engine as a
whole (a step) kills the loop: every waiting request — registered or still in the inbox — gets that
finished error event at once, ``error`` holds the exception, ``submit`` raises ``EngineDead`` and
``on_death(error)`` runs (the server process exits non-zero so that a supervisor restarts it).

Stopping: ``stop_accepting(drain_timeout)`` refuses new requests (``ShuttingDown``) while the accepted
ones run on; those unfinished ``drain_timeout`` seconds later end with an error event, so none waits
forever. ``shutdown`` does that, then ends the thread once nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Callable

from phase0_prototype.errors import ModelError
from phase4_scheduler.engine import BatchingEngine, Event, describe_error
from phase4_scheduler.request import Request

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The waiting queue is at its limit; retry later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The server is draining and takes no new requests (HTTP 503)."""


class EngineDead(RuntimeError):
    """The engine thread stopped on an error and serves nothing more (HTTP 503; restart the server)."""


Callback = Callable[[Event], None]
Target = tuple[Callback, "asyncio.AbstractEventLoop | None"]  # a callback and the event loop it runs on


def _run_all(pairs: list[tuple[Callback, Event]]) -> None:
    """One step's events, on their event loop's thread (a failing callback must not starve the others)."""
    for callback, ev in pairs:
        try:
            callback(ev)
        except Exception:
            log.exception("delivering an event failed")


def hand_over(pairs: list[tuple[Target, Event]]) -> list[Event]:
    """Every event to its callback — one hand-over per event loop, in order — and the events that could
    not be delivered (a callback that raised on this thread, an event loop already closed)."""
    failed, by_loop = [], {}
    for (callback, event_loop), ev in pairs:
        if event_loop is not None:
            by_loop.setdefault(event_loop, []).append((callback, ev))
            continue
        try:
            callback(ev)
        except Exception:
            failed.append(ev)
    for event_loop, group in by_loop.items():
        try:
            event_loop.call_soon_threadsafe(_run_all, group)
        except RuntimeError:  # its loop is closed: nobody waits for these events any more
            failed += [ev for _, ev in group]
    return failed


class EngineLoop:
    def __init__(self, engine: BatchingEngine, *, max_queue: int = 256,
                 on_step: Callable[[BatchingEngine, float], None] | None = None,
                 on_death: Callable[[BaseException], None] | None = None):
        if not (isinstance(max_queue, int) and max_queue >= 1):
            raise ModelError(f"max_queue (--max-queue) must be an integer >= 1, got {max_queue}")
        self.engine, self.max_queue, self.on_step, self.on_death = engine, max_queue, on_step, on_death
        self._inbox: deque = deque()
        self._callbacks: dict[int, tuple[Request, Target]] = {}  # the added, unfinished requests
        self._cv = threading.Condition()
        self._accepting, self._stop_when_idle = True, False
        self._deadline: float | None = None  # drain: unfinished requests fail past this (monotonic)
        self._pending_adds = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    # ------------------------------------------------------------------ called from other threads
    def submit(self, request: Request, callback: Callback,
               event_loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Queue ``request``; its events go to ``callback``, run on ``event_loop`` when given (module docstring)."""
        with self._cv:
            if self.error is not None:
                raise EngineDead(f"the engine stopped ({describe_error(self.error)}): restart the server")
            if not self._accepting:
                raise ShuttingDown("the server is shutting down and accepts no new requests")
            if self.engine.scheduler.num_waiting + self._pending_adds >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} waiting requests: retry later")
            self._pending_adds += 1
            self._inbox.append(("add", request, (callback, event_loop)))
            self._cv.notify()

    def abort(self, request_id: int) -> None:
        with self._cv:
            self._inbox.append(("abort", request_id, None))
            self._cv.notify()

    def stop_accepting(self, drain_timeout: float | None = None) -> None:
        """From now on ``submit`` raises ``ShuttingDown``; the accepted requests go on. With
        ``drain_timeout``, those still unfinished that many seconds later end with an error event."""
        with self._cv:
            self._accepting = False
            if drain_timeout is not None:
                deadline = time.monotonic() + drain_timeout
                self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._cv.notify()

    def shutdown(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stop the thread once every accepted request has finished: with ``drain``, they get up to
        ``timeout`` seconds; without, they end at once (an error event each)."""
        self.stop_accepting(timeout if drain else 0.0)
        with self._cv:
            self._stop_when_idle = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join((timeout if drain else 0.0) + 10)

    @property
    def accepting(self) -> bool:
        """False once draining (``stop_accepting``) or dead: a request failing now is the shutdown's doing."""
        return self._accepting

    @property
    def num_waiting(self) -> int:
        return self.engine.scheduler.num_waiting + self._pending_adds

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # the engine as a whole failed: nobody may wait for it
            self._die(e)

    def _serve(self) -> None:
        engine = self.engine
        while True:
            with self._cv:
                while not (self._inbox or engine.has_unfinished() or self._stop_when_idle):
                    self._cv.wait(timeout=0.5)
                if self._stop_when_idle and not self._inbox and not engine.has_unfinished():
                    return
                past_deadline = self._deadline is not None and time.monotonic() >= self._deadline
            if past_deadline:
                self._fail_all("error: the server stopped before this request finished (drain timeout)")
            self._drain_inbox()
            if not engine.has_unfinished():
                continue
            t0 = time.perf_counter()
            self._deliver(engine.step())
            if self.on_step is not None:
                self.on_step(engine, time.perf_counter() - t0)

    def _drain_inbox(self) -> None:
        with self._cv:
            commands = list(self._inbox)
            self._inbox.clear()
            self._pending_adds = 0
        for kind, item, callback in commands:
            if kind == "add":
                try:
                    self.engine.add(item)
                except Exception as e:  # cannot fit, bad parameters...: this request alone ends
                    hand_over([(callback, Event(self.engine.fail(item, e), "", True))])
                    continue
                self._callbacks[item.request_id] = (item, callback)
            elif self.engine.abort(item) is not None:
                self._callbacks.pop(item, None)

    def _deliver(self, events) -> None:
        pairs = []
        for ev in events:
            r = ev.request
            entry = self._callbacks.get(r.request_id)
            if entry is None:  # aborted
                continue
            try:
                _ = ev.text  # decode here: a tokenizer failure is this request's alone
            except Exception as e:
                ev = Event(self.engine.fail(r, e), "", True)
            if ev.finished:
                del self._callbacks[r.request_id]
            pairs.append((entry[1], ev))
        for ev in hand_over(pairs):  # a broken callback: stop its request
            if not ev.finished and self._callbacks.pop(ev.request.request_id, None) is not None:
                self.engine.fail(ev.request, RuntimeError("its event callback failed"))

    def _take_waiting(self) -> list[tuple[Request, Target]]:
        """Every accepted, unfinished request (registered and still in the inbox), forgotten here."""
        with self._cv:
            commands = list(self._inbox)
            self._inbox.clear()
            self._pending_adds = 0
        waiting = list(self._callbacks.values()) + [(r, cb) for kind, r, cb in commands if kind == "add"]
        self._callbacks.clear()
        return waiting

    def _fail_all(self, reason: str) -> None:
        pairs = []
        for r, callback in self._take_waiting():
            self.engine.abort(r.request_id)
            r.finish_reason = reason
            pairs.append((callback, Event(r, "", True)))
        hand_over(pairs)

    def _die(self, error: BaseException) -> None:
        with self._cv:
            self.error, self._accepting = error, False
        reason = f"error: the engine stopped: {describe_error(error)}"
        pairs = []
        for r, callback in self._take_waiting():  # the engine's state is suspect: only tell the clients
            r.finish_reason = reason
            pairs.append((callback, Event(r, "", True)))
        hand_over(pairs)
        if self.on_death is not None:
            with contextlib.suppress(Exception):
                self.on_death(error)
