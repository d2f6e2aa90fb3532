"""The OpenAI fields real clients send, through the official ``openai`` client against a live server (the
bundled model on CPU): served ones give the reference's text; unserved ones are a 400 naming the field,
never silently ignored."""

from __future__ import annotations

import openai
import pytest

from phase0_prototype import load_impl as phase0_impl

MODEL = "kjv-llama-18m"  # (the ``server`` and ``client`` fixtures: conftest.py)


def _reference(loop, messages: list[dict], n: int) -> str:
    tok = loop.engine.tokenizer
    out = phase0_impl("solution").build(loop.engine.model, compile=False).generate(tok.encode_chat(messages), n)
    return tok.decode([t for t in out.sequences()[0] if t not in tok.eos_ids])


def test_content_parts_developer_role_and_max_completion_tokens(server, client):
    """Text parts are concatenated, ``developer`` is the system turn, ``max_completion_tokens`` bounds the
    answer: the same text as the plain-string request phase 0 generates from."""
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Answer "}, {"type": "text", "text": "briefly."}]},
             {"role": "user", "content": [{"type": "text", "text": "Who made the light?"}]}]
    plain = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who made the light?"}]
    r = client.chat.completions.create(model=MODEL, messages=parts, max_completion_tokens=9, temperature=0)
    assert r.usage.completion_tokens <= 9
    assert r.choices[0].message.content == _reference(server.loop, plain, 9)


def test_chat_without_max_tokens_runs_past_sixteen_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "And God said"}],
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens > 16 and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens == 512  # the context, filled


def test_stream_options_include_usage_ends_with_the_usage_chunk(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "In the beginning"}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "In the beginning"}],
                                           max_tokens=6, temperature=0)
    assert text == plain.choices[0].message.content


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("response_format", {"type": "json_object"}),
])
def test_unserved_chat_fields_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       **{field: value})
    assert e.value.body["param"] == field and field in e.value.body["message"]


@pytest.mark.parametrize("field, value", [("best_of", 2)])  # (best_of = n is served: test_p4_n_samples)
def test_unserved_completion_fields_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, **{field: value})
    assert e.value.body["param"] == field


def test_neutral_values_of_unserved_fields_pass(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       logprobs=False, presence_penalty=0, frequency_penalty=0.0, n=1,
                                       response_format={"type": "text"})
    assert r.usage.completion_tokens <= 2


def test_image_parts_are_refused_naming_the_part(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    assert e.value.body["param"].startswith("messages.0.content")


def test_logit_bias_and_min_tokens_shape_the_answer(server, client):
    """A +100 bias makes one token win every step; ``min_tokens`` holds EOS back that many tokens even when a
    bias would pick it first (then EOS ends the answer at once)."""
    tok = server.loop.engine.tokenizer
    word = tok.encode("light")[-1]
    r = client.completions.create(model=MODEL, prompt="And God said", max_tokens=5, temperature=0,
                                  logit_bias={str(word): 100})
    assert r.usage.completion_tokens == 5 and r.choices[0].text == tok.decode([word] * 5)
    eos = tok.eos_ids[0]
    r = client.completions.create(model=MODEL, prompt="And God said", max_tokens=12, temperature=0,
                                  logit_bias={str(eos): 100}, extra_body={"min_tokens": 4})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 5  # 4 tokens, then EOS


def test_penalties_are_served(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "In the beginning"}],
                                       max_tokens=8, temperature=0, presence_penalty=1.5, frequency_penalty=1.0,
                                       extra_body={"repetition_penalty": 1.3, "ignore_eos": True})
    assert r.usage.completion_tokens == 8


@pytest.mark.parametrize("field, value", [("logit_bias", {"hello": 1}), ("logit_bias", {"5": 101}),
                                          ("presence_penalty", 2.5), ("frequency_penalty", -3),
                                          ("repetition_penalty", 0)])
def test_bad_penalty_values_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body={field: value})
    assert e.value.body["param"].startswith(field)


def test_a_bias_outside_the_vocabulary_or_min_tokens_past_max_tokens_is_refused(client):
    for extra, word in (({"logit_bias": {"999999999": 1}}, "logit_bias"), ({"min_tokens": 9}, "min_tokens")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body=extra)
        assert word in e.value.body["message"]


def _reference_logprobs(loop, prompt_ids: list[int], n: int):
    """Phase 0's no-cache model: the greedy ids and, per step, log_softmax of its logits (float64)."""
    import torch

    model = phase0_impl("framework").build(loop.engine.model)
    ids, steps = list(prompt_ids), []
    for _ in range(n):
        lp = torch.log_softmax(model.forward_logits(torch.tensor([ids]))[0, -1].double(), dim=-1)
        steps.append(lp)
        ids.append(int(lp.argmax()))
    return ids[len(prompt_ids):], steps


def test_completion_logprobs_equal_the_models_log_softmax(server, client):
    tok = server.loop.engine.tokenizer
    prompt = tok.encode("And the evening and the morning were", add_special_tokens=True)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    ids, steps = _reference_logprobs(server.loop, prompt, 5)
    lp = r.choices[0].logprobs
    assert lp.tokens == [tok.decode([t]) for t in ids]
    for got, top, step, t in zip(lp.token_logprobs, lp.top_logprobs, steps, ids, strict=True):
        assert abs(got - float(step[t])) < 1e-3
        best = step.topk(2).indices.tolist()
        assert set(top) == {tok.decode([i]) for i in best}
    assert lp.text_offset[0] == 0 and "".join(lp.tokens) == r.choices[0].text


def test_chat_logprobs_streamed_equal_the_whole_answer(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Who made the light?"}], max_tokens=6,
              temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kw).choices[0].logprobs.content
    assert len(whole) == 6 and all(len(e.top_logprobs) == 3 for e in whole)
    assert all(e.logprob == max(t.logprob for t in e.top_logprobs) for e in whole)  # greedy: the top one
    streamed = [e for c in client.chat.completions.create(stream=True, **kw) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in whole]


def test_top_logprobs_without_logprobs_is_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


@pytest.mark.parametrize("prompt_as_ids", [False, True])
def test_echo_starts_the_answer_with_the_prompt(server, client, prompt_as_ids):
    tok = server.loop.engine.tokenizer
    text = "And God saw the light"
    prompt = tok.encode(text, add_special_tokens=False) if prompt_as_ids else text
    kw = dict(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw).choices[0].text
    shown = tok.decode(prompt) if prompt_as_ids else text
    assert client.completions.create(echo=True, **kw).choices[0].text == shown + plain
    assert "".join(c.choices[0].text for c in client.completions.create(echo=True, stream=True, **kw)) == shown + plain


def test_echo_with_logprobs_and_chat_echo_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, echo=True, logprobs=1)
    assert e.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"echo": True})
    assert e.value.body["param"] == "echo"
