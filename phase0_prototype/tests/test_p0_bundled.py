"""The bundled trained model (models/kjv-llama-18m): transformers and phase 0 load it and agree token for
token.

These run on the real committed weights (fp32 on CPU, a few seconds): HF ``generate`` is the oracle for the
greedy continuation of both engines; the tokenizer must round-trip and match transformers' own; the
held-out text must be the corpus format's tail; and the model must beat a unigram baseline by 4×.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch
from p0_helpers import hf_greedy

from module0_profiling.impl import impls_under_test
from phase0_prototype import load_impl, load_model
from phase0_prototype.evaluate import evaluate_ids, unigram_perplexity
from phase0_prototype.sources import MODELS_DIR, REPO_ROOT, bundled_models

torch.set_num_threads(2)
NAME = "kjv-llama-18m"
MODEL_DIR = MODELS_DIR / NAME
PROMPT = "And the LORD spake unto Moses, saying,"
HEADING = re.compile(r"^(?:[1-3] )?[A-Z][a-z]+(?: of [A-Z][a-z]+)? \d+$")


@pytest.fixture(scope="module")
def hf():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours():
    return load_model(NAME, dtype="fp32", device="cpu")


def test_files_sizes_and_shapes(hf):
    weights = MODEL_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 40_000_000
    assert not list(MODEL_DIR.glob("model-*.safetensors")), "one safetensors file, not shards"
    params = sum(p.numel() for p in hf.parameters())
    assert 10e6 <= params <= 25e6
    cfg = hf.config
    assert cfg.num_attention_heads // cfg.num_key_value_heads in (4, 8)  # GQA like TinyLlama
    assert cfg.hidden_act == "silu" and cfg.tie_word_embeddings
    assert json.loads((MODEL_DIR / "config.json").read_text())["dtype"] == "bfloat16"


def test_short_name_resolves_to_the_directory(ours, hf):
    assert bundled_models()[NAME] == MODEL_DIR
    assert ours.path == MODEL_DIR and ours.config.num_parameters() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
def test_greedy_tokens_equal_transformers(hf, ours, impl):
    ids = ours.tokenizer.encode(PROMPT)
    expected = hf_greedy(hf, ids, 32)
    engine = load_impl(impl).build(ours, max_seq_len=len(ids) + 32, compile=False)
    got = engine.generate(ids, 32, stop_on_eos=False).tokens[0].tolist()
    assert got == expected
    assert len(set(expected)) > 4, "a trained model does not repeat one token"


def test_tokenizer_matches_transformers_and_round_trips(ours):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    text = (MODEL_DIR / "heldout.txt").read_text()[:3000] + "\nUnicode too: naïve café — ½ 你好 🙂"
    ids = ours.tokenizer.encode(text)
    assert ids == hf_tok(text)["input_ids"]
    assert ids[0] == ours.tokenizer.bos_id == hf_tok.bos_token_id
    assert ours.tokenizer.decode(ids) == text
    assert ours.tokenizer.eos_ids == (hf_tok.eos_token_id,)
    messages = [{"role": "user", "content": "Who was the father of Enos?"}]
    chat_ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    chat_ids = chat_ids["input_ids"] if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys") else chat_ids
    assert ours.tokenizer.encode_chat(messages) == list(chat_ids)


def test_heldout_text_is_the_corpus_tail():
    text = (MODEL_DIR / "heldout.txt").read_text(encoding="utf-8")
    assert 100_000 < len(text.encode()) <= 300_000
    blocks = text.split("\n\n")
    assert len(blocks) > 20
    for block in blocks:
        heading, paragraph = block.rstrip("\n").split("\n")
        assert HEADING.match(heading), heading
        assert len(paragraph) > 100
    assert not re.search(r"\b[1-3]?[A-Za-z]+\d+:\d+ ", text), "verse references must be stripped"
    assert blocks[-1].startswith("Revelation 22\n") and text.endswith("Amen.\n")


@pytest.mark.skipif(shutil.which("bible") is None,
                    reason="the `bible` program is missing (apt-get install bible-kjv)")
def test_heldout_text_is_what_the_recipe_produces():
    sys.path.insert(0, str(REPO_ROOT / "models" / "recipe"))
    from prepare_corpus import chapters_from_verses, fetch_verses, format_chapters, split_heldout

    _, heldout = split_heldout(format_chapters(chapters_from_verses(fetch_verses())))
    assert heldout == (MODEL_DIR / "heldout.txt").read_text(encoding="utf-8")


def test_model_beats_a_unigram_that_saw_the_answers(ours, hf):
    """Even a unigram fitted on the held-out text itself (optimistic) is 4× worse than the model."""
    ids = ours.tokenizer.encode((MODEL_DIR / "heldout.txt").read_text(), add_special_tokens=False)[:3000]
    result = evaluate_ids(lambda x: hf(x).logits, ids, window=256, stride=255, bos_id=ours.tokenizer.bos_id)
    assert result.perplexity < unigram_perplexity(ids, ids, ours.config.vocab_size) / 4
    assert result.accuracy > 0.2
