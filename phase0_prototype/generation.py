"""What ``generate`` returns and the bookkeeping both engines share (context checks, EOS handling).

EOS semantics (identical for every engine, so their outputs compare token for token): a sequence that
emits an EOS id is finished; its later positions hold its first EOS id as padding; ``lengths[b]``
counts its tokens up to and including that EOS. Generation stops when every sequence is finished
(``stop_on_eos``) or after ``max_new_tokens``; the returned tensor is cut at ``max(lengths)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from phase0_prototype.errors import ModelError

# Called with each chunk of new tokens, ``[batch, k]`` int64 on the CPU, in order; a True return ends the
# generation at that chunk (the caller has what it needs), None or False goes on.
TokenCallback = Callable[[torch.Tensor], "bool | None"]


@dataclass
class GenerationOutput:
    tokens: torch.Tensor  # [batch, n] int64 on the CPU (n ≤ max_new_tokens)
    lengths: list[int]  # per sequence, up to and including its EOS

    def sequences(self) -> list[list[int]]:
        return [self.tokens[b, :n].tolist() for b, n in enumerate(self.lengths)]


def check_context(prompt_len: int, max_new_tokens: int, limit: int,
                  what: str = "the model's context") -> None:
    if prompt_len == 0:
        raise ModelError("the prompt is empty: give at least one token")
    if max_new_tokens < 1:
        raise ModelError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > limit:
        raise ModelError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds {what} "
                         f"of {limit} positions: shorten the prompt or lower --max-new-tokens")


def as_batch(prompt_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
             device: torch.device) -> torch.Tensor:
    """Prompt ids as ``[batch, tokens]`` int64 on ``device`` (all rows the same length)."""
    t = prompt_ids if isinstance(prompt_ids, torch.Tensor) else torch.tensor(prompt_ids)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ModelError(f"prompt ids must be [tokens] or [batch, tokens], got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.long)


class EosState:
    """Per-sequence finished flags, on the device, updated without synchronising."""

    def __init__(self, batch: int, eos_ids: Sequence[int], device: torch.device):
        self.eos = torch.tensor(list(eos_ids) or [-1], device=device, dtype=torch.long)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.pad = torch.full((batch,), int(self.eos[0]), dtype=torch.long, device=device)

    def update(self, next_tokens: torch.Tensor) -> torch.Tensor:
        """Replace tokens of finished sequences by padding, then mark new EOS; returns the tokens."""
        next_tokens = torch.where(self.finished, self.pad, next_tokens)
        self.finished |= torch.isin(next_tokens, self.eos)
        return next_tokens


def finish(tokens: torch.Tensor, eos_ids: Sequence[int], stop_on_eos: bool) -> GenerationOutput:
    """Cut host-side ``tokens [batch, n]`` at each sequence's first EOS (when stopping on EOS)."""
    tokens = tokens.cpu()
    n = tokens.shape[1]
    lengths = [n] * tokens.shape[0]
    if stop_on_eos and eos_ids:
        is_eos = torch.isin(tokens, torch.tensor(list(eos_ids)))
        for b in range(tokens.shape[0]):
            hits = is_eos[b].nonzero()
            if len(hits):
                lengths[b] = int(hits[0]) + 1
    return GenerationOutput(tokens[:, : max(lengths)], lengths)
