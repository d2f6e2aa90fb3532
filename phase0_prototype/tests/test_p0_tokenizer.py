"""Tokenizer and chat template against transformers' own tokenizer on the same files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p0_helpers import CORPUS, make_tokenizer_files

from phase0_prototype.errors import ModelError
from phase0_prototype.tokenizer import DEFAULT_CHAT_TEMPLATE, ByteTokenizer, HFTokenizer, StreamDecoder

# A template exercising what real ones use: a system-prompt branch, loop controls, raise_exception, tojson.
RICH_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set sys = 'You are helpful.' %}{% endif %}"
    "<<SYS>>{{ sys }}<</SYS>>\n"
    "{% for m in messages %}{% if m['role'] == 'tool' %}{% continue %}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "[{{ m['role'] | upper }}] {{ m['content'] | trim }} {{ {'n': loop.index} | tojson }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is a KV cache? "},
     {"role": "assistant", "content": "Saved keys and values."}, {"role": "user", "content": "你好"}],
]


@pytest.fixture(scope="module", params=[DEFAULT_CHAT_TEMPLATE, RICH_TEMPLATE], ids=["tinyllama", "rich"])
def tok_dir(tmp_path_factory, request):
    path = tmp_path_factory.mktemp("tok")
    make_tokenizer_files(path, chat_template=request.param)
    return path


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok_dir, messages, add_generation_prompt):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    ours = HFTokenizer(tok_dir)
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    expected_ids = hf.apply_chat_template(messages, tokenize=True,
                                          add_generation_prompt=add_generation_prompt)
    if isinstance(expected_ids, dict) or hasattr(expected_ids, "input_ids"):  # transformers 5: BatchEncoding
        expected_ids = expected_ids["input_ids"]
    if add_generation_prompt:
        assert ours.encode_chat(messages) == list(expected_ids)


def test_template_errors_are_one_line(tmp_path):
    make_tokenizer_files(tmp_path, chat_template=RICH_TEMPLATE)
    with pytest.raises(ModelError, match="roles must alternate"):
        HFTokenizer(tmp_path).apply_chat_template([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("text", CORPUS + ["  leading spaces and émojis 🚀"])
def test_encode_decode_match_transformers(tok_dir, text):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    ours = HFTokenizer(tok_dir)
    ids = ours.encode(text)
    assert ids == hf(text)["input_ids"]
    assert ids[0] == ours.bos_id == 1 and ours.eos_ids == (2,)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_round_trips_any_text(text):
    tok = ByteTokenizer(320)
    ids = tok.encode(text.replace("</s>", ""))
    assert ids[0] == tok.bos_id and all(3 <= i < 259 for i in ids[1:])
    assert tok.decode(ids) == text.replace("</s>", "")


def test_byte_tokenizer_maps_eos_text_and_shows_large_ids():
    tok = ByteTokenizer(32000)
    assert tok.encode("a</s>b", add_special_tokens=False) == [ord("a") + 3, 2, ord("b") + 3]
    assert tok.decode([ord("x") + 3, 4000]) == "x⟨4000⟩"


def test_stream_decoder_holds_partial_characters():
    tok = ByteTokenizer(320)
    ids = tok.encode("héllo 世界 🚀", add_special_tokens=False)
    dec = StreamDecoder(tok)
    pieces = [dec.push([i]) for i in ids]
    assert "".join(pieces) + dec.flush() == "héllo 世界 🚀"
    assert all("\ufffd" not in p for p in pieces)
