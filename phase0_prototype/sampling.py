"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

Everything stays on the device and never synchronises with the host: the random draw is the
"exponential race" (``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``), which gpt-fast uses
instead of ``torch.multinomial`` for the same reason. The masks follow transformers' logits warpers:
top-k keeps every token tied with the k-th largest; top-p keeps the smallest set of most likely tokens
whose probability reaches ``top_p`` (at least one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError

SEED_RANGE = (-2**63, 2**63 - 1)  # int64, as vLLM (torch's manual_seed overflows past 2**64)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = no top-k
    top_p: float = 1.0  # 1 = no top-p
    seed: int | None = None  # None = nondeterministic

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ModelError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ModelError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ModelError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            raise ModelError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (int64), "
                             f"got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """A generator seeded from ``seed`` on ``device`` (None when unseeded or greedy)."""
        if self.greedy or self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` with every entry below the k-th largest of its row set to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """``logits`` with -inf outside the nucleus: a token stays when the probability of the tokens
    strictly more likely than it is < p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids ``[batch]`` (int64) from ``logits [batch, vocab]``."""
    if params.greedy:
        return logits.argmax(dim=-1)
    scores = logits.float() / params.temperature
    scores = top_p_mask(top_k_mask(scores, params.top_k), params.top_p)
    probs = scores.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


GREEDY = SamplingParams()  # the default of every generate()
