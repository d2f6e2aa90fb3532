"""Prefill/decode disaggregation on Ray Serve (``shared.ray_pd``): the official OpenAI client, through the
unchanged ingress, gets the colocated engine's greedy text (phase 4's loop, ``LLMEngine.generate``); the
KV blocks of both sides are all free afterwards; refusals are phase 4's. One local Ray for the module."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import ray
from engine_helpers import check_stream_and_chat, fresh_text_prompts
from ray import serve

from shared import ray_serve
from shared.engine import EngineConfig, LLMEngine
from shared.ray_pd import build_pd_application

MODEL = "kjv-llama-18m"
CONFIG = EngineConfig(model=MODEL, max_num_seqs=4, max_num_batched_tokens=256)
APP = "titaninfer-pd"
TIMEOUT_S = 120  # a client's bound: a request that hangs fails the test instead of blocking it


@pytest.fixture(scope="module")
def cluster():
    resources = ray_serve.start_ray()
    port = ray_serve.listening_port("127.0.0.1", 0)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=ray_serve.QUIET_LOGS)
    app = build_pd_application(CONFIG, ray_serve.RaySpec(replicas=1), device="cpu", cpus=resources["CPU"],
                               drain_timeout=5)
    serve.run(app, name=APP, route_prefix="/", logging_config=ray_serve.QUIET_LOGS)
    yield f"http://127.0.0.1:{port}"
    ray_serve.shutdown()


@pytest.fixture(scope="module")
def reference():
    """The colocated engine on the same config: no HTTP, no Ray."""
    return LLMEngine(CONFIG)


@ray.remote(num_cpus=0)
def _kv_free(side: str) -> tuple[int, int]:
    return serve.get_deployment_handle(side, app_name=APP).kv_free.remote().result(timeout_s=TIMEOUT_S)


def kv_free(side: str) -> tuple[int, int]:
    """(free, total) KV blocks of one side, asked from a Ray task: a handle in this process would start
    Serve's router thread here, which outlives the module."""
    return ray.get(_kv_free.remote(side), timeout=TIMEOUT_S)


def test_openai_client_gets_the_colocated_greedy_text(cluster, reference):
    (first, second), seed = fresh_text_prompts(2)
    tokens = random.randint(8, 24)
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
    greedy = {"max_tokens": tokens, "temperature": 0, "extra_body": {"ignore_eos": True}}
    want = [o.text for o in reference.generate([first, second], max_tokens=tokens, ignore_eos=True)]
    with ThreadPoolExecutor(2) as pool:  # (together: both sides batch them)
        answers = list(pool.map(lambda p: client.completions.create(model=MODEL, prompt=p, **greedy), (first, second)))
    for answer, text in zip(answers, want, strict=True):
        assert answer.choices[0].text == text and answer.usage.completion_tokens == tokens, seed
    check_stream_and_chat(client, reference, MODEL, (first, second), want, greedy, seed)
    # a stop string inside the text (the first token's text comes from the decode side's own matcher),
    # and one token (the request ends at prefill)
    stop = want[0][len(want[0]) // 2:][:3]
    cut = reference.generate(first, max_tokens=tokens, ignore_eos=True, stop=[stop])[0].text
    answer = client.completions.create(model=MODEL, prompt=first, stop=[stop], **greedy)
    assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop", (seed, stop)
    one = reference.generate(second, max_tokens=1, ignore_eos=True)[0].text
    answer = client.completions.create(model=MODEL, prompt=second, **{**greedy, "max_tokens": 1})
    assert answer.choices[0].text == one and answer.choices[0].finish_reason == "length", seed
    for side in ("PrefillServer", "DecodeServer"):
        free, total = kv_free(side)
        assert free == total > 0, (side, free, total)


def test_sampled_requests_run_to_their_length_and_repeat_with_their_seed(cluster):
    prompts, seed = fresh_text_prompts(2)
    tokens = random.randint(8, 24)
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
    for prompt in prompts:
        sampled = {"max_tokens": tokens, "temperature": 1.0, "seed": seed, "extra_body": {"ignore_eos": True}}
        answers = [client.completions.create(model=MODEL, prompt=prompt, **sampled) for _ in range(2)]
        assert all(a.usage.completion_tokens == tokens and a.choices[0].finish_reason == "length" for a in answers)
        assert answers[0].choices[0].text == answers[1].choices[0].text, seed
    for side in ("PrefillServer", "DecodeServer"):
        free, total = kv_free(side)
        assert free == total > 0, (side, free, total)


def test_bad_requests_get_phase_4s_refusals(cluster):
    url = cluster + "/v1/completions"
    bad = httpx.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 0}, timeout=TIMEOUT_S)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens", bad.text
    assert "max_tokens" in bad.json()["error"]["message"]
    long = httpx.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 1 << 20}, timeout=TIMEOUT_S)
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded", long.text
    other = httpx.post(url, json={"model": "other", "prompt": "x"}, timeout=TIMEOUT_S)
    assert other.status_code == 404 and "does not exist" in other.json()["error"]["message"]
    chat = httpx.post(cluster + "/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=TIMEOUT_S)
    assert chat.status_code == 400 and "messages" in chat.json()["error"]["message"], chat.text
