"""Starting the server: build the engine for a ``--model``, warm it up (``warm_up``: every kernel and graph
a request can need, before the port opens), run uvicorn (in the foreground for the CLI, in a thread for
tests, benchmarks and the notebook), stop it draining.

``DrainingServer`` is uvicorn that drains: at SIGTERM / SIGINT (or ``drain()``) the engine loop stops
admitting at once (new requests get 503) while the accepted ones finish; those still unfinished after
``drain_timeout`` seconds end with an error answer, and uvicorn's own graceful timeout (a little
longer) only cancels what is left after that. A drained server exits normally (uvicorn's own re-raises
the signal after its shutdown, which kills the process). If the engine thread dies, the server stops
and ``death`` holds why: ``run_foreground`` returns 1 so that a supervisor restarts the process.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from typing import Callable

import uvicorn

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import SamplingParams
from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine, describe_error
from phase4_scheduler.engine_loop import EngineLoop
from phase4_scheduler.logits_processing import LogitsProcessing
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.server import create_app

ANSWER_GRACE_S = 2.0  # after the drain timeout: time to write the error answers before uvicorn cancels


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def warm_up(engine: BatchingEngine, say: Callable[[str], None] = _stderr) -> float:
    """Run ``engine`` once through every shape class a server meets, before the port opens, so that no
    client's request pays a Triton compile, a CUDA graph capture or a first cuBLAS/sampling kernel: a
    prefill chunk at the full token budget (then a later chunk, when the context allows) and a short one,
    decode at batch 1 and at ``max_num_seqs`` (every decode bucket's graph on CUDA), and the sampler's
    paths (top-k/top-p from a seeded generator, penalties and a logit bias, logprobs). Seconds taken.

    It leaves nothing behind: every request finishes (KV blocks all free, nothing running), and the
    seeded requests never draw from torch's global generator. The limit: Triton specialises kernels on
    some argument values (divisibility by 16), so a rare shape can still compile once later."""
    t0 = time.perf_counter()
    sched, vocab = engine.config.scheduler, engine.model.config.vocab_size
    seqs, limit = sched.max_num_seqs, engine.context_limit()
    long = max(min(sched.max_num_batched_tokens + 8, limit - 3), 1)
    short = max(min(16, sched.max_num_batched_tokens // seqs), 1)  # all seqs prompts prefill in one step
    say(f"warming up: a {min(long, sched.max_num_batched_tokens)}-token prefill chunk and a short one, decode at "
        f"batch 1 and {seqs}, sampling with top-p, penalties and logprobs")

    def prompt(n: int, salt: int) -> list[int]:  # distinct prompts (a prefix cache shares nothing)
        return [(1 + (n + salt) * 7919 + j * 31) % vocab for j in range(n)]

    if engine.runner.graphs is not None:
        engine.runner.graphs.warmup()  # every decode bucket's CUDA graph
    kinds = [{}, {"sampling": SamplingParams(1.0, 50, 0.9, seed=0)},
             {"processing": LogitsProcessing(0.5, 0.5, 1.2, ((0, -1.0),))},
             {"sampling": SamplingParams(0.7, seed=1), "logprobs": 5}]
    for batch in ([(long, {})], [(3, {})], [(short, kinds[i % len(kinds)]) for i in range(seqs)]):
        try:
            done = engine.generate([engine.make_request(prompt(n, salt), 3, ignore_eos=True, **kind)
                                    for salt, (n, kind) in enumerate(batch)])
        except Exception as e:  # a step failed (out of memory, a device fault): serving would fail the same way
            raise ModelError(f"the warm-up failed ({describe_error(e)}): the server cannot serve with this "
                             "configuration (lower --max-num-batched-tokens / --max-num-seqs?)") from None
        failed = next((r.finish_reason for r in done if r.finish_reason.startswith("error")), None)
        if failed is not None:
            raise ModelError(f"the warm-up request failed ({failed}): the server cannot serve with this configuration")
    seconds = time.perf_counter() - t0
    say(f"warmed up in {seconds:.1f} s")
    return seconds


def start_engine_loop(model: str = "kjv-llama-18m", *, device: str = "cpu", dtype: str = "fp32",
                      scheduler: SchedulerConfig | None = None, scheduler_impl: str = "solution",
                      num_blocks: int | None = None, block_size: int = 16, max_queue: int = 256, warmup: bool = True,
                      swap_space: float = 4.0, num_cpu_blocks: int | None = None, enable_prefix_caching: bool = False,
                      say: Callable[[str], None] = _stderr) -> EngineLoop:
    """The engine loop a server drives for ``model``, its thread started after the warm-up (``warm_up``, its
    progress lines to ``say``) unless ``warmup=False``. ``swap_space`` (GiB) / ``num_cpu_blocks``: the host KV
    pool when ``scheduler.preemption == "swap"``."""
    scheduler = scheduler or SchedulerConfig()
    config = BatchingConfig(scheduler, scheduler_impl, num_blocks, block_size, swap_space=swap_space,
                            num_cpu_blocks=num_cpu_blocks,
                            enable_prefix_caching=enable_prefix_caching)  # (checked before the model loads)
    loaded = load_model(model, dtype=dtype, device=device)
    engine = BatchingEngine(loaded, config)
    if warmup:
        warm_up(engine, say)
    return EngineLoop(engine, max_queue=max_queue).start()


def build_app(model: str = "kjv-llama-18m", **options):
    """(app, engine loop) for ``model``: phase 4's app over ``start_engine_loop(model, **options)``."""
    loop = start_engine_loop(model, **options)
    return create_app(loop, model), loop


class DrainingServer(uvicorn.Server):
    def __init__(self, app, loop: EngineLoop, *, host: str = "127.0.0.1", port: int = 0,
                 drain_timeout: float = 30.0, log_level: str = "warning"):
        # uvicorn's access log (one line per request) shows at "info" and below.
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                        timeout_graceful_shutdown=drain_timeout + ANSWER_GRACE_S))
        self.loop, self.drain_timeout = loop, drain_timeout
        self.death: BaseException | None = None
        loop.on_death = self._on_death  # (the server's: it replaces any hook given to the loop)

    def _on_death(self, error: BaseException) -> None:  # the engine thread
        self.death, self.should_exit = error, True

    def drain(self) -> None:
        """Stop admitting now, let the accepted requests finish (within the drain timeout), then exit."""
        self.loop.stop_accepting(self.drain_timeout)
        self.should_exit = True

    def handle_exit(self, sig: int, frame) -> None:
        self.loop.stop_accepting(self.drain_timeout)
        super().handle_exit(sig, frame)  # a second Ctrl-C forces the exit

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, without raising the signal again after the shutdown (a drained server exits 0)."""
        if threading.current_thread() is not threading.main_thread():  # signals go to the main thread
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def bind(self) -> socket.socket:
        """The listening socket for ``run(sockets=[...])`` (port 0: a free one; read it back from it)."""
        return listen(self.config.host, self.config.port)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` and listening (port 0: a free one), or one ``ModelError`` line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:  # (OverflowError: a port past 65535)
        sock.close()
        raise ModelError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}): "
                         "pick another --port or --host") from None
    sock.listen(2048)  # connections wait in the backlog until a server process accepts them
    return sock


def run_foreground(app, *, host: str, port: int, drain_timeout: float = 30.0,
                   announce: Callable[[str], None] | None = None, log_level: str = "warning") -> int:
    """Serve ``app`` (over ``app.state.loop``) on this thread until SIGTERM / Ctrl-C — drained, 0 — or
    the engine's death — 1, with one line on stderr naming the cause. ``announce(url)`` once the port
    is bound (with port 0, the free port taken)."""
    server = DrainingServer(app, app.state.loop, host=host, port=port, drain_timeout=drain_timeout,
                            log_level=log_level)
    sock = server.bind()
    if announce is not None:
        announce(f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}")
    server.run(sockets=[sock])
    if server.death is not None:
        print(f"error: the engine stopped ({describe_error(server.death)}): the server exits for a restart",
              file=sys.stderr)
        return 1
    return 0


class ServerThread:
    """uvicorn in a background thread on ``host``:``port`` (0 = a free port, read back after start)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, drain_timeout: float = 30.0):
        self.server = DrainingServer(app, app.state.loop, host=host, port=port, drain_timeout=drain_timeout)
        self.host, self.port = host, port
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Drain (accepted requests finish) and stop."""
        self.server.drain()
        self._thread.join(timeout)
