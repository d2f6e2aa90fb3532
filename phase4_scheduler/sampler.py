"""Per-request sampling over one step's logits: greedy rows in one ``argmax``, the others one by one
with phase 0's sampler (temperature, top-k, top-p) and the request's own seeded generator, so a
request's tokens do not depend on which other requests share its batch."""

from __future__ import annotations

import torch

from phase0_prototype.sampling import sample
from phase4_scheduler.request import Request


class Sampler:
    def __init__(self, device: torch.device):
        self.device = device
        self._generators: dict[int, torch.Generator | None] = {}

    def forget(self, request_id: int) -> None:
        self._generators.pop(request_id, None)

    def __call__(self, requests: list[Request], logits: torch.Tensor) -> list[int]:
        if not requests:
            return []
        tokens = logits.argmax(dim=-1)
        for row, r in enumerate(requests):
            if r.sampling.greedy:
                continue
            if r.request_id not in self._generators:
                self._generators[r.request_id] = r.sampling.generator(self.device)
            tokens[row] = sample(logits[row:row + 1], r.sampling, self._generators[r.request_id])[0]
        return tokens.tolist()
