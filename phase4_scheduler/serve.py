"""Starting the server: build the engine for a ``--model``, run uvicorn (in the foreground for the CLI,
in a thread for tests, benchmarks and the notebook), stop it draining."""

from __future__ import annotations

import threading
import time

import uvicorn

from phase0_prototype.sources import load_model
from phase4_scheduler.engine import EngineConfig, LLMEngine
from phase4_scheduler.engine_loop import EngineLoop
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.server import create_app


def build_app(model: str = "kjv-llama-18m", *, device: str = "cpu", dtype: str = "fp32",
              scheduler: SchedulerConfig | None = None, scheduler_impl: str = "solution",
              num_blocks: int | None = None, block_size: int = 16, max_queue: int = 256, warmup: bool = True,
              swap_space: float = 4.0, num_cpu_blocks: int | None = None):
    """(app, engine loop) for ``model``; the loop's thread is started. ``swap_space`` (GiB) /
    ``num_cpu_blocks``: the host KV pool when ``scheduler.preemption == "swap"``."""
    scheduler = scheduler or SchedulerConfig()
    config = EngineConfig(scheduler, scheduler_impl, num_blocks, block_size, swap_space=swap_space,
                          num_cpu_blocks=num_cpu_blocks)  # (checked before the model loads)
    loaded = load_model(model, dtype=dtype, device=device)
    engine = LLMEngine(loaded, config)
    if warmup and engine.runner.graphs is not None:
        engine.runner.graphs.warmup()
    loop = EngineLoop(engine, max_queue=max_queue).start()
    return create_app(loop, model), loop


class ServerThread:
    """uvicorn in a background thread on ``host``:``port`` (0 = a free port, read back after start)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=30))
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
        self.server.should_exit = True
        self._thread.join(timeout)
