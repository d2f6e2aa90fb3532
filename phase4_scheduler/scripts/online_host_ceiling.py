"""How fast the server's host path can go: output tokens/s through HTTP + SSE with the model stubbed out, beside
the offline engine's with the same stub — the online/offline ceiling the GPU can never raise — and the host
CPU per request by stage (``host_costs``, the table phase 4's report carries).

``python -m phase4_scheduler.scripts.online_host_ceiling [--requests 256] [--concurrency 64] [--tokens 128]``.
"""

from __future__ import annotations

import argparse

import torch

from phase4_scheduler.host_costs import offline_seconds, online, stage_costs


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--api-server-count", type=int, default=1, help="API processes in front of the engine process")
    a = p.parse_args()
    tokens = a.requests * a.tokens
    off = tokens / offline_seconds(a.requests, a.tokens, a.max_num_seqs)
    served = online(a.requests, a.concurrency, a.tokens, a.max_num_seqs, a.api_server_count)
    on = tokens / served["seconds"]
    print(f"stubbed forward, {a.requests} requests x {a.tokens} tokens, {a.concurrency} concurrent clients: "
          f"offline {off:,.0f} tok/s, online {on:,.0f} tok/s ({on / off:.2f}x); SSE chunks counted "
          f"{served['chunks']:,}; cores busy: server {served['server_cpu_s'] / served['seconds']:.2f}, "
          f"client {served['client_cpu_s'] / served['seconds']:.2f}"
          + (f" (the engine process's alone: {a.api_server_count} API processes)" if a.api_server_count > 1 else ""))
    costs = stage_costs(a.requests, a.tokens, a.concurrency, a.max_num_seqs)
    print("host CPU µs per request: " + ", ".join(f"{k[:-3]} {v:,.0f}" for k, v in costs.items() if k.endswith("_us")))


if __name__ == "__main__":
    main()
