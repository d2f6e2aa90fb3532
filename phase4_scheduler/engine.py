"""The engine: scheduler + paged model runner + per-request sampling and text, one ``step`` at a time.

``LLMEngine.step()`` = plan (scheduler) -> forward (runner) -> sample -> update (tokens, EOS, length)
-> text and stop strings -> events. ``generate`` runs it offline; ``engine_loop.EngineLoop`` runs it
in a background thread for the server. The engine itself is single-threaded: callers on other
threads go through the loop's inbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from phase0_prototype.sampling import GREEDY, SamplingParams
from phase0_prototype.sources import LoadedModel
from phase4_scheduler import load_impl
from phase4_scheduler.blocks import make_block_manager
from phase4_scheduler.plan import SchedulerConfig, StepPlan
from phase4_scheduler.request import Request
from phase4_scheduler.runner import PagedModelRunner
from phase4_scheduler.sampler import Sampler
from phase4_scheduler.text_stream import TextStream


@dataclass(frozen=True)
class EngineConfig:
    """``num_blocks=None``: enough KV for ``max_num_seqs`` requests of the full context."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    scheduler_impl: str = "solution"
    num_blocks: int | None = None
    block_size: int = 16
    watermark: float = 0.01
    cuda_graphs: bool = True
    max_model_len: int | None = None  # prompt + max_tokens limit; defaults to the model's context


@dataclass
class Event:
    """What one step did for one request: new text (may be empty) and whether it finished."""

    request: Request
    text: str
    finished: bool


@dataclass
class StepStats:
    plan: StepPlan
    seconds: float
    num_sampled: int


class LLMEngine:
    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()):
        self.model, self.config = model, config
        cfg = model.config
        self.max_model_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        num_blocks = config.num_blocks or config.scheduler.max_num_seqs * -(-self.max_model_len // config.block_size)
        self.blocks = make_block_manager(num_blocks, config.block_size, watermark=config.watermark)
        self.scheduler = load_impl(config.scheduler_impl).build(config.scheduler, self.blocks)
        self.runner = PagedModelRunner(model, num_blocks, config.block_size, cuda_graphs=config.cuda_graphs)
        self.sampler = Sampler(model.device)
        self.streams: dict[int, TextStream] = {}
        self.last_step: StepStats | None = None

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def context_limit(self) -> int:
        return min(self.max_model_len, self.scheduler.max_request_tokens())

    def make_request(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingParams = GREEDY, *,
                     stop: tuple[str, ...] = (), priority: int = 0, ignore_eos: bool = False) -> Request:
        """A checked request (ValueError naming the limit when it cannot fit)."""
        limit = self.context_limit()
        if len(prompt_ids) + max_tokens > limit:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                             f"limit of {limit} tokens: shorten the prompt or lower max_tokens")
        eos = () if ignore_eos else tuple(self.tokenizer.eos_ids)
        return Request(list(prompt_ids), max_tokens, sampling, priority=priority, eos_ids=eos, stop=tuple(stop))

    def add(self, request: Request) -> Request:
        self.scheduler.add(request)
        self.streams[request.request_id] = TextStream(self.tokenizer, request.stop, request.eos_ids)
        return request

    def abort(self, request_id: int) -> Request | None:
        r = self.scheduler.abort(request_id)
        self._forget(request_id)
        return r

    def _forget(self, request_id: int) -> None:
        self.streams.pop(request_id, None)
        self.sampler.forget(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[Event]:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        requests, logits = self.runner.execute(plan)
        tokens = self.sampler(requests, logits)
        self.scheduler.update(plan, {r.request_id: t for r, t in zip(requests, tokens, strict=True)})
        events = []
        for r, t in zip(requests, tokens, strict=True):
            text, stopped = self.streams[r.request_id].push(t, final=r.finished)
            if stopped and not r.finished:
                self.scheduler.finish(r, "stop")
            if r.finished:
                r.finish_time = time.perf_counter()
                self._forget(r.request_id)
            events.append(Event(r, text, r.finished))
        self.last_step = StepStats(plan, time.perf_counter() - t0, len(requests))
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
