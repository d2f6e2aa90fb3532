"""Per-request sampling over one step's logits, on the device: greedy rows are one ``argmax`` (taken
by the runner, inside the decode graph when there is one), the others one by one with phase 0's sampler
(temperature, top-k, top-p; no host sync) and the request's own seeded generator, so a request's
tokens do not depend on which other requests share its batch. A request with penalties, a logit bias or
``min_tokens`` (``logits_processing``) has its row processed first, greedy or not. A request that asks for
log-probabilities gets its token's and the top k of the model's distribution (raw logits, as vLLM's default),
computed on the device and read back with the step's tokens (``take_logprobs``). A row whose sampling
fails keeps its argmax and is reported by ``take_failures`` (the engine ends that request alone)."""

from __future__ import annotations

import torch

from phase0_prototype.sampling import sample
from phase4_scheduler.logits_processing import RowState
from phase4_scheduler.request import Request


class Sampler:
    def __init__(self, device: torch.device):
        self.device = device
        self._generators: dict[int, torch.Generator | None] = {}
        self._tracking, self._random = False, set()  # ``track``: ids of the tracked non-argmax requests
        self._states: dict[int, RowState] = {}  # request id -> its logits processing's history
        self._failures: list[tuple[Request, Exception]] = []
        self._logprobs: dict[int, tuple] = {}  # request id -> (chosen logprob, top values, top ids), on device

    def forget(self, request_id: int) -> None:
        self._generators.pop(request_id, None)
        self._random.discard(request_id)
        self._states.pop(request_id, None)

    def _generator(self, r: Request) -> torch.Generator | None:
        if r.request_id not in self._generators:
            self._generators[r.request_id] = r.sampling.generator(self.device)
        return self._generators[r.request_id]

    def track(self, r: Request) -> None:
        """Say that ``r`` will be sampled here (the engine does, on add; ``forget`` ends it). While every
        tracked request is greedy, ``sample_rows`` has nothing to do and skips its per-row loop."""
        self._tracking = True
        if r.sampling.temperature or r.processing is not None or r.logprobs is not None:
            self._random.add(r.request_id)

    def sample_rows(self, requests: list[Request], logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """``tokens[:n]`` already holds each row's argmax; overwrite the rows that do not sample greedily."""
        if self._tracking and not self._random:
            return
        for row, r in enumerate(requests):
            if r.sampling.temperature or r.processing is not None:  # (not a plain argmax)
                try:
                    state = self._state(r, logits.shape[-1])
                    x = logits[row:row + 1] if state is None else state.apply(logits[row:row + 1])
                    tokens[row:row + 1] = sample(x, r.sampling, self._generator(r))
                    if state is not None:
                        state.record(tokens[row:row + 1])
                except Exception as e:  # this request's parameters or generator: not the batch's fault
                    self._failures.append((r, e))
            if r.logprobs is not None:
                lp = torch.log_softmax(logits[row].float(), dim=-1)
                top = lp.topk(r.logprobs) if r.logprobs else None
                self._logprobs[r.request_id] = (lp[tokens[row]], top)

    def take_logprobs(self) -> dict[int, tuple]:
        """The logprobs of the rows sampled since the last call (device tensors: read them once the step's
        tokens are on the host)."""
        out, self._logprobs = self._logprobs, {}
        return out

    def _state(self, r: Request, vocab: int) -> RowState | None:
        if r.processing is None:
            return None
        if r.request_id not in self._states:  # its history so far: the prompt, and any output already there
            state = RowState(r.processing, r.prompt_ids + r.output_ids, r.eos_ids, vocab, self.device)
            for t in (t for t in r.output_ids if t >= 0):  # (PENDING ones are still on the device)
                state.record(torch.tensor([t], device=self.device))
            self._states[r.request_id] = state
        return self._states[r.request_id]

    def take_failures(self) -> list[tuple[Request, Exception]]:
        """The (request, error) of the rows whose sampling failed since the last call."""
        failures, self._failures = self._failures, []
        return failures

    def __call__(self, requests: list[Request], logits: torch.Tensor) -> list[int]:
        """Synchronous form: the next token of each request (one host sync)."""
        if not requests:
            return []
        tokens = logits.argmax(dim=-1)
        self.sample_rows(requests, logits, tokens)
        return tokens.tolist()
