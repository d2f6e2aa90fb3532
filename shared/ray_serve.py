"""``titaninfer serve --ray``: the assembled engine on Ray Serve, replicated, behind one OpenAI ingress.

Ray Serve LLM's layout (``shared.ray_deploy``): an ``EngineServer`` deployment (each replica one
``LLMEngine`` from the CLI's ``EngineConfig``; on CUDA ``--tp`` GPUs, the ranks inside it) behind one
``OpenAiIngress`` on ``--host:--port``: ``/v1/completions``, ``/v1/chat/completions`` (SSE too),
``/v1/models``, ``/health``. A local Ray starts with this machine's CPUs and GPUs (no dashboard, quiet
logs); SIGTERM / Ctrl-C drains (503 for new requests, ``--drain-timeout`` for those under way), shuts
Serve and Ray down and exits 0. Replicas: ``--replicas N``, or ``--min-replicas``/``--max-replicas``
(autoscaling on requests in flight), or ``--ray-config FILE``: YAML or JSON with the keys
``replicas`` (≥ 1, fixed) or ``min_replicas`` (≥ 0, default 1) + ``max_replicas``;
``target_ongoing_requests`` (autoscaler's aim per replica, default ``max_num_seqs``);
``max_ongoing_requests`` (per replica, default 2 × ``max_num_seqs``); ``engine`` (``EngineConfig`` fields
over the command line's, e.g. ``{max_num_seqs: 8}``). Limit: one machine; a CPU replica takes
``cores // max replicas`` cores. Prefill/decode would replace ``EngineServer`` in ``build_application``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from phase0_prototype.errors import ModelError

from . import impls as impl_spec
from .serve import is_loopback

APP_NAME = "titaninfer"
HEALTH_CHECK_S = 2.0  # how often Serve probes each replica: a dead one is replaced within about this
QUIET_LOGS = {"log_level": "WARNING", "enable_access_log": False}
BOTH = "give --replicas N (fixed) or --min-replicas/--max-replicas (autoscaling), not both"
FLAGS = ("replicas", "min_replicas", "max_replicas")
FILE_KEYS = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "max_ongoing_requests", "engine")


@dataclass(frozen=True)
class RaySpec:
    """How many engine replicas, and how Serve feeds them."""

    replicas: int | None = 1  # fixed; None: autoscaling between min_replicas and max_replicas
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None  # default: the engine's max_num_seqs
    max_ongoing_requests: int | None = None  # default: 2 × max_num_seqs

    def check(self) -> "RaySpec":
        def whole(name: str, low: int) -> None:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ModelError(f"{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")

        whole("replicas", 1)
        whole("min_replicas", 0)
        whole("max_replicas", 1)
        whole("max_ongoing_requests", 1)
        if self.replicas is None and self.max_replicas is None:
            raise ModelError("autoscaling needs --max-replicas (or give --replicas N)")
        if self.replicas is not None and self.max_replicas is not None:
            raise ModelError(BOTH)
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ModelError(f"--max-replicas {self.max_replicas} is below --min-replicas {self.min_replicas}: "
                             "raise --max-replicas")
        target = self.target_ongoing_requests
        if target is not None and not (isinstance(target, (int, float)) and not isinstance(target, bool)
                                       and target > 0):
            raise ModelError(f"target_ongoing_requests must be a number > 0, got {target!r}")
        return self

    @property
    def most(self) -> int:
        """The most replicas that may run at once (what the resources must hold)."""
        return self.replicas if self.replicas is not None else self.max_replicas


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """``serve``'s Ray flags (besides ``serve``'s own ``--host``, ``--port``, ``--max-queue`` …)."""
    ap.add_argument("--ray", action="store_true", help="serve on a local Ray Serve cluster: engine replicas "
                    "behind one OpenAI ingress")
    ap.add_argument("--replicas", type=int, default=None, help="--ray: a fixed number of engine replicas (default 1)")
    ap.add_argument("--min-replicas", type=int, default=None, help="--ray: autoscaling lower bound (default 1)")
    ap.add_argument("--max-replicas", type=int, default=None, help="--ray: autoscaling upper bound")
    ap.add_argument("--ray-config", default=None, metavar="FILE",
                    help="--ray: replicas and engine overrides as YAML/JSON (keys: see shared/ray_serve.py)")
    ap.add_argument("--pd", action="store_true", help="--ray: prefill/decode disaggregation, a prefill and a "
                    "decode deployment of the replicas each (shared/ray_pd.py)")


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for Ray (``run`` then refuses Ray flags without ``--ray``)."""
    return bool(getattr(args, "ray", False) or getattr(args, "ray_config", None) or getattr(args, "pd", False)
                or any(getattr(args, f, None) is not None for f in FLAGS))


def spec_from_args(args: argparse.Namespace, config):
    """(``RaySpec``, ``EngineConfig``) from the flags, or from ``--ray-config`` over ``config``."""
    given = [f"--{f.replace('_', '-')}" for f in FLAGS if getattr(args, f, None) is not None]
    if not args.ray:
        given += ["--pd"] if getattr(args, "pd", False) else []
        raise ModelError(f"{(given or ['--ray-config'])[0]} applies to Ray Serve: add --ray")
    if args.ray_config is not None:
        if given:
            raise ModelError(f"{given[0]} and --ray-config both set the replicas: keep one")
        return load_spec(args.ray_config, config)
    if args.replicas is not None and (args.min_replicas is not None or args.max_replicas is not None):
        raise ModelError(BOTH)
    autoscaling = args.min_replicas is not None or args.max_replicas is not None
    spec = RaySpec(replicas=None if autoscaling else 1 if args.replicas is None else args.replicas,
                   min_replicas=1 if args.min_replicas is None else args.min_replicas, max_replicas=args.max_replicas)
    return spec.check(), config


def load_spec(path: str, config):
    """(``RaySpec``, ``EngineConfig``) from a YAML/JSON file (keys: the module docstring)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # (JSON is YAML)
    except OSError as e:
        raise ModelError(f"cannot read --ray-config {path} ({e.strerror or e}): give an existing file") from None
    except yaml.YAMLError as e:
        raise ModelError(f"--ray-config {path} is not YAML or JSON ({str(e).splitlines()[0]}): fix the file") from None
    if not isinstance(data, dict):
        raise ModelError(f"--ray-config {path} must hold a mapping of {', '.join(FILE_KEYS)}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ModelError(f"--ray-config {path}: unknown key '{unknown[0]}': use {', '.join(FILE_KEYS)}")
    engine = data.pop("engine", None) or {}
    fields = {f.name for f in dataclasses.fields(config)}
    if not isinstance(engine, dict) or set(engine) - fields:
        bad = sorted(set(engine) - fields)[0] if isinstance(engine, dict) else engine
        raise ModelError(f"--ray-config {path}: engine key '{bad}' is no EngineConfig field: use "
                         f"{', '.join(sorted(fields))}")
    if "max_replicas" in data or "min_replicas" in data:
        if "replicas" in data:
            raise ModelError(f"--ray-config {path}: {BOTH}")
        data["replicas"] = None
    return RaySpec(**data).check(), dataclasses.replace(config, **engine)


def deployment_options(spec: RaySpec, config, *, device: str, cpus: float, drain_timeout: float) -> dict:
    """The engine deployment's Serve options: replicas (or autoscaling), resources, load, shutdown."""
    count = ({"num_replicas": spec.replicas} if spec.replicas is not None else
             {"autoscaling_config": {"min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
                                     "target_ongoing_requests": spec.target_ongoing_requests or config.max_num_seqs}})
    resources = ({"num_cpus": 1, "num_gpus": config.tp} if device == "cuda"
                 else {"num_cpus": max(1, int(cpus) // spec.most)})
    return {**count, "ray_actor_options": resources,
            "max_ongoing_requests": spec.max_ongoing_requests or 2 * config.max_num_seqs,
            "graceful_shutdown_timeout_s": drain_timeout, "health_check_period_s": HEALTH_CHECK_S}


def build_application(config, spec: RaySpec, *, device: str, cpus: float, max_queue: int = 256,
                      api_key: str | None = None, drain_timeout: float = 30.0):
    """The Serve application: ``OpenAiIngress`` bound to the ``EngineServer`` deployment."""
    from ray import serve

    from .ray_deploy import EngineServer, OpenAiIngress

    options = deployment_options(spec, config, device=device, cpus=cpus, drain_timeout=drain_timeout)
    threads = options["ray_actor_options"]["num_cpus"] if device == "cpu" else 0
    server = serve.deployment(EngineServer, **options).bind(config, max_queue=max_queue, api_key=api_key,
                                                           drain_timeout=drain_timeout, threads=threads)
    # the ingress only relays bytes: no CPU of its own reserved, and no cap below the engines' queues
    ingress = serve.deployment(OpenAiIngress, num_replicas=1, max_ongoing_requests=100_000,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(server)


def start_ray() -> dict:
    """A local Ray with this machine's CPUs and GPUs (or the one already started); its resources."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=True)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # (Serve's driver-side progress lines)
    return ray.cluster_resources()


def check_resources(config, spec: RaySpec, resources: dict, device: str) -> None:
    """Refuse what Ray could never schedule (Serve would wait for it forever)."""
    if device == "cuda":
        need, have = spec.most * config.tp, int(resources.get("GPU", 0))
        if need > have:
            raise ModelError(f"{spec.most} replicas × --tp {config.tp} need {need} GPUs, Ray sees {have}: "
                             "lower the replicas or --tp")
    elif spec.most > int(resources.get("CPU", 0)):
        raise ModelError(f"{spec.most} CPU replicas need a core each, Ray sees {int(resources.get('CPU', 0))}: "
                         "lower the replicas")


def deploy(config, spec: RaySpec, *, host: str = "127.0.0.1", port: int = 8000, max_queue: int = 256,
           api_key: str | None = None, drain_timeout: float = 30.0, pd: bool = False) -> str:
    """Start Ray (if needed) and Serve on ``host:port``, deploy, wait for every replica: the base URL."""
    import torch
    from ray import serve

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    resources = start_ray()
    check_resources(config, spec if not pd else dataclasses.replace(spec, replicas=2 * spec.most, max_replicas=None),
                    resources, device)  # (PD: each replica twice, a prefill and a decode one)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    build = build_application
    if pd:
        from .ray_pd import build_pd_application as build
    app = build(config, spec, device=device, cpus=resources.get("CPU", 1), max_queue=max_queue,
              api_key=api_key, drain_timeout=drain_timeout)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=QUIET_LOGS)
    except RuntimeError as e:  # Serve gave up on the replicas: their own error is the user's one line
        raise ModelError(f"the engine replicas did not start: {replica_error() or e}") from None
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def replica_error() -> str | None:
    """The last exception line of the engine deployment's failure (a ``ModelError``: the message alone)."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    deployment = app.deployments.get("EngineServer") if app is not None else None
    lines = re.findall(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", deployment.message if deployment else "", re.M)
    return next((f"{message}" if kind == "ModelError" else f"{kind}: {message}" for kind, message in reversed(lines)
                 if kind != "RuntimeError"), None)


def shutdown() -> None:
    """Serve then Ray (``drain`` first for the requests under way)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def drain(timeout: float) -> int:
    """New requests get 503; those under way get ``timeout`` s, then an error answer: how many did."""
    from ray import serve

    return serve.get_app_handle(APP_NAME).drain.remote(timeout).result(timeout_s=timeout + 30)


def listening_port(host: str, port: int) -> int:
    """``port``, once checked free on ``host`` (0: a free one), for Serve's proxy (which would only log its
    failure to bind, while the deployment waits)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (OSError, OverflowError) as e:  # (OverflowError: a port past 65535)
            raise ModelError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}): "
                             "pick another --port or --host") from None
        return sock.getsockname()[1]


def run(args: argparse.Namespace, config) -> int:
    """``serve --ray``: deploy, print the banner, wait for SIGTERM / Ctrl-C, shut down: 0."""
    spec, config = spec_from_args(args, config)
    if not args.drain_timeout >= 0:
        raise ModelError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    if impl_spec.parse(config.impl)["phase4"] == "off":  # (here, before any replica starts and fails on it)
        raise ModelError("serve runs phase 4's continuous batching: drop phase4=off")
    if args.api_key is None and not is_loopback(args.host):
        print(f"warning: serving on {args.host} without --api-key: anyone who reaches the port can use it",
              file=sys.stderr)
    stop = threading.Event()
    start_ray()  # (first: Ray installs its own SIGTERM handler, which would end the process at once)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = deploy(config, spec, host=args.host, port=listening_port(args.host, args.port), max_queue=args.max_queue, api_key=args.api_key,
                     drain_timeout=args.drain_timeout, pd=args.pd)
        count = f"{spec.replicas}" if spec.replicas is not None else f"{spec.min_replicas}-{spec.max_replicas}"
        print(f"serving {config.model} on {url}/v1 (Ray Serve: {count} engine replicas; SIGTERM or Ctrl-C "
              "drains and stops)", file=sys.stderr, flush=True)
        while not stop.wait(1.0):  # (a bare wait() would not wake for the signal handler on the main thread)
            pass
        drain(args.drain_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown()
    return 0
