"""``n`` choices per request through the official ``openai`` client against a live server (the bundled model on
CPU): choice ``i`` is what a lone request seeded ``seed + i`` returns, streams interleave the choices by
``index``, usage counts the prompt once, and a failing or abandoned request leaves no child running."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from phase4_scheduler import SchedulerConfig
from phase4_scheduler.serve import ServerThread, build_app

MODEL = "kjv-llama-18m"  # (the ``server`` and ``client`` fixtures: conftest.py)


PROMPT = "And God said, Let there be"


def _idle_and_free(loop, timeout: float = 10.0) -> None:
    engine, deadline = loop.engine, time.monotonic() + timeout
    while loop.engine.has_unfinished() or loop._inbox:
        assert time.monotonic() < deadline, "children still running after the request ended"
        time.sleep(0.02)
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks


def test_n_completions_equal_lone_requests_with_the_childrens_seeds(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, top_p=0.9,
              extra_body={"ignore_eos": True})
    r = client.completions.create(n=3, seed=1234, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    lone = [client.completions.create(seed=1234 + i, **kw) for i in range(3)]
    assert [c.text for c in r.choices] == [x.choices[0].text for x in lone]
    assert r.usage.prompt_tokens == lone[0].usage.prompt_tokens  # once, not n times
    assert r.usage.completion_tokens == sum(x.usage.completion_tokens for x in lone) == 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_choices_interleave_by_index(client):
    messages = [{"role": "user", "content": "Who made the light?"}]
    kw = dict(model=MODEL, messages=messages, max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(n=2, seed=7, stream=True, stream_options={"include_usage": True},
                                                 **kw))
    texts, roles, reasons = {0: "", 1: ""}, set(), {}
    for c in chunks[:-1]:
        (choice,) = c.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.delta.role:
            roles.add((choice.index, choice.delta.role))
        if choice.finish_reason:
            reasons[choice.index] = choice.finish_reason
    assert roles == {(0, "assistant"), (1, "assistant")} and reasons == {0: "length", 1: "length"}
    indices = [c.choices[0].index for c in chunks[:-1] if c.choices[0].delta.content]
    assert indices != sorted(indices)  # the two choices advance together, not one after the other
    lone = [client.chat.completions.create(seed=7 + i, **kw).choices[0].message.content for i in range(2)]
    assert [texts[0], texts[1]] == lone
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_greedy_n_gives_identical_choices_and_best_of_equal_to_n_is_served(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, n=3, best_of=3)
    assert len({c.text for c in r.choices}) == 1 and len(r.choices) == 3


@pytest.mark.parametrize("extra, param", [({"n": 0}, "n"), ({"n": 129}, "n"), ({"n": 3, "best_of": 2}, "best_of"),
                                          ({"n": 2, "seed": 2**63 - 1}, "seed"), ({"n": 17}, "n")])  # queue: 16
def test_bad_n_is_refused_by_name(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body=extra)
    assert e.value.body["param"] == param and param in e.value.body["message"]


def test_one_failing_child_fails_the_request_once_and_frees_the_others(server, client, monkeypatch):
    """The child seeded ``seed + 1`` fails in the sampler: the answer is one 500 (plain) or one error event then
    ``[DONE]`` (stream), at once, and no child is left holding KV blocks."""
    sampler = server.loop.engine.sampler
    real = sampler._generator

    def failing(r):
        if r.sampling.seed == 101:
            raise RuntimeError("injected sampler fault")
        return real(r)

    monkeypatch.setattr(sampler, "_generator", failing)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 300, "temperature": 1.0, "seed": 100, "n": 3,
            "ignore_eos": True}
    with pytest.raises(openai.InternalServerError, match="injected sampler fault"):
        client.completions.create(**{k: v for k, v in body.items() if k != "ignore_eos"}, extra_body={"ignore_eos": True})
    _idle_and_free(server.loop)
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and sum('"error"' in line for line in lines) == 1
    _idle_and_free(server.loop)


def test_with_prefix_caching_the_choices_share_the_prompt_and_answer_the_same():
    """The children of one request reuse the prompt's cached blocks (their prefill is chunked, so later
    chunks find the first child's blocks), and sharing changes no choice."""
    app, loop = build_app(MODEL, scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64),
                          enable_prefix_caching=True, warmup=False)
    vocab = loop.engine.model.config.vocab_size
    prompt = [(7 + 13 * i) % vocab for i in range(100)]  # six full blocks of 16
    kw = dict(model=MODEL, prompt=prompt, max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True})
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.completions.create(n=3, seed=5, **kw)
        hits = loop.engine.prefix_cache_stats()["prefix_hits"]
        lone = [client.completions.create(seed=5 + i, **kw).choices[0].text for i in range(3)]
    assert hits > 0 and [c.text for c in r.choices] == lone
