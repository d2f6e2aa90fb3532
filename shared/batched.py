"""Phase 4's engine in the assembled one: built from the engine's choices, then driven step by step.

``build_batched`` composes the one loop: phase 4's scheduler and paged runner over phase 1's blocks and phase
3's attention, with phase 2's RoPE, phase 5's INT4 projections or phase 6's ranks plugged in as chosen.
Phase 4's ``BatchingEngine.step`` plans (scheduler), runs the paged forward pass, samples per request and
turns tokens into text with stop strings; this module only adds requests, steps until they finish,
gathers each request's text, and samples how full the reserved KV memory is.

KV memory utilisation = token slots holding a computed K/V (``num_computed`` of the running requests) /
slots of the blocks the block manager has handed out, after each step — the share of reserved KV memory
doing work (a static cache reserves a whole context per request; paged blocks follow the tokens).
"""

from __future__ import annotations

from typing import Iterator

from phase0_prototype.errors import ModelError

from .outputs import Delta, RequestOutput


def build_batched(engine):
    """``(phase 4 engine, tensor-parallel workers or None)`` for ``shared.engine.LLMEngine`` ``engine``."""
    from phase4_scheduler.engine import BatchingConfig, BatchingEngine
    from phase4_scheduler.plan import SchedulerConfig

    c, impls = engine.config, engine.impls
    try:
        config = BatchingConfig(SchedulerConfig(c.max_num_seqs, c.max_num_batched_tokens, c.policy, c.max_wait_steps,
                                                preemption=c.preemption),
                                impls["phase4"], c.num_blocks, block_size=c.block_size, cuda_graphs=c.compile,
                                gpu_memory_utilization=c.gpu_memory_utilization,
                                max_model_len=engine.max_model_len, swap_space=c.swap_space,
                                num_cpu_blocks=c.num_cpu_blocks, block_manager_impl=impls["phase1"],
                                attention_impl=impls["phase3"], enable_prefix_caching=c.enable_prefix_caching)
    except ValueError as e:
        raise ModelError(str(e)) from None
    rope = None if impls["phase2"] == "off" else impls["phase2"]
    quantized = engine.quantized if engine.quant else None
    if c.tp > 1:
        from .tp_workers import start_engine

        return start_engine(engine.model, config, tp=c.tp, layout=impls["phase6"], seed=c.seed, quantized=quantized,
                            rope=rope)
    options = {} if impls["phase0"] == "solution" else {"gemv": None}  # phase 0's fused step, or plain PyTorch
    if rope is not None:
        from phase2_rope_cuda.integration import phase0_rope_fn

        options["rope"] = phase0_rope_fn(rope)
    if quantized is not None:
        from .quant import int4_runner_options

        options.update(int4_runner_options(quantized))
    else:
        options["weights"] = engine.float_weights()  # phase 0's engine's, if built: one copy
    return BatchingEngine(engine.model, config, **options), None


def _make_request(engine, ids: list[int], max_tokens: int, sampling, stop, ignore_eos: bool):
    try:
        return engine.make_request(ids, max_tokens, sampling, stop=stop, ignore_eos=ignore_eos)
    except ValueError as e:
        raise ModelError(str(e)) from None


def _add(engine, request) -> None:
    try:
        engine.add(request)
    except ValueError as e:  # it can never fit the KV pool
        raise ModelError(f"{e}: raise --num-blocks or lower --max-new-tokens") from None


def kv_utilisation(engine) -> float | None:
    blocks = engine.blocks
    reserved = (blocks.num_gpu_blocks - blocks.num_free_gpu_blocks) * engine.config.block_size
    if reserved == 0:
        return None
    return sum(r.num_computed for r in engine.scheduler.running) / reserved


def _finish_reason(request) -> str:
    """OpenAI's "stop" or "length"; a request the engine failed alone (``"error: …"``) raises its one line."""
    if (request.finish_reason or "").startswith("error"):
        raise ModelError(f"request {request.request_id} failed: {request.finish_reason[len('error: '):]}")
    return "stop" if request.finish_reason == "stop" else "length"


def run_batched(engine, prompts: list[list[int]], max_tokens: list[int], sampling, stop, ignore_eos: bool):
    """Every prompt through continuous batching; ``(outputs, mean KV utilisation)``."""
    requests = [_make_request(engine, p, n, sampling, stop, ignore_eos) for p, n in zip(prompts, max_tokens, strict=True)]
    texts: dict[int, list[str]] = {r.request_id: [] for r in requests}
    for r in requests:
        _add(engine, r)
    samples = []
    while engine.has_unfinished():
        for event in engine.step():
            texts[event.request.request_id].append(event.text)
        u = kv_utilisation(engine)
        if u is not None:
            samples.append(u)
    outputs = []
    for r in requests:
        reason = _finish_reason(r)
        ttft = r.first_token_time - r.arrival_time if r.first_token_time is not None else None
        outputs.append(RequestOutput(list(r.prompt_ids), list(r.output_ids), "".join(texts[r.request_id]), reason, ttft))
    return outputs, (sum(samples) / len(samples) if samples else None)


def stream_batched(engine, ids: list[int], max_tokens: int, sampling, stop, ignore_eos: bool) -> Iterator:
    """One request through phase 4's engine, a ``Delta`` per step; aborted (blocks freed) if left early."""
    request = _make_request(engine, ids, max_tokens, sampling, stop, ignore_eos)
    _add(engine, request)
    try:
        while not request.finished:
            for event in engine.step():
                if event.request is request:
                    reason = _finish_reason(request) if event.finished else None
                    yield Delta(event.text, [request.output_ids[-1]], reason)
    finally:
        if not request.finished:
            engine.abort(request.request_id)
            # an overlapping engine still has the last launched step in flight: read it back (the aborted
            # request's token is dropped) so the engine is idle again, unless others are still running
            while engine.has_unfinished() and not engine.scheduler.has_unfinished():
                engine.step()
