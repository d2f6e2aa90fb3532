"""What a request asks of its logits before sampling: OpenAI's / vLLM's penalties, ``logit_bias``, ``min_tokens``.

Applied per row in this order, as vLLM does: repetition penalty over every token of prompt and output seen
so far (a positive logit divided by it, a negative one multiplied: CTRL, Keskar et al. 2019 §4.1), then
``logit - frequency · count - presence · [count > 0]`` over the output's counts, then the bias, then EOS
masked while fewer than ``min_tokens`` were generated. The counts live on the device and grow by a
``scatter_add`` of the sampled token, so no step waits for the host. Limit: rows are processed one by one
(a request that asks for none of these costs nothing; each one that does costs a few small kernels a step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError


@dataclass(frozen=True)
class LogitsProcessing:
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    min_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ModelError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not self.repetition_penalty > 0:
            raise ModelError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.min_tokens < 0:
            raise ModelError(f"min_tokens must be ≥ 0, got {self.min_tokens}")
        for token, bias in self.logit_bias:
            if not -100.0 <= bias <= 100.0:
                raise ModelError(f"logit_bias of token {token} must be in [-100, 100], got {bias}")

    @property
    def active(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)

    def check_vocab(self, vocab_size: int) -> None:
        bad = [t for t, _ in self.logit_bias if not 0 <= t < vocab_size]
        if bad:
            raise ModelError(f"logit_bias names token {bad[0]}, outside this model's vocabulary [0, {vocab_size})")


class RowState:
    """One request's device-side history: output token counts, the prompt's tokens, its bias vector."""

    def __init__(self, p: LogitsProcessing, prompt_ids: list[int], eos_ids: tuple[int, ...], vocab: int,
                 device: torch.device):
        self.p, self.eos_ids, self.generated = p, list(eos_ids), 0
        self.counts = torch.zeros(vocab, dtype=torch.int32, device=device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)  # prompt ∪ output (repetition)
        if prompt_ids:
            self.seen[torch.tensor(prompt_ids, device=device)] = True
        self.bias = None
        if p.logit_bias:
            self.bias = torch.zeros(vocab, dtype=torch.float32, device=device)
            ids, values = zip(*p.logit_bias, strict=True)
            self.bias[torch.tensor(ids, device=device)] = torch.tensor(values, device=device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [1, vocab]`` processed (fp32, a new tensor)."""
        p, x = self.p, logits.float().clone()
        if p.repetition_penalty != 1.0:
            x = torch.where(self.seen, torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty), x)
        if p.frequency_penalty or p.presence_penalty:
            x = x - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0)
        if self.bias is not None:
            x = x + self.bias
        if self.generated < p.min_tokens and self.eos_ids:
            x[..., self.eos_ids] = float("-inf")
        return x

    def record(self, token: torch.Tensor) -> None:
        """The row's sampled token (a 1-element device tensor) joins the history, without a host sync."""
        self.counts.scatter_add_(0, token.view(1), torch.ones(1, dtype=torch.int32, device=token.device))
        self.seen.scatter_(0, token.view(1), True)
        self.generated += 1
