"""Phase 4 — continuous batching, the paged model runner and the OpenAI-compatible server.

The contract (what ``framework``, ``solution`` or a learner's ``phase4_scheduler.mine`` provide)::

    def build(config: SchedulerConfig, block_manager) -> Scheduler

    class Scheduler:
        name: str
        waiting, running                       # queues of Request (read-only for callers)
        def add(self, request: Request) -> None          # ValueError when it can never fit the KV pool
        def schedule(self) -> StepPlan                   # what the model computes this step
        def update(self, plan, sampled: dict[int, int]) -> list[Request]   # apply sampled tokens; finished
        def finish(self, request, reason) / abort(self, request_id)       # end early; frees KV blocks
        num_waiting, num_running, has_unfinished(), kv_usage(), max_request_tokens()

``Request`` (``request.py``): ``prompt_ids + output_ids`` with ``num_computed`` of them cached; a step
computes a ``ScheduledChunk`` ``[start, start + num_tokens)`` and samples when the chunk reaches the
last token (decode = one token; prefill = a chunk; recompute after preemption = ``num_computed = 0``).
``block_manager`` is phase 1's ``BlockManager`` (``blocks.make_block_manager``: Rust when built,
the Python reference otherwise) with ``policy="refuse"``: the scheduler chooses the victims and
preempts them by recompute, or by swap (``SchedulerConfig.preemption="swap"``: the manager's
``swap_out``/``swap_in`` give the block copies, ``StepPlan.swap_out``/``swap_in`` carry them to the
runner, which copies them to and from a host pool, ``kv_swap``) — recompute when the host pool is full.

The rest of the phase (one idea per file): ``runner.PagedModelRunner`` (batched prefill + decode over
phase 3's paged cache, CUDA graphs for bucketed decode batches on GPU), ``sampler`` (per-request
temperature / top-p / top-k / seed), ``engine.BatchingEngine`` (scheduler + runner + stop strings,
offline ``generate`` and the background ``EngineLoop``), ``server`` (FastAPI: ``/v1/completions``,
``/v1/chat/completions`` with SSE streaming, ``/v1/models``, ``/health``, ``/metrics``),
``loadgen`` (HTTP and offline load), ``disagg`` (prefill/decode disaggregation: prefill and decode
workers, KV transfer, router), ``prefix_bench`` (prefix caching), ``step_roofline`` (a run against its
roofline), ``online_bench`` (serving at three loads), ``bench``/``checks`` (P4.1–P4.12).
Run the server: ``python -m phase4_scheduler serve --model kjv-llama-18m --port 8000``.
"""

from __future__ import annotations

from types import ModuleType

from phase4_scheduler.plan import ScheduledChunk, SchedulerConfig, StepPlan
from phase4_scheduler.request import Request, Status

__all__ = ["Request", "Status", "SchedulerConfig", "ScheduledChunk", "StepPlan", "load_impl"]


def load_impl(name: str) -> ModuleType:
    """``framework``, ``solution`` or a module path exposing ``build(config, block_manager)``."""
    from module0_profiling.impl import load_impl as _load

    return _load("phase4_scheduler", name)
