"""The engine: scheduler + paged model runner + per-request sampling and text, one ``step`` at a time.

``BatchingEngine.step()`` = plan (scheduler) -> launch the forward pass and sampling on the device (runner)
-> the tokens of a step (EOS, length, text and stop strings) -> events. ``generate`` runs it offline;
``engine_loop.EngineLoop`` runs it in a background thread for the server. The engine itself is
single-threaded: callers on other threads go through the loop's inbox.

**Overlapped steps** (``BatchingConfig.overlap``, on by default; SGLang's overlap scheduler, vLLM's
async scheduling). A decode step of a small model is ~1 ms of GPU work at batch 256, and the host's
work around it — plan the step, read the tokens back, apply them, detokenize — is of the same order.
Done in turn, the GPU idles half the time. So ``step`` launches step N, and only then reads back step
N-1's tokens and applies them, while the GPU computes step N:

    schedule N -> launch N (no wait) -> advance N -> read back + apply N-1 -> events of N-1

``step`` returns ``StepEvents``: what each request got is fixed when the tokens are applied, the
``Event`` objects are made when read (an offline ``generate`` reads none and builds none).

Step N is planned before N-1's tokens are on the host: each request's last token is in flight
(``Request.num_in_flight``) and the runner feeds it to step N from the device. The price is one step
of lag: ``step`` returns the events of the previous step, a request that ends with EOS or a stop
string in step N-1 has already been given a row in step N (that row's token is dropped), and a seat
freed by a finished request is refilled one step later. Greedy tokens are identical either way.

**Faults stay with their request.** A failure while adding one request (its text stream, its sampler),
sampling its row or checking its stop strings ends that request alone (``fail``: finish reason
``"error: <one line>"``, KV blocks freed, a finished event); the batch goes on. A failure of the step
itself (the batched forward pass) is not one request's: it propagates to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import torch
import torch.nn.functional as F

from phase0_prototype.errors import ModelError
from phase0_prototype.kernels.gemv import MAX_BATCH, fused_gemv
from phase0_prototype.kernels.step import FusedLinear
from phase0_prototype.model import RopeFn
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights
from phase3_paged_attention import load_impl as load_attention
from phase4_scheduler import load_impl
from phase4_scheduler.blocks import (
    blocks_for_memory,
    check_size,
    host_memory_bytes,
    make_block_manager,
    step_activation_bytes,
)
from phase4_scheduler.kv_swap import KVSwapSpace
from phase4_scheduler.plan import SchedulerConfig, StepPlan
from phase4_scheduler.request import Request, RequestLimits, Status
from phase4_scheduler.runner import Linear, PagedModelRunner, PendingStep, graph_sizes_for
from phase4_scheduler.sampler import Sampler
from phase4_scheduler.text_stream import TextStream

_output_ids = attrgetter("output_ids")


@dataclass(frozen=True)
class BatchingConfig:
    """``num_blocks=None``: enough KV for ``max_num_seqs`` requests of the full context.

    Preemption by swap (``scheduler.preemption="swap"``; vLLM's ``swap_space``): a pinned host pool of
    ``swap_space`` GiB of KV blocks (or exactly ``num_cpu_blocks``) that victims' blocks are copied to
    instead of being recomputed. It buys a preempted request its progress back for a PCIe round trip of
    its KV (~25 GB/s) instead of re-running its prompt + output through the model; it costs that host
    memory and the copies. A victim that does not fit the pool is recomputed. Unused with recompute.

    ``enable_prefix_caching`` (vLLM's ``--enable-prefix-caching``): full KV blocks are kept, named by a
    hash of their tokens, after their request ends, and a request starting with the same tokens reuses
    them instead of prefilling them again (phase 1's ``allocate_cached``); ``prefix_cache_stats()``."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    scheduler_impl: str = "solution"
    num_blocks: int | None = None
    block_size: int = 16
    watermark: float = 0.01
    cuda_graphs: bool = True
    max_model_len: int | None = None  # prompt + max_tokens limit; defaults to the model's context
    overlap: bool = True  # launch step N before reading back step N-1 (events lag one step)
    swap_space: float = 4.0  # GiB of host KV blocks for preemption by swap
    num_cpu_blocks: int | None = None  # the host pool in blocks (overrides swap_space)
    block_manager_impl: str | None = None  # phase 1's: "solution" (Rust), "reference", a module path; None: best
    attention_impl: str | None = None  # phase 3's: "solution" (Triton), "reference", ...; None: per device
    gpu_memory_utilization: float | None = None  # num_blocks=None on CUDA: the pool from free memory (vLLM's)
    enable_prefix_caching: bool = False  # reuse cached full KV blocks of shared prompt prefixes

    def __post_init__(self) -> None:
        from phase1_rust_memory import limits

        check_size(limits.BLOCK_SIZE, "block_size", self.block_size)
        if self.num_blocks is not None:
            check_size(limits.NUM_GPU_BLOCKS, "num_blocks", self.num_blocks)
        if not self.swap_space >= 0:
            raise ValueError(f"swap_space must be >= 0 GiB, got {self.swap_space}")
        if self.num_cpu_blocks is not None and self.num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be >= 0, got {self.num_cpu_blocks}")
        if self.scheduler.preemption == "swap" and (self.num_cpu_blocks == 0 or
                                                    (self.num_cpu_blocks is None and self.swap_space == 0)):
            raise ValueError("preemption by swap needs a CPU pool: set swap_space > 0 GiB or num_cpu_blocks > 0 "
                             "(or use preemption='recompute')")

    def cpu_blocks(self, block_bytes: int) -> int:
        """Host KV blocks of the swap pool (0 unless preempting by swap); ``block_bytes``: one block, all layers."""
        if self.scheduler.preemption != "swap":
            return 0
        if self.num_cpu_blocks is not None:
            n = self.num_cpu_blocks
        else:
            n = int(self.swap_space * 2**30 // block_bytes)
            if n < 1:
                raise ModelError(f"swap_space of {self.swap_space} GiB holds no KV block ({block_bytes} bytes each): "
                                 "raise it or set num_cpu_blocks")
        ram = host_memory_bytes()
        if ram and n * block_bytes > 0.7 * ram:
            raise ModelError(f"the swap pool ({n * block_bytes / 2**30:.1f} GiB) exceeds 70% of host memory "
                             f"({ram / 2**30:.1f} GiB): lower swap_space / num_cpu_blocks")
        return n


class Event:
    """What one step did for one request: new text (may be empty) and whether it finished.

    For a request without stop strings the text is decoded when ``text`` is first read (events of one
    request are read in order, as the engine loop and ``generate`` do), so nobody pays for text nobody reads.
    """

    __slots__ = ("request", "finished", "_text", "_stream", "_upto")

    def __init__(self, request: Request, text: str | None, finished: bool, *, stream: TextStream | None = None,
                 upto: int = 0):
        self.request, self.finished, self._text, self._stream, self._upto = request, finished, text, stream, upto

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self._stream.catch_up(self.request.output_ids, self._upto, self.finished)
            self._stream = None
        return self._text

    def __repr__(self) -> str:
        return f"Event(request={self.request.request_id}, finished={self.finished})"


class StepEvents(Sequence):
    """The events of one step, made when read: an offline run that never looks builds none.

    What each event says is fixed when the step's tokens are applied (which requests took a token, how
    many output tokens each had then, which finished, the text of those with stop strings); the
    ``Event`` objects themselves are built on first access."""

    EMPTY: "StepEvents"

    __slots__ = ("_requests", "_upto", "_finished", "_texts", "_events")

    def __init__(self, requests: list[Request], upto: list[int], finished: set[int], texts: dict[int, str] | None):
        self._requests, self._upto, self._finished, self._texts = requests, upto, finished, texts
        self._events: list[Event] | None = None

    def _build(self) -> list[Event]:
        if self._events is None:
            texts, finished = self._texts or {}, self._finished
            events = []
            for r, upto in zip(self._requests, self._upto, strict=True):
                rid = r.request_id
                text = texts.get(rid)
                if text is not None:
                    events.append(Event(r, text, rid in finished))
                else:
                    events.append(Event(r, None, rid in finished, stream=r.text_stream, upto=upto))
            self._events = events
        return self._events

    def __len__(self) -> int:
        return len(self._requests)

    def __getitem__(self, i):
        return self._build()[i]

    def __iter__(self):
        return iter(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


StepEvents.EMPTY = StepEvents([], [], set(), None)


@dataclass
class StepStats:
    plan: StepPlan
    seconds: float
    num_sampled: int


class BatchingEngine:
    def __init__(self, model: LoadedModel, config: BatchingConfig = BatchingConfig(), *,
                 weights: LlamaWeights | None = None, linear: Linear = F.linear, gemv: FusedLinear | None = fused_gemv,
                 gemv_rows: int = MAX_BATCH, rope: RopeFn | None = None):
        """``weights`` / ``linear`` / ``gemv``: another implementation of the projections, and ``rope`` of RoPE
        (``runner.PagedModelRunner``); by default the model's float weights, fused, and the reference RoPE."""
        self.model, self.config = model, config
        cfg = model.config
        self.max_model_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        num_blocks = config.num_blocks if config.num_blocks is not None else self._default_blocks(model)
        num_cpu_blocks = config.cpu_blocks(KVSwapSpace.bytes_per_block(
            cfg.num_hidden_layers, config.block_size, cfg.num_key_value_heads, cfg.head_dim, model.dtype))
        self.blocks = make_block_manager(num_blocks, config.block_size, watermark=config.watermark,
                                         impl=config.block_manager_impl, num_cpu_blocks=num_cpu_blocks,
                                         prefix_caching=config.enable_prefix_caching)
        self.scheduler = load_impl(config.scheduler_impl).build(config.scheduler, self.blocks)
        seqs = config.scheduler.max_num_seqs
        attention = load_attention(config.attention_impl) if config.attention_impl is not None else None
        self.runner = PagedModelRunner(model, num_blocks, config.block_size, attention=attention,
                                       cuda_graphs=config.cuda_graphs, graph_batch_sizes=graph_sizes_for(seqs),
                                       max_num_seqs=seqs, num_cpu_blocks=num_cpu_blocks, weights=weights,
                                       linear=linear, gemv=gemv, gemv_rows=gemv_rows, rope=rope,
                                       max_model_len=self.max_model_len)
        self.sampler = Sampler(model.device)
        self.streams: dict[int, TextStream] = {}
        self._with_stop: set[int] = set()  # ids of unfinished requests with stop strings
        self.last_step: StepStats | None = None
        self._in_flight: PendingStep | None = None  # launched, tokens not read back yet (overlap)
        self._imports: dict[int, Callable] = {}  # prefilled elsewhere, waiting for blocks to load their KV into

    def _default_blocks(self, model: LoadedModel) -> int:
        """``max_num_seqs`` whole contexts, or (``gpu_memory_utilization``) what that share of the GPU leaves."""
        c, cfg = self.config, model.config
        if c.gpu_memory_utilization is None:
            return c.scheduler.max_num_seqs * -(-self.max_model_len // c.block_size)
        if model.device.type != "cuda":
            raise ModelError("--gpu-memory-utilization sizes the KV pool from GPU memory: on a CPU use --num-blocks")
        block_bytes = KVSwapSpace.bytes_per_block(cfg.num_hidden_layers, c.block_size, cfg.num_key_value_heads,
                                                  cfg.head_dim, model.dtype)
        activations = step_activation_bytes(cfg, model.dtype.itemsize, c.scheduler.max_num_batched_tokens,
                                            c.scheduler.max_num_seqs)
        total = torch.cuda.get_device_properties(model.device).total_memory
        return blocks_for_memory(c.gpu_memory_utilization, total, torch.cuda.memory_reserved(model.device),
                                 activations, block_bytes)

    def prefix_cache_stats(self) -> dict[str, float] | None:
        """Prefix caching's counters (tokens looked up and found, hit rate, cached / evictable blocks,
        evictions), or None when it is off."""
        if not self.config.enable_prefix_caching:
            return None
        stats = self.blocks.stats()
        return {k: stats[k] for k in ("prefix_queries", "prefix_hits", "prefix_hit_rate", "cached_blocks",
                                      "evictable_blocks", "evictions")}

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def context_limit(self) -> int:
        return min(self.max_model_len, self.scheduler.max_request_tokens())

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def request_limits(self) -> RequestLimits:
        return RequestLimits(self.vocab_size, self.context_limit(), tuple(self.tokenizer.eos_ids))

    def make_request(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams = GREEDY,
                     **options) -> Request:
        """A checked request (``RequestLimits.make_request``)."""
        return self.request_limits().make_request(prompt_ids, max_tokens, sampling, **options)

    def add(self, request: Request) -> Request:
        """Queue ``request``; if any part of that fails, it is not left half-added (then re-raised)."""
        self.scheduler.add(request)
        try:
            stream = TextStream(self.tokenizer, request.stop, request.eos_ids)
            request.text_stream = self.streams[request.request_id] = stream
            if stream.stop:
                self._with_stop.add(request.request_id)
            self.sampler.track(request)
        except BaseException:
            self.abort(request.request_id)
            raise
        return request

    def add_prefilled(self, request: Request, load_kv: Callable[[list, list[int]], None]) -> Request:
        """Queue ``request`` whose prompt was computed elsewhere (prefill/decode disaggregation's decode side):
        ``num_computed == len(prompt_ids)`` and its first token in ``output_ids``. The scheduler admits it
        like any request whose context is cached (its next chunk is one decode); once admitted, before the
        step's forward pass, ``load_kv(runner.kv, block_table)`` writes the prompt's K/V into its blocks.
        A failing ``load_kv`` ends that request alone (``fail``)."""
        if request.num_computed != len(request.prompt_ids) or len(request.output_ids) != 1:
            raise ValueError("a prefilled request has its whole prompt computed and exactly its first token as "
                             "output: set num_computed = len(prompt_ids) and output_ids = [first token]")
        self.add(request)
        stream = self.streams[request.request_id]
        if stream.stop:  # its text so far, for the stop strings (the prefill side checked this token already)
            stream.push(request.output_ids[0])
        self._imports[request.request_id] = load_kv
        return request

    def _load_prefilled(self) -> list[Request]:
        """Load the KV of the prefilled requests this step admitted (their blocks are allocated now); the
        requests whose load failed, ended (their row in the step computes, its token is dropped)."""
        failed = []
        for rid in list(self._imports):
            r = self.scheduler.by_id.get(rid)
            if r is not None and r.status is Status.RUNNING:
                load_kv = self._imports.pop(rid)
                try:
                    load_kv(self.runner.kv, self.blocks.block_table(rid))
                except Exception as e:  # noqa: BLE001 - this request's KV alone, not the batch's
                    failed.append(self.fail(r, e))
        return failed

    def release_kv(self, request_id: int) -> None:
        """Free the blocks a finished ``keep_kv`` request kept (the prefill side, once they are sent)."""
        if request_id in self.blocks and request_id not in self.scheduler.by_id:
            self.blocks.free(request_id)

    def fail(self, request: Request, error: BaseException) -> Request:
        """End ``request`` alone because of ``error``: its KV blocks are freed, its finish reason is
        ``"error: <one line>"``; the other requests go on. Safe on a finished or never-added request."""
        self.abort(request.request_id)
        request.status, request.num_in_flight = Status.FINISHED, 0
        request.finish_reason = error_reason(error)
        request.finish_time = time.perf_counter()
        return request

    def abort(self, request_id: int) -> Request | None:
        r = self.scheduler.abort(request_id)
        self._forget(request_id)
        return r

    def _forget(self, request_id: int) -> None:
        self._imports.pop(request_id, None)
        self.streams.pop(request_id, None)
        self._with_stop.discard(request_id)
        self.sampler.forget(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None

    def step(self) -> Sequence[Event]:
        """Plan and launch one step; the events of the step whose tokens this call read back (the
        previous one when overlapping, this one otherwise)."""
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        failed = self._load_prefilled() if self._imports else []
        launched = self.runner.launch(plan, self.sampler)
        self.scheduler.advance(plan)
        failed += [self.fail(r, e) for r, e in self.sampler.take_failures()]  # their tokens will be dropped
        if self.config.overlap:
            done, self._in_flight = self._in_flight, (launched if not plan.empty else None)
        else:
            done = launched
        events = self._apply(done, failed) if done is not None or failed else StepEvents.EMPTY
        self.last_step = StepStats(plan, time.perf_counter() - t0, len(events))
        return events

    def _apply(self, step: PendingStep | None, failed: list[Request]) -> "StepEvents":
        """Read ``step``'s tokens back, append them (EOS, length), then text and stop strings; the
        ``failed`` requests (and any whose stop check fails) get a finished event without text."""
        requests = step.sampled if step is not None else []
        if not requests and not failed:
            return StepEvents.EMPTY
        # A request finished (EOS, stop string, abort) while its token was in flight drops the token.
        live, finished = self.scheduler.apply_rows(requests, step.tokens()) if requests else ([], [])
        logprobs = step.logprobs() if step is not None else {}
        if logprobs:
            for r in live:
                if r.request_id in logprobs:
                    r.token_logprobs.append(logprobs[r.request_id])
        texts = None
        if self._with_stop:  # stop strings need the text now, to end the request
            texts = {}
            for r in live:
                stream = self.streams.get(r.request_id)
                if stream is None or not stream.stop:
                    continue
                try:
                    text, stopped = stream.push(r.output_ids[-1], final=r.status is Status.FINISHED)
                except Exception as e:  # this request's text alone is broken
                    failed.append(self.fail(r, e))
                    continue
                if stopped and r.status is not Status.FINISHED:
                    self.scheduler.finish(r, "stop")
                    finished.append(r)
                texts[r.request_id] = text
        if failed:
            gone = {r.request_id for r in failed}
            live = [r for r in live if r.request_id not in gone] + failed
            finished = [r for r in finished if r.request_id not in gone]
            texts = texts if texts is not None else {}
            texts.update(dict.fromkeys(gone, ""))
        if finished:
            now = time.perf_counter()
            for r in finished:
                r.finish_time = now
        done = {r.request_id for r in finished}.union(r.request_id for r in failed)
        events = StepEvents(live, list(map(len, map(_output_ids, live))), done, texts)
        for r in finished:
            self._forget(r.request_id)
        return events

    def generate(self, requests: list[Request], on_step=None) -> list[Request]:
        """Offline: run ``requests`` (already made) to completion; ``on_step(engine)`` after each step."""
        for r in requests:
            self.add(r)
        while self.has_unfinished():
            self.step()
            if on_step is not None:
                on_step(self)
        return requests

    def output_text(self, request: Request) -> str:
        ids = [t for t in request.output_ids if t not in request.eos_ids]
        return self.tokenizer.decode(ids)


def describe_error(error: BaseException) -> str:
    """One line: a user error's (ValueError's) message alone, anything else with its type."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(error, ValueError) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def error_reason(error: BaseException) -> str:
    """The finish reason of a request that ``error`` ended: ``"error: <one line>"``."""
    return f"error: {describe_error(error)}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
