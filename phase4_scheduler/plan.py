"""What the scheduler hands the model runner each step, its configuration, and the shared bookkeeping.

``StepPlan.chunks`` lists, per scheduled request, the span of positions to compute this step
(decodes first, then prefill chunks) with the request's block table; the runner writes those
positions' K/V into the paged cache and returns logits for the chunks that end on the request's
last token (``ScheduledChunk.sample``); the solution keeps its decodes as columns of the plan
(``StepPlan.decode_*``), which ``chunks`` lists as chunks when read. ``SchedulerBase`` holds the
queues and what both policies do the same way: admission checks, applying sampled tokens,
finishing, aborting, freeing KV blocks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from phase4_scheduler.request import Request, Status

POLICIES = ("fcfs", "priority", "sjf")
PREEMPTION_MODES = ("recompute", "swap")


# A server's (max_num_seqs, max_num_batched_tokens) when the user gives neither: a GPU batches like vLLM
# (hundreds of sequences, thousands of tokens a step, or the card idles on a 1 B model); a CPU stays small.
SERVING_DEFAULTS = {"cuda": (256, 4096), "cpu": (32, 512)}


@dataclass(frozen=True)
class SchedulerConfig:
    """``max_num_batched_tokens``: the per-step token budget (decodes + prefill chunks).
    ``policy``: waiting-queue order — ``fcfs``; ``priority`` (lower class first, then arrival);
    ``sjf`` (class first, then the shortest requested ``max_tokens``). ``max_wait_steps``: aging — a
    request waiting this many steps goes ahead of every younger one (None: no aging).
    ``preemption``: what happens to a victim when KV blocks run out — ``recompute`` (free its blocks,
    prefill prompt + output again later) or ``swap`` (copy its blocks to the CPU pool of the block
    manager and back later; recompute when that pool is full). The solution scheduler reads it; the
    framework never preempts."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 256
    policy: str = "sjf"
    max_wait_steps: int | None = 64
    preemption: str = "recompute"

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
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption!r}")


class ScheduledChunk:
    """Positions ``[start, start + num_tokens)`` of ``request`` to compute this step, with its block table.

    A plain slotted class (not a dataclass): the scheduler makes one per running request per step.
    ``sample``: the chunk reaches the request's last token, so its logits choose the next token —
    fixed when the chunk is made (the request grows once the step is launched)."""

    __slots__ = ("request", "start", "num_tokens", "block_table", "is_decode", "end", "sample")

    def __init__(self, request: Request, start: int, num_tokens: int, block_table: list[int],
                 is_decode: bool = False, sample: bool | None = None):
        self.request, self.start, self.num_tokens, self.block_table = request, start, num_tokens, block_table
        self.is_decode = is_decode  # one token after the request already has output (not a prefill piece)
        self.end = start + num_tokens
        if sample is None:
            sample = self.end == len(request.prompt_ids) + len(request.output_ids) + request.num_in_flight
        self.sample = sample

    @property
    def token_ids(self) -> list[int]:
        """The chunk's tokens (``request.PENDING`` for one sampled on the device and not read back yet)."""
        return self.request.all_ids[self.start:self.end]

    def __repr__(self) -> str:
        return (f"ScheduledChunk(request={self.request.request_id}, start={self.start}, num_tokens={self.num_tokens}, "
                f"sample={self.sample})")


class StepPlan:
    """One step: ``chunks`` (in order), the requests preempted to make room, and the KV block copies
    to do before the forward pass: ``swap_out`` ``(gpu, cpu)`` pairs, then ``swap_in`` ``(cpu, gpu)``.

    The scheduler's hot case — a running request decoding its last token — is kept *columnar*: the
    ``decode_*`` lists (request, start position, block table), one entry per decode, rows ahead of
    every chunk. That spares an object per request per step; the runner and ``advance``/``apply`` read
    the columns directly. ``chunks`` still lists every chunk: reading it turns the columns into
    ``ScheduledChunk``s once (each samples: a decode reaches its request's last token)."""

    __slots__ = ("step", "_chunks", "preempted", "decode_requests", "decode_starts", "decode_tables",
                 "decode_tails", "decode_seats", "table_rows", "decode_landed", "swap_out", "swap_in",
                 "swapped_in")

    def __init__(self, step: int, chunks: list[ScheduledChunk] | None = None, preempted: list[Request] | None = None):
        self.step = step
        self._chunks: list[ScheduledChunk] = [] if chunks is None else chunks
        self.preempted: list[Request] = [] if preempted is None else preempted
        self.decode_requests: list[Request] = []
        self.decode_starts: list[int] = []
        self.decode_tables: list[list[int]] = []
        # Columnar rows that are the 1-token tail of a prompt (no output yet): not counted as decodes.
        self.decode_tails: list[Request] = []
        # The decodes' rows in ``table_rows`` (a ``BlockTableRows`` the scheduler keeps; None without
        # one): their block tables as one matrix, valid until the next ``schedule``.
        self.decode_seats: list[int] = []
        self.table_rows = None
        # Columnar decodes whose last token is on the host; the others' is still on the device (sampled
        # by a launched step whose tokens are not read back: overlapped steps). Valid until ``advance``.
        self.decode_landed: list[Request] = []
        # Block copies of preemption by swap (``BlockManager.swap_out`` / ``swap_in``), in that order; the
        # runner does them before the forward pass. ``swapped_in``: the requests brought back this step.
        # (Empty tuples until a step swaps: the scheduler assigns lists then.)
        self.swap_out: list[tuple[int, int]] | tuple = ()
        self.swap_in: list[tuple[int, int]] | tuple = ()
        self.swapped_in: list[Request] | tuple = ()

    @property
    def chunks(self) -> list[ScheduledChunk]:
        if self.decode_requests:
            tail = {id(r) for r in self.decode_tails}
            made = [ScheduledChunk(r, s, 1, t, id(r) not in tail, True) for r, s, t in
                    zip(self.decode_requests, self.decode_starts, self.decode_tables, strict=True)]
            self._chunks[:0] = made
            self.decode_requests, self.decode_starts, self.decode_tables = [], [], []
            self.decode_tails, self.decode_seats, self.decode_landed = [], [], []
        return self._chunks

    @property
    def explicit_chunks(self) -> list[ScheduledChunk]:
        """The chunks after the columnar decodes (all of them once ``chunks`` has been read)."""
        return self._chunks

    @property
    def num_batched_tokens(self) -> int:
        return len(self.decode_requests) + sum(c.num_tokens for c in self._chunks)

    @property
    def num_decodes(self) -> int:
        return len(self.decode_requests) - len(self.decode_tails) + sum(1 for c in self._chunks if c.is_decode)

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_batched_tokens - self.num_decodes

    @property
    def empty(self) -> bool:
        return not self.decode_requests and not self._chunks

    def __repr__(self) -> str:
        return f"StepPlan(step={self.step}, chunks={self.chunks!r}, preempted={self.preempted!r})"


class SchedulerBase:
    """Queues, admission limits and the end of a step; subclasses write ``schedule``."""

    def __init__(self, config: SchedulerConfig, block_manager):
        self.config, self.blocks = config, block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: deque[Request] = deque()  # preempted by swap: their KV blocks are in the CPU pool
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

    @property
    def num_swapped(self) -> int:
        return len(self.swapped)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

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
        for r, start in zip(plan.decode_requests, plan.decode_starts, strict=True):  # columnar decodes: all sample
            if r.status is running:  # (not aborted between schedule and launch)
                r.num_computed = start + 1
                r.num_in_flight += 1
        for chunk in plan.explicit_chunks:
            r = chunk.request
            if r.status is running:
                r.num_computed = chunk.end
                if chunk.sample:
                    r.num_in_flight += 1

    def apply(self, plan: StepPlan, sampled: dict[int, int]) -> list[Request]:
        """The step's tokens are back: append them in order, finish on EOS or length (second half of
        ``update``). A request finished meanwhile (abort, stop string) drops its token; one preempted
        meanwhile keeps it (it was computed from a valid cache) and recomputes it later."""
        requests = plan.decode_requests + [c.request for c in plan.explicit_chunks if c.sample]
        _, finished = self.apply_rows(requests, [sampled[r.request_id] for r in requests])
        return finished

    def apply_rows(self, requests: list[Request], tokens: list[int]) -> tuple[list[Request], list[Request]]:
        """``apply`` for the engine: ``tokens[i]`` is ``requests[i]``'s (one step's sampling rows, in row
        order; each request at most once). Returns (the requests that took their token, the finished).

        One pass that appends each token and finishes on EOS or length: it runs for every running request,
        every step."""
        dropped, finished, done = [], [], Status.FINISHED
        now = None
        for r, token in zip(requests, tokens, strict=True):
            if r.status is done or not r.num_in_flight:
                dropped.append(r)
                continue
            r.num_in_flight -= 1
            out = r.output_ids
            out.append(token)
            if r.first_token_time is None:
                r.first_token_time = now = now or time.perf_counter()
            if token in r.eos_ids:
                reason = "stop"
            elif len(out) >= r.max_tokens:
                reason = "length"
            else:
                continue
            self.finish(r, reason)
            finished.append(r)
        if dropped:
            gone = set(map(id, dropped))
            return [r for r in requests if id(r) not in gone], finished
        return list(requests), finished

    def finish(self, request: Request, reason: str) -> None:
        """End ``request`` (EOS, length, a stop string, an abort) and return its KV blocks (unless it
        ``keep_kv``: then its owner frees them, ``BatchingEngine.release_kv``)."""
        if request.status is Status.FINISHED:
            return
        if request.status is Status.RUNNING:
            self.running.remove(request)
        elif request.status is Status.SWAPPED:
            self.swapped.remove(request)
        else:
            self.waiting.remove(request)
        if request.request_id in self.blocks and not request.keep_kv:
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
