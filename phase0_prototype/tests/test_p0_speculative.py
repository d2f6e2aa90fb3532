"""Speculative decoding (``speculative.py``): prompt-lookup drafts, verify, the on/off switch.

The oracle for every generated token is the no-cache framework's greedy output (independent code: no
cache, no chunked attention); the drafter is checked against a brute-force scan. fp32 on the CPU, seconds.
"""

from __future__ import annotations

import os

import pytest
import torch

from phase0_prototype import ModelError, SamplingParams, load_impl, load_model
from phase0_prototype.speculative import PromptLookup, SpeculativeDecoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny", dtype="fp32", device="cpu", seed=5)


def decoder_for(model, k: int, break_even: float = 1.0) -> SpeculativeDecoder:
    """A decoder with a fixed break-even (the measured one depends on this machine's timings)."""
    engine = load_impl("solution").build(model, max_seq_len=256, compile=False)
    decoder = SpeculativeDecoder(engine, k)
    decoder.break_even = break_even
    return decoder


def reference(model, prompt, n: int, **kw):
    return load_impl("framework").build(model, max_seq_len=256).generate(prompt, n, **kw)


def repetitive(seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(3, vocab, (23,), generator=g).tolist() * 5


def random_tokens(seed: int, vocab: int, n: int = 96) -> list[int]:
    return [1] + torch.randint(3, vocab, (n - 1,), generator=torch.Generator().manual_seed(seed)).tolist()


def brute_force_draft(tokens: list[int], k: int) -> list[int]:
    for n in (3, 2, 1):
        if len(tokens) < n:
            continue
        starts = [j for j in range(len(tokens) - n) if tokens[j:j + n] == tokens[-n:]]
        if starts:
            start, virtual = starts[-1] + n, list(tokens)
            for i in range(k):
                virtual.append(virtual[start + i])
            return virtual[len(tokens):]
    return []


@pytest.mark.parametrize("seed", range(4))
def test_drafter_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, 9, (1,), generator=g))
    tokens = torch.randint(0, 2 + seed * 3, (80,), generator=g).tolist()
    drafter = PromptLookup(k)
    for i, t in enumerate(tokens):
        assert drafter.propose() == brute_force_draft(tokens[:i], k), (i, k)
        drafter.append(t)
    drafter.reset(tokens[:40])
    assert drafter.propose() == brute_force_draft(tokens[:40], k)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_greedy_tokens_equal_plain_decoding(tiny, k):
    decoder = decoder_for(tiny, k)
    for prompt in (repetitive(k, tiny.config.vocab_size), random_tokens(k, tiny.config.vocab_size)):
        got = decoder.generate(prompt, 96, stop_on_eos=False)
        assert torch.equal(got.tokens, reference(tiny, prompt, 96, stop_on_eos=False).tokens)
        assert decoder.stats.verifies > 0 and decoder.stats.accepted > 0  # drafts were verified and used


def test_bundled_model_tokens_equal_plain_decoding():
    model = load_model("kjv-llama-18m", dtype="fp32", device="cpu")
    ids = model.tokenizer.encode((model.path / "heldout.txt").read_text()[:3000])
    prompt = ids[:160] + ids[1:9]  # a passage, then its opening again (P0.7's editing prompt)
    decoder = decoder_for(model, 6, break_even=0.5)
    got = decoder.generate(prompt, 40, stop_on_eos=False)
    assert torch.equal(got.tokens, reference(model, prompt, 40, stop_on_eos=False).tokens)
    assert decoder.stats.verifies > 0


def test_eos_and_max_new_tokens_inside_an_accepted_draft(tiny):
    prompt = repetitive(11, tiny.config.vocab_size)
    full = reference(tiny, prompt, 40, stop_on_eos=False).tokens[0].tolist()
    decoder = decoder_for(tiny, 6)
    for n in (1, 2, 5, 13, 40):
        assert decoder.generate(prompt, n, stop_on_eos=False).tokens[0].tolist() == full[:n]
    eos = next(t for i, t in enumerate(full) if i >= 5 and t not in full[:i])  # first seen after token 5
    chunks = []
    got = decoder.generate(prompt, 40, eos_ids=(eos,), on_tokens=chunks.append)
    expected = reference(tiny, prompt, 40, eos_ids=(eos,))
    assert torch.equal(got.tokens, expected.tokens) and got.lengths == expected.lengths
    assert got.tokens[0, -1] == eos and torch.equal(torch.cat(chunks, 1), got.tokens)
    assert decoder.stats.accepted > 0


class _Scripted(PromptLookup):
    """Drafts that are wrong (a token the output never holds) until ``right_from`` tokens, then right."""

    def __init__(self, k: int, truth: list[int], wrong: int, right_from: int):
        super().__init__(k)
        self.truth, self.wrong, self.right_from = truth, wrong, right_from

    def propose(self) -> list[int]:
        n = len(self.tokens)
        if n < self.right_from:
            return [self.wrong] * self.k
        return (self.truth[n:n + self.k] + [self.wrong] * self.k)[:self.k]


def test_switches_off_when_drafts_fail_and_back_on_when_they_hit(tiny):
    prompt = random_tokens(3, tiny.config.vocab_size, 40)
    new = 120
    out = reference(tiny, prompt, new, stop_on_eos=False).tokens[0].tolist()
    wrong = next(t for t in range(3, tiny.config.vocab_size) if t not in out)
    decoder = decoder_for(tiny, 4)
    decoder.drafter = _Scripted(4, prompt + out, wrong, right_from=len(prompt) + 60)
    got = decoder.generate(prompt, new, stop_on_eos=False)
    assert got.tokens[0].tolist() == out
    s = decoder.stats
    assert s.switched_off >= 1 and s.verifies > 0 and s.accepted > 0  # off on failures, on again on hits
    assert s.plain_tokens >= 50  # the failing stretch ran as plain steps, not verifies

    decoder.drafter = _Scripted(4, prompt + out, wrong, right_from=10 ** 9)  # always wrong
    assert decoder.generate(prompt, new, stop_on_eos=False).tokens[0].tolist() == out
    assert decoder.stats.accepted == 0 and decoder.stats.verifies <= 3 and decoder.stats.switched_off == 1


def test_sampling_runs_plain_decoding_and_batches_are_refused(tiny):
    decoder = decoder_for(tiny, 4)
    prompt = random_tokens(4, tiny.config.vocab_size, 20)
    sampling = SamplingParams(temperature=0.8, top_k=20, seed=3)
    assert torch.equal(decoder.generate(prompt, 16, sampling, stop_on_eos=False).tokens,
                       decoder.engine.generate(prompt, 16, sampling, stop_on_eos=False).tokens)
    with pytest.raises(ModelError, match="one sequence"):
        decoder.generate([prompt, prompt], 4)


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the Triton step on a CPU needs TRITON_INTERPRET=1 (make test sets it)")
def test_triton_plain_steps_read_what_the_verify_wrote(tiny):
    """The GPU pairing: plain tokens from the Triton step, verifies from the PyTorch step, one cache."""
    from phase0_prototype.dev import TritonStepEngine

    decoder = SpeculativeDecoder(TritonStepEngine(tiny, max_seq_len=64, compile=False), 4)
    decoder.break_even = 1.0
    prompt = random_tokens(8, tiny.config.vocab_size, 24)
    expected = reference(tiny, prompt, 14, stop_on_eos=False).tokens
    truth = prompt + expected[0].tolist()
    window = range(len(prompt) + 5, len(prompt) + 10)  # plain steps, then a verify, then plain steps
    decoder.drafter = _Window(4, truth, window)
    assert torch.equal(decoder.generate(prompt, 14, stop_on_eos=False).tokens, expected)
    assert decoder.stats.verifies == 1 and decoder.stats.accepted == 4 and decoder.stats.plain_tokens == 8


class _Window(PromptLookup):
    """Right drafts while the sequence length is in ``window``, none outside it."""

    def __init__(self, k: int, truth: list[int], window: range):
        super().__init__(k)
        self.truth, self.window = truth, window

    def propose(self) -> list[int]:
        n = len(self.tokens)
        return self.truth[n:n + self.k] if n in self.window else []
