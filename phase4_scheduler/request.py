"""A generation request as the scheduler sees it: token ids, progress, limits and how it finished.

One idea carries the whole scheduler: a request's tokens are ``prompt_ids + output_ids`` and
``num_computed`` of them already have their K/V in the paged cache. A step computes the next chunk
``[num_computed, num_computed + n)``; when that chunk reaches the last token, the step's logits give
the next token. A decode is the case ``n == 1``; a prefill chunk is ``n > 1``; recompute after
preemption just sets ``num_computed = 0`` and lets the same rule prefill prompt and output again.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase4_scheduler.text_stream import check_stop


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"  # preempted by swap: its KV blocks wait in the CPU pool, its progress is kept
    FINISHED = "finished"


_ids = itertools.count()
PENDING = -1  # a token sampled on the device whose value the host has not read yet


@dataclass(eq=False)
class Request:
    """``priority``: lower runs first (0 is the default class). ``max_tokens``: new tokens at most."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    eos_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    processing: object = None  # ``logits_processing.LogitsProcessing`` (penalties, bias, min_tokens) or None
    logprobs: int | None = None  # None: not asked; k: each token's log-probability and the k most likely
    token_logprobs: list = field(default_factory=list)  # per output token: (logprob, [(token id, logprob), ...])
    request_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_in_flight: int = 0  # sampled on the device, not yet in output_ids (overlapped steps)
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "abort", "error: <why>"
    arrival_step: int = -1  # scheduler step at which it was added (aging counts steps)
    first_scheduled_step: int = -1
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    text_stream: object = field(default=None, repr=False)  # the engine's ``TextStream`` for its output text
    # Prefill/decode disaggregation's prefill side: its KV blocks outlive it (finished, they stay allocated
    # until ``BatchingEngine.release_kv``) so they can be sent to the decode side first.
    keep_kv: bool = False
    # The solution scheduler's bookkeeping while running (attributes, not dict lookups: read every step):
    # its block table, its row in ``BlockTableRows``, and the KV slots ``allocate`` reserved at admission.
    kv_table: list[int] | None = field(default=None, repr=False)
    kv_seat: int = field(default=-1, repr=False)
    kv_slots: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt is empty: give at least one token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def all_ids(self) -> list[int]:
        ids = self.prompt_ids + self.output_ids
        return ids + [PENDING] * self.num_in_flight if self.num_in_flight else ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids) + self.num_in_flight

    @property
    def num_pending(self) -> int:
        """Tokens still to run through the model before the next token can be sampled (0 once the
        last token ``max_tokens`` allows is sampled: its K/V is never needed)."""
        if len(self.output_ids) + self.num_in_flight >= self.max_tokens:
            return 0
        return len(self.prompt_ids) + len(self.output_ids) + self.num_in_flight - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.num_pending == 1 and bool(self.output_ids or self.num_in_flight)

    @property
    def max_total_tokens(self) -> int:
        return len(self.prompt_ids) + self.max_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass(frozen=True)
class RequestLimits:
    """What a new request is checked against — the vocabulary, the context limit, the EOS ids — apart from the
    engine, so that a process without the model (an API server process, ``api_servers``) makes the same requests."""

    vocab_size: int
    context_limit: int
    eos_ids: tuple[int, ...]

    def make_request(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams = GREEDY, *,
                     stop: tuple[str, ...] = (), priority: int = 0, ignore_eos: bool = False,
                     processing=None, logprobs: int | None = None) -> Request:
        """A checked request (ValueError naming the limit when it cannot fit or its stop strings are
        past ``MAX_STOP_STRINGS`` / ``MAX_STOP_LENGTH``). ``processing``: penalties, logit bias, min_tokens;
        ``logprobs``: k to return each token's log-probability and the k most likely (None: none)."""
        stop = check_stop(stop)
        vocab = self.vocab_size
        if not all(0 <= t < vocab for t in prompt_ids):
            raise ModelError(f"prompt token ids must be in [0, {vocab}) for this model's vocabulary")
        limit = self.context_limit
        if len(prompt_ids) + max_tokens > limit:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                             f"limit of {limit} tokens: shorten the prompt or lower max_tokens")
        if processing is not None:
            processing.check_vocab(vocab)
            if processing.min_tokens > max_tokens:
                raise ModelError(f"min_tokens ({processing.min_tokens}) exceeds max_tokens ({max_tokens})")
        eos = () if ignore_eos else self.eos_ids
        if logprobs is not None and not 0 <= logprobs <= vocab:
            raise ModelError(f"logprobs must be in [0, {vocab}], got {logprobs}")
        return Request(list(prompt_ids), max_tokens, sampling, priority=priority, eos_ids=eos, stop=stop,
                       processing=processing if processing is not None and processing.active else None,
                       logprobs=logprobs)


class RemoteEngine:
    """What the server reads of an engine, in a process without the model (an API process of ``api_servers``,
    the Ray Serve front of prefill/decode disaggregation): the tokenizer, the limits, requests made from them."""

    def __init__(self, tokenizer, limits: RequestLimits):
        self.tokenizer, self.limits = tokenizer, limits
        self.make_request = limits.make_request

    @property
    def vocab_size(self) -> int:
        return self.limits.vocab_size

    def context_limit(self) -> int:
        return self.limits.context_limit
