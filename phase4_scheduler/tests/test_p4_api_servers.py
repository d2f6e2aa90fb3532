"""Several API server processes in front of one engine (``api_servers``): the same greedy text as the engine
alone, 4xx from the API processes, a client that leaves frees its KV, and the engine's death ends the streams
with an error and the API processes with exit code 1."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

import httpx
import openai
import pytest

from phase0_prototype.sources import load_model
from phase4_scheduler.api_servers import ApiServers
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.engine_loop import EngineLoop
from phase4_scheduler.plan import SchedulerConfig

MODEL = "kjv-llama-18m"


@pytest.fixture
def engine():
    return BatchingEngine(load_model(MODEL, dtype="fp32", device="cpu"), BatchingConfig(SchedulerConfig(4, 64)))


def start(engine, count: int = 2) -> tuple[EngineLoop, ApiServers]:
    loop = EngineLoop(engine, max_queue=32).start()
    return loop, ApiServers(loop, MODEL, count).wait_ready()


def all_free(engine, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds  # aborts reach the engine thread between steps
    while time.monotonic() < deadline:
        if engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks and not engine.scheduler.has_unfinished():
            return True
        time.sleep(0.05)
    return False


def test_two_api_processes_stream_the_engines_greedy_text(engine):
    words = "And God said let there be light and there was light upon the face of the deep".split()
    rng = random.Random()
    prompts = [" ".join(rng.sample(words, rng.randint(3, 10))) for _ in range(8)]
    loop, servers = start(engine)
    client = openai.OpenAI(base_url=servers.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        def whole(p: str) -> str:
            return client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0).choices[0].text

        def streamed(p: str) -> str:
            chunks = client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in chunks)

        with cf.ThreadPoolExecutor(8) as pool:  # both kinds at once, spread over the two processes
            got = list(pool.map(whole, prompts)), list(pool.map(streamed, prompts))
    finally:
        assert servers.stop() == 0  # drained: exit 0
        loop.shutdown()
    reference = engine.generate([engine.make_request(engine.tokenizer.encode(p), 12) for p in prompts])
    want = [engine.output_text(r) for r in reference]
    assert got[0] == want and got[1] == want


def test_a_bad_field_is_a_400_and_a_client_that_leaves_frees_its_kv(engine):
    loop, servers = start(engine)
    try:
        r = httpx.post(servers.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        body = {"model": MODEL, "prompt": "And God said", "max_tokens": 400, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", servers.url + "/v1/completions", json=body, timeout=60) as resp:
            chunks = 0
            for line in resp.iter_lines():
                chunks += line.startswith("data: {")
                if chunks == 3:
                    break  # leaving the block closes the connection mid-stream
        assert all_free(engine)
        assert httpx.get(servers.url + "/health").status_code == 200
    finally:
        servers.stop()
        loop.shutdown()


def test_the_engine_dying_ends_the_streams_with_an_error_and_the_api_processes_exit_1(engine):
    loop, servers = start(engine)
    steps = [0]
    real_step = engine.step

    def failing_step():
        steps[0] += 1
        if steps[0] > 3:
            raise RuntimeError("simulated device fault")
        return real_step()

    engine.step = failing_step
    body = {"model": MODEL, "prompt": "And God said", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", servers.url + "/v1/completions", json=body, timeout=60) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert any("simulated device fault" in line and '"error"' in line for line in lines), lines[-3:]
    assert servers.wait(30) == 1
    assert loop.error is not None
