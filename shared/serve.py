"""``titaninfer serve``: phase 4's OpenAI-compatible server in front of the assembled engine's batched path.

The server is phase 4's (``server.create_app`` over an ``EngineLoop``); what this adds is the engine it
drives — phase 4's scheduler over the block manager and attention chosen with ``--impl``, with phase 5's
INT4 projections under ``--quant``, phase 6's ranks under ``--tp N`` (``shared.tp_workers``) — and the same
flags and errors as the rest of the CLI. Every request goes through continuous batching (a server never
knows that a request will stay alone), with the decode graphs captured before the port opens.

The process: SIGTERM / Ctrl-C drains (no new requests, the accepted ones finish within
``--drain-timeout`` seconds) and exits 0; if the engine thread dies, the server stops and the process
exits 1 with one line naming the cause, for a supervisor to restart it. ``--port 0`` takes a free port
(the banner names it). Without ``--api-key`` anyone who reaches the port may use it: binding a
non-loopback ``--host`` without one prints a warning. ``--api-server-count N`` serves the same app from N API
processes in front of this (the engine's) process (``phase4_scheduler.api_servers``).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: a free port (printed at start)")
    ap.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="seconds the accepted requests get to finish after SIGTERM / Ctrl-C")
    ap.add_argument("--api-key", default=None, help="clients must send 'Authorization: Bearer KEY'")
    ap.add_argument("--served-model-name", default=None, help="the model name clients send (default: --model)")
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                    help="the server's log level (info adds one access line per request)")
    ap.add_argument("--api-server-count", type=int, default=1,
                    help="API server processes (HTTP, JSON, SSE) in front of the one engine process; more "
                         "stream more tokens per second when the host path, not the GPU, is the limit")


def start_engine_loop(config, *, max_queue: int = 256, engine=None):
    """``(loop, engine)``: the engine's batched path, warmed up, its ``EngineLoop`` thread started."""
    from phase0_prototype.errors import ModelError
    from phase4_scheduler.engine_loop import EngineLoop
    from phase4_scheduler.serve import warm_up

    from .engine import LLMEngine

    engine = engine or LLMEngine(config)
    if engine.impls["phase4"] == "off":
        raise ModelError("serve runs phase 4's continuous batching: drop phase4=off")
    warm_up(engine.batched)  # every graph and kernel a request can need, before the port opens
    return EngineLoop(engine.batched, max_queue=max_queue).start(), engine


def build_app(config, *, max_queue: int = 256, engine=None, api_key: str | None = None,
              served_model_name: str | None = None):
    """``(app, engine)``: phase 4's app over the engine's batched path; its loop thread is started."""
    from phase4_scheduler.server import create_app

    loop, engine = start_engine_loop(config, max_queue=max_queue, engine=engine)
    extra = {"api_key": api_key} if api_key is not None else {}
    return create_app(loop, served_model_name or engine.config.model, **extra), engine


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def run(args: argparse.Namespace, config) -> int:
    from phase0_prototype.errors import ModelError
    from phase4_scheduler.serve import run_foreground

    if not args.drain_timeout >= 0:
        raise ModelError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    if args.api_server_count < 1:
        raise ModelError(f"--api-server-count must be >= 1, got {args.api_server_count}")
    if args.api_server_count > 1:
        loop, engine = start_engine_loop(config, max_queue=args.max_queue)
    else:
        app, engine = build_app(config, max_queue=args.max_queue, api_key=args.api_key,
                                served_model_name=args.served_model_name)
    if args.api_key is None and not is_loopback(args.host):
        print(f"warning: serving on {args.host} without --api-key: anyone who reaches the port can use it",
              file=sys.stderr)

    def announce(url: str) -> None:
        print(f"serving {config.model} on {url}/v1 ({engine.path_name()}; SIGTERM or Ctrl-C drains "
              "and stops)", file=sys.stderr, flush=True)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.api_server_count > 1:
        from phase4_scheduler.api_servers import run_api_servers

        return run_api_servers(loop, args.served_model_name or config.model, args.api_server_count,
                               host=args.host, port=args.port, max_queue=args.max_queue, api_key=args.api_key,
                               drain_timeout=args.drain_timeout, log_level=args.log_level, announce=announce)
    return run_foreground(app, host=args.host, port=args.port, drain_timeout=args.drain_timeout, announce=announce,
                          log_level=args.log_level)
