"""What the scheduler hands the model runner each step, its configuration, and the shared bookkeeping.

``StepPlan.chunks`` lists, per scheduled request, the span of positions to compute this step
(decodes first, then prefill chunks) with the request's block table; the runner writes those
positions' K/V into the paged cache and returns logits for the chunks that end on the request's
last token (``ScheduledChunk.sample``). ``SchedulerBase`` holds the queues and what both policies do
the same way: admission checks, applying sampled tokens, finishing, aborting, freeing KV blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from phase4_scheduler.request import Request, Status

POLICIES = ("fcfs", "priority", "sjf")


@dataclass(frozen=True)
class SchedulerConfig:
    """``max_num_batched_tokens``: the per-step token budget (decodes + prefill chunks).
    ``policy``: waiting-queue order — ``fcfs``; ``priority`` (lower class first, then arrival);
    ``sjf`` (class first, then the shortest requested ``max_tokens``). ``max_wait_steps``: aging — a
    request waiting this many steps goes ahead of every younger one (None: no aging)."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 256
    policy: str = "sjf"
    max_wait_steps: int | None = 64

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                             f"({self.max_num_seqs}) so every running request can decode each step")
        if self.max_wait_steps is not None and self.max_wait_steps < 1:
            raise ValueError(f"max_wait_steps must be >= 1 or None, got {self.max_wait_steps}")


class ScheduledChunk:
    """Positions ``[start, start + num_tokens)`` of ``request`` to compute this step, with its block table.

    A plain slotted class (not a dataclass): the scheduler makes one per running request per step.
    ``sample``: the chunk reaches the request's last token, so its logits choose the next token —
    fixed when the chunk is made (the request grows once the step is launched)."""

    __slots__ = ("request", "start", "num_tokens", "block_table", "is_decode", "end", "sample")

    def __init__(self, request: Request, start: int, num_tokens: int, block_table: list[int],
                 is_decode: bool = False):
        self.request, self.start, self.num_tokens, self.block_table = request, start, num_tokens, block_table
        self.is_decode = is_decode  # one token after the request already has output (not a prefill piece)
        self.end = start + num_tokens
        self.sample = self.end == len(request.prompt_ids) + len(request.output_ids) + request.num_in_flight

    @property
    def token_ids(self) -> list[int]:
        """The chunk's tokens (``request.PENDING`` for one sampled on the device and not read back yet)."""
        return self.request.all_ids[self.start:self.end]

    def __repr__(self) -> str:
        return (f"ScheduledChunk(request={self.request.request_id}, start={self.start}, num_tokens={self.num_tokens}, "
                f"sample={self.sample})")


@dataclass
class StepPlan:
    step: int
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_decodes(self) -> int:
        return sum(1 for c in self.chunks if c.is_decode)

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_batched_tokens - self.num_decodes

    @property
    def empty(self) -> bool:
        return not self.chunks


class SchedulerBase:
    """Queues, admission limits and the end of a step; subclasses write ``schedule``."""

    def __init__(self, config: SchedulerConfig, block_manager):
        self.config, self.blocks = config, block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.step_count = 0
        self.by_id: dict[int, Request] = {}

    # ------------------------------------------------------------------ limits
    def max_request_tokens(self) -> int:
        """The largest prompt + max_tokens the KV pool can ever hold (less the watermark)."""
        return (self.blocks.num_gpu_blocks - self.blocks.watermark_blocks) * self.blocks.block_size

    def add(self, request: Request) -> None:
        limit = self.max_request_tokens()
        if request.max_total_tokens > limit:
            raise ValueError(f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_tokens}) = "
                             f"{request.max_total_tokens} exceeds the KV cache capacity of {limit} tokens")
        if request.request_id in self.by_id:
            raise ValueError(f"request id {request.request_id} is already queued")
        request.arrival_step = self.step_count
        request.status = Status.WAITING
        self.by_id[request.request_id] = request
        self.waiting.append(request)

    # ------------------------------------------------------------------ state
    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def kv_usage(self) -> float:
        total = self.blocks.num_gpu_blocks
        return (total - self.blocks.num_free_gpu_blocks) / total

    # ------------------------------------------------------------------ end of a step
    def update(self, plan: StepPlan, sampled: dict[int, int]) -> list[Request]:
        """Advance the computed spans, append ``sampled`` tokens (request id -> token); the finished."""
        self.advance(plan)
        return self.apply(plan, sampled)

    def advance(self, plan: StepPlan) -> None:
        """The step was launched: its spans count as computed and each sampling chunk has a token in
        flight (the first half of ``update``; an overlapped engine reads the tokens back later)."""
        running = Status.RUNNING
        for chunk in plan.chunks:
            r = chunk.request
            if r.status is running:  # (not aborted between schedule and launch)
                r.num_computed = chunk.end
                if chunk.sample:
                    r.num_in_flight += 1

    def apply(self, plan: StepPlan, sampled: dict[int, int]) -> list[Request]:
        """The step's tokens are back: append them in order, finish on EOS or length (second half of
        ``update``). A request finished meanwhile (abort, stop string) drops its token; one preempted
        meanwhile keeps it (it was computed from a valid cache) and recomputes it later."""
        finished, done = [], Status.FINISHED
        for chunk in plan.chunks:
            r = chunk.request
            if not chunk.sample or r.status is done or r.num_in_flight == 0:
                continue
            r.num_in_flight -= 1
            reason = r.append_token(sampled[r.request_id])
            if reason is not None:
                self.finish(r, reason)
                finished.append(r)
        return finished

    def finish(self, request: Request, reason: str) -> None:
        """End ``request`` (EOS, length, a stop string, an abort) and return its KV blocks."""
        if request.status is Status.FINISHED:
            return
        if request.status is Status.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        if request.request_id in self.blocks:
            self.blocks.free(request.request_id)
        request.status, request.finish_reason = Status.FINISHED, reason
        request.num_in_flight = 0  # tokens still on their way are dropped
        del self.by_id[request.request_id]

    def abort(self, request_id: int) -> Request | None:
        request = self.by_id.get(request_id)
        if request is not None:
            self.finish(request, "abort")
        return request

    def _chunk(self, request: Request, num_tokens: int, is_decode: bool | None = None) -> ScheduledChunk:
        """``is_decode``: pass it when known (saves recomputing it for every running request, every step)."""
        if request.first_scheduled_step < 0:
            request.first_scheduled_step = self.step_count
        if is_decode is None:
            is_decode = request.is_decoding
        return ScheduledChunk(request, request.num_computed, num_tokens,
                              self.blocks.block_table(request.request_id), is_decode=is_decode)
