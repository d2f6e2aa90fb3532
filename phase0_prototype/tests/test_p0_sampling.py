"""Sampling masks against a float64 NumPy reference; the random draw against its distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import SamplingParams, sample, top_k_mask, top_p_mask


def ref_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def ref_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    out = np.full_like(logits, -np.inf)
    for r, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-row, kind="stable")
        mass = 0.0
        for i in order:  # take the most likely tokens until their mass reaches p
            out[r, i] = row[i]
            mass += probs[i]
            if mass >= p:
                break
    return out


@pytest.mark.parametrize("k", [1, 5, 50, 199])
def test_top_k_mask_matches_reference(k):
    logits = torch.randn(4, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    assert np.array_equal(top_k_mask(logits, k).numpy(), ref_top_k(logits.numpy(), k))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_mask_matches_reference(p):
    g = torch.Generator().manual_seed(int(p * 1000))
    logits = 3 * torch.randn(4, 200, dtype=torch.float64, generator=g)
    got = top_p_mask(logits, p).numpy()
    assert np.array_equal(np.isfinite(got), np.isfinite(ref_top_p(logits.numpy(), p)))


def test_sampling_follows_the_distribution():
    """Exponential-race draws land on each token with its (tempered, truncated) probability."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    params = SamplingParams(temperature=0.7, top_k=4, seed=0)
    n = 20000
    draws = sample(logits.expand(n, -1), params, params.generator("cpu"))
    freq = torch.bincount(draws, minlength=6).double() / n
    expected = torch.softmax(top_k_mask(logits / 0.7, 4).double(), -1)[0]
    assert freq[4:].sum() == 0
    assert torch.allclose(freq, expected, atol=0.015)


def test_seed_reproducible_and_seeds_differ():
    logits = torch.randn(3, 500)
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=123)
    a = [sample(logits, params, g) for g in [params.generator("cpu")] for _ in range(5)]
    b = [sample(logits, params, g) for g in [params.generator("cpu")] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    other = SamplingParams(temperature=1.0, top_p=0.95, seed=124)
    g = other.generator("cpu")
    assert any(not torch.equal(x, sample(logits, other, g)) for x in a)


def test_greedy_is_argmax():
    logits = torch.randn(5, 300)
    assert torch.equal(sample(logits, SamplingParams()), logits.argmax(-1))


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_parameters_are_user_errors(kwargs):
    with pytest.raises(ModelError):
        SamplingParams(**kwargs)
