"""How fast the server's host path can go: output tokens/s through HTTP + SSE with the model stubbed out, beside
the offline engine's with the same stub — the online/offline ceiling the GPU can never raise.

The forward pass is replaced (``host_profile.stub_forward``), so what is timed is everything else: HTTP and
JSON parsing, tokenizing, the engine loop's schedule / inputs / sampling / apply, detokenizing, and one SSE
chunk per token. The clients run in another process (in this one they would share the server's GIL). If the
stubbed server streams fewer tokens/s than the offline engine does on the GPU, the host path — not the GPU —
limits online serving.
``python -m phase4_scheduler.scripts.online_host_ceiling [--requests 256] [--concurrency 64] [--tokens 128]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time

import torch

from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.engine_loop import EngineLoop
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.scripts.host_profile import _meta_tinyllama, stub_forward
from phase4_scheduler.serve import ServerThread
from phase4_scheduler.server import create_app

PROMPT = "In the beginning God created the heaven and the earth. " * 4


def stubbed_engine(max_num_seqs: int) -> BatchingEngine:
    engine = BatchingEngine(_meta_tinyllama(), BatchingConfig(SchedulerConfig(max_num_seqs, 4 * max_num_seqs),
                                                              num_blocks=max_num_seqs * 64, cuda_graphs=False))
    stub_forward(engine.runner)
    return engine


def offline(requests: int, tokens: int, max_num_seqs: int) -> float:
    """Output tokens/s of the engine alone (prompts tokenized first, as ``LLMEngine.generate`` does)."""
    engine = stubbed_engine(max_num_seqs)
    ids = engine.tokenizer.encode(PROMPT)
    t0 = time.perf_counter()
    for _ in range(requests):
        engine.add(engine.make_request(list(ids), tokens, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return requests * tokens / (time.perf_counter() - t0)


async def _clients(url: str, requests: int, concurrency: int, tokens: int) -> int:
    import httpx

    body = {"model": "stub", "prompt": PROMPT, "max_tokens": tokens, "stream": True, "ignore_eos": True}
    gate, received = asyncio.Semaphore(concurrency), 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one() -> None:
            nonlocal received
            async with gate, client.stream("POST", "/v1/completions", json=body) as r:
                tail = b""
                async for raw in r.aiter_raw():  # count chunks in the bytes: the client must stay cheap
                    data = tail + raw  # (6 bytes carried over: a 7-byte marker split across reads counts once)
                    received += data.count(b"data: {")
                    tail = data[-6:]
        await asyncio.gather(*(one() for _ in range(requests)))
    return received


def _client_process(url: str, requests: int, concurrency: int, tokens: int, out) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    chunks = asyncio.run(_clients(url, requests, concurrency, tokens))
    out.send((chunks, time.perf_counter() - t0, time.process_time() - c0))


def online(requests: int, concurrency: int, tokens: int, max_num_seqs: int) -> tuple[float, int, float, float]:
    """Output tokens/s streamed to clients in another process, the SSE chunks they counted, and the CPU the
    client and the server process used (cores busy: near 1.0 for the client means it, not the server, limits)."""
    loop = EngineLoop(stubbed_engine(max_num_seqs), max_queue=requests).start()
    app = create_app(loop, "stub")
    with ServerThread(app) as server:
        recv, send = mp.Pipe(duplex=False)
        client = mp.get_context("spawn").Process(target=_client_process,
                                                 args=(server.url, requests, concurrency, tokens, send))
        client.start()
        c0 = time.process_time()
        chunks, seconds, client_cpu = recv.recv()
        server_cpu = time.process_time() - c0
        client.join()
    loop.shutdown()
    return requests * tokens / seconds, chunks, client_cpu / seconds, server_cpu / seconds


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=256)
    a = p.parse_args()
    off = offline(a.requests, a.tokens, a.max_num_seqs)
    on, chunks, client_cpu, server_cpu = online(a.requests, a.concurrency, a.tokens, a.max_num_seqs)
    print(f"stubbed forward, {a.requests} requests x {a.tokens} tokens, {a.concurrency} concurrent clients: "
          f"offline {off:,.0f} tok/s, online {on:,.0f} tok/s ({on / off:.2f}x); SSE chunks counted {chunks:,}; "
          f"cores busy: server {server_cpu:.2f}, client {client_cpu:.2f}")


if __name__ == "__main__":
    main()
