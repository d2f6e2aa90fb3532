"""What the Ray Serve hop costs: the same engine config served directly (``shared.serve.build_app`` under
uvicorn in a thread) and through Ray (proxy -> ``OpenAiIngress`` -> one ``EngineServer`` replica), measured
with the same greedy completions.

``hop_cost`` returns requests/s under ``concurrency`` clients and the p50 latency of one client alone
(the added latency: the hop's, not queueing's), for both, and their difference and ratio. One replica, so
that both sides run one engine on the same resources (a CPU replica gets every core, as the direct server's
torch does). Limit: the direct server shares this process (and its GIL) with the clients, the Ray side does
not; on a GPU the engine step dwarfs that, on CPU with a tiny model it flatters Ray a little.
``python -m shared.ray_bench --model M`` prints the dict as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from .engine import EngineConfig

PROMPT = "And God said, Let there be light"
DEFAULT_CONFIG = EngineConfig(max_num_seqs=16)


def load(url: str, model: str, *, requests: int, concurrency: int, tokens: int) -> dict:
    """``requests`` completions from ``concurrency`` clients: requests/s and latencies (s)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(_) -> float:
            t0 = time.perf_counter()
            r = client.post("/v1/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - t0

        for _ in range(2):  # warm: connections, the engine's first steps
            one(None)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(one, range(requests)))
        return {"requests_per_s": requests / (time.perf_counter() - t0), "p50_s": statistics.median(latencies)}


def measure(url: str, model: str, *, requests: int, concurrency: int, tokens: int) -> dict:
    busy = load(url, model, requests=requests, concurrency=concurrency, tokens=tokens)
    alone = load(url, model, requests=max(requests // 4, 5), concurrency=1, tokens=tokens)
    return {"requests_per_s": busy["requests_per_s"], "p50_ms_alone": 1e3 * alone["p50_s"],
            "p50_ms_busy": 1e3 * busy["p50_s"]}


def hop_cost(config: EngineConfig = DEFAULT_CONFIG, *, requests: int = 32, concurrency: int = 8,
             tokens: int = 16) -> dict:
    """Direct vs Ray on ``config``: requests/s, p50 latency alone and under load, and what Ray adds."""
    from phase4_scheduler.serve import ServerThread

    from . import ray_serve
    from .serve import build_app

    shape = {"requests": requests, "concurrency": concurrency, "tokens": tokens}
    app, engine = build_app(config)
    with ServerThread(app) as server:
        direct = measure(server.url, config.model, **shape)
    device = str(engine.device)
    engine.close()
    del app, engine, server  # its weights and KV cache leave the GPU before the replica's arrive
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        url = ray_serve.deploy(config, ray_serve.RaySpec(replicas=1), port=ray_serve.listening_port("127.0.0.1", 0))
        via_ray = measure(url, config.model, **shape)
    finally:
        ray_serve.shutdown()
    return {"model": config.model, "device": device, **shape,
            "direct": direct, "ray": via_ray,
            "added_p50_ms_alone": via_ray["p50_ms_alone"] - direct["p50_ms_alone"],
            "ray_over_direct_requests_per_s": via_ray["requests_per_s"] / direct["requests_per_s"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.ray_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=EngineConfig.model)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)
    config = EngineConfig(model=args.model, max_num_seqs=args.max_num_seqs)
    print(json.dumps(hop_cost(config, requests=args.requests, concurrency=args.concurrency, tokens=args.tokens),
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
