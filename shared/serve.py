"""``titaninfer serve``: phase 4's OpenAI-compatible server in front of the assembled engine's batched path.

The server is phase 4's (``server.create_app`` over an ``EngineLoop``); what this adds is the engine it
drives — phase 4's scheduler over the block manager and attention chosen with ``--impl`` — and the same
flags and errors as the rest of the CLI. Every request goes through continuous batching (a server never
knows that a request will stay alone), with the decode graphs captured before the port opens.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")


def build_app(config, *, max_queue: int = 256, engine=None):
    """``(app, engine)``: phase 4's app over the engine's batched path; its loop thread is started."""
    from phase0_prototype.errors import ModelError
    from phase4_scheduler.engine_loop import EngineLoop
    from phase4_scheduler.server import create_app
    from shared.engine import LLMEngine

    engine = engine or LLMEngine(config)
    if engine.impls["phase4"] == "off" or engine.quant or engine.config.tp > 1:
        raise ModelError("serve runs phase 4's continuous batching: drop phase4=off, --quant and --tp")
    batched = engine.batched
    if batched.runner.graphs is not None:
        batched.runner.graphs.warmup()
    return create_app(EngineLoop(batched, max_queue=max_queue).start(), engine.config.model), engine


def run(args: argparse.Namespace, config) -> int:
    import uvicorn

    app, engine = build_app(config, max_queue=args.max_queue)
    print(f"serving {config.model} on http://{args.host}:{args.port}/v1 ({engine.path_name('batched')}; "
          "Ctrl-C drains and stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
