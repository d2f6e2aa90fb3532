"""What one streamed request costs the server's host, stage by stage, with the model's forward pass stubbed out.

The GPU can never make online serving faster than its host path: HTTP and JSON, tokenizing the prompt, the
engine loop's schedule / inputs / sampling / apply, detokenizing, one SSE chunk per token. Here the forward
pass returns fixed logits (``stub_forward``), so only that path runs: the stubbed engine offline gives the
engine's share, ``IncrementalDecoder`` the detokenizer's, and the stubbed server — clients in another
process, the server's CPU time counted — everything; HTTP, SSE and the event loop are the remainder.
``1 / (CPU seconds per output token)`` is the most one server process can stream, whatever the GPU.
Limit: the shares are this machine's CPU; the stub skips the device copies a GPU step adds.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import replace

import torch

from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.text_stream import IncrementalDecoder

PROMPT = "In the beginning God created the heaven and the earth. " * 4


def stub_forward(runner) -> None:
    """Replace the model with logits that favour a fixed token: the host path runs unchanged."""
    logits = torch.zeros(1024, runner.config.vocab_size)
    logits[:, 65] = 1.0
    runner.forward = lambda inputs: logits[: len(inputs.host.sampled)]


def meta_tinyllama():
    """TinyLlama's config (vocabulary, context) over a tiny random model: the host path sees real shapes."""
    from phase0_prototype.config import PRESETS
    from phase0_prototype.sources import load_model

    m = load_model("random:tiny", dtype="fp32", device="cpu")
    m.config = replace(m.config, max_position_embeddings=PRESETS["tinyllama"].max_position_embeddings)
    return m


def stubbed_engine(max_num_seqs: int) -> BatchingEngine:
    engine = BatchingEngine(meta_tinyllama(), BatchingConfig(SchedulerConfig(max_num_seqs, 4 * max_num_seqs),
                                                             num_blocks=max_num_seqs * 64, cuda_graphs=False))
    stub_forward(engine.runner)
    return engine


def offline_seconds(requests: int, tokens: int, max_num_seqs: int) -> float:
    """Seconds the stubbed engine takes for ``requests`` × ``tokens`` (prompts tokenized beforehand)."""
    engine = stubbed_engine(max_num_seqs)
    ids = engine.tokenizer.encode(PROMPT)
    t0 = time.perf_counter()
    for _ in range(requests):
        engine.add(engine.make_request(list(ids), tokens, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - t0


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


def online(requests: int, concurrency: int, tokens: int, max_num_seqs: int, api_servers: int = 1) -> dict[str, float]:
    """The stubbed server streaming to clients in another process: wall seconds, the SSE chunks they counted,
    and the CPU seconds of the client (near the wall time: the client limits) and of the server process (with
    ``api_servers`` > 1, ``api_servers.ApiServers``: the engine process's alone)."""
    from phase4_scheduler.api_servers import ApiServers
    from phase4_scheduler.engine_loop import EngineLoop
    from phase4_scheduler.serve import ServerThread
    from phase4_scheduler.server import create_app

    loop = EngineLoop(stubbed_engine(max_num_seqs), max_queue=requests).start()
    if api_servers > 1:
        server = ApiServers(loop, "stub", api_servers, max_queue=requests).wait_ready()
    else:
        server = ServerThread(create_app(loop, "stub")).start()
    recv, send = mp.Pipe(duplex=False)
    client = mp.get_context("spawn").Process(target=_client_process,
                                             args=(server.url, requests, concurrency, tokens, send))
    client.start()
    c0 = time.process_time()
    chunks, seconds, client_cpu = recv.recv()
    server_cpu = time.process_time() - c0
    client.join()
    server.stop()
    loop.shutdown()
    return {"seconds": seconds, "chunks": chunks, "server_cpu_s": server_cpu, "client_cpu_s": client_cpu}


def detokenize_seconds(tokens: int) -> float:
    """Seconds to turn one stubbed request's ``tokens`` output ids into text, one push per token."""
    tok = stubbed_engine(1).tokenizer
    ids = (tok.encode(PROMPT) * (tokens // 8 + 1))[:tokens]
    decoder = IncrementalDecoder(tok)
    t0 = time.perf_counter()
    for t in ids:
        decoder.push([t])
    return time.perf_counter() - t0


def stage_costs(requests: int, tokens: int, concurrency: int, max_num_seqs: int = 256) -> dict[str, float]:
    """µs of host CPU per request by stage (module docstring), and the total per output token."""
    tok = stubbed_engine(1).tokenizer
    t0 = time.perf_counter()
    for _ in range(requests):
        tok.encode(PROMPT)
    tokenize = (time.perf_counter() - t0) / requests
    engine = offline_seconds(requests, tokens, max_num_seqs) / requests
    detok = detokenize_seconds(tokens)
    served = online(requests, concurrency, tokens, max_num_seqs)
    total = served["server_cpu_s"] / requests
    return {"tokenize_us": tokenize * 1e6, "engine_us": engine * 1e6, "detokenize_us": detok * 1e6,
            "http_sse_us": max(total - tokenize - engine - detok, 0.0) * 1e6, "total_us": total * 1e6,
            "per_token_us": total / tokens * 1e6, "tokens": tokens, "online_tok_s": requests * tokens / served["seconds"],
            "client_busy": served["client_cpu_s"] / served["seconds"]}


def measure_host_costs(result, size: str) -> None:
    """The stage table into a ``BenchResult`` (the same on a CPU and a GPU host: nothing runs on the GPU)."""
    requests, tokens, concurrency = (32, 64, 32) if size == "small" else (128, 128, 64)
    c = stage_costs(requests, tokens, concurrency)
    rows = [("tokenize the prompt", c["tokenize_us"]), ("engine loop: schedule, inputs, sampling, apply",
                                                        c["engine_us"]),
            (f"detokenize {tokens} tokens", c["detokenize_us"]),
            ("HTTP, JSON, SSE chunks, event loop (the rest)", c["http_sse_us"])]
    lines = ["| stage | host CPU µs per request | share |", "|---|---|---|"]
    lines += [f"| {name} | {us:,.0f} | {100 * us / c['total_us']:.0f} % |" for name, us in rows]
    lines.append(f"| **total (the server process's CPU)** | **{c['total_us']:,.0f}** | {c['per_token_us']:.1f} µs per "
                 f"output token: at most {1e6 / c['per_token_us']:,.0f} tok/s from one server process |")
    result.tables[f"Host cost per request by stage (model stubbed; {requests} requests of {tokens} tokens, "
                  f"{concurrency} concurrent clients)"] = "\n".join(lines) + (
        f"\n\nMeasured stream: {c['online_tok_s']:,.0f} tok/s; the client process was {100 * c['client_busy']:.0f} % "
        "busy (near 100 %: the client, not the server, limited the stream).")
