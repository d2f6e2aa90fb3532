"""P4.9's floor model and step recorder (``step_roofline``) against independent counts.

The floor's bytes and FLOPs are checked against a float64 count that walks a random config's layers, matrices,
heads and every query position of random chunks; the recorder's per-step shapes against the plans' own
``chunks`` (read after the step, the other path through ``StepPlan``) and against what the requests computed;
and a real CPU run of ``random:tiny`` must land strictly inside its roofline, with the CPU's peaks measured
by module 0's helpers.
"""

from __future__ import annotations

import random

import pytest

from module0_profiling.hardware import DeviceInfo, measure_copy_gbps, measure_matmul_tflops
from module0_profiling.roofline import Ceiling
from phase0_prototype.config import LlamaConfig
from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.step_roofline import (
    StepRecorder,
    measure,
    roofline_of,
    shape_of_spans,
    step_bytes,
    step_flops,
)


def _random_config(rng: random.Random) -> LlamaConfig:
    kv_heads = rng.randint(1, 3)
    return LlamaConfig(vocab_size=rng.randint(8, 90), hidden_size=rng.randint(4, 40), intermediate_size=rng.randint(4, 60),
                       num_hidden_layers=rng.randint(1, 3), num_attention_heads=kv_heads * rng.randint(1, 3),
                       num_key_value_heads=kv_heads, head_dim=2 * rng.randint(1, 6),
                       tie_word_embeddings=rng.random() < 0.5, bos_token_id=None, eos_token_id=(0,))


def _literal_count(cfg: LlamaConfig, elem: float, spans: list[tuple[int, int, bool]]) -> tuple[float, float]:
    """(bytes, FLOPs) of one step, one matrix, head and query position at a time, in float64."""
    h, d, hq, hkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    tokens = sum(n for _, n, _ in spans)
    matrices = [(hq * d, h), (hkv * d, h), (hkv * d, h), (h, hq * d),  # q, k, v, o
                (cfg.intermediate_size, h), (cfg.intermediate_size, h), (h, cfg.intermediate_size)]  # gate, up, down
    nbytes, flops = float(tokens * h * elem), 0.0  # the embedding rows the tokens gather
    for _layer in range(cfg.num_hidden_layers):
        nbytes += 2 * h * elem  # input and post-attention norms
        for rows, cols in matrices:
            nbytes += rows * cols * elem
            flops += 2.0 * rows * cols * tokens
        for start, n, _ in spans:
            for _kv_head in range(hkv):
                nbytes += 2 * d * start * elem  # K and V of the cached positions, read
                nbytes += 2 * d * n * elem  # K and V of the new ones, written
            for position in range(start, start + n):
                for _head in range(hq):
                    keys = position + 1  # causal: itself and every earlier position
                    flops += 2.0 * d * keys + 2.0 * d * keys  # q·Kᵀ, then p·V
    nbytes += h * elem + cfg.vocab_size * h * elem  # final norm, lm_head (the table itself when tied)
    flops += 2.0 * cfg.vocab_size * h * sum(sample for _, _, sample in spans)
    return nbytes, flops


def test_floor_model_matches_a_literal_count_on_random_configs():
    rng = random.Random()
    for _ in range(12):
        cfg = _random_config(rng)
        elem = rng.choice([1, 2, 4])
        ceiling = Ceiling("random", rng.uniform(1e-4, 1e-2), rng.uniform(1, 100))  # either roof can bind
        rec, floor, memory_bound = StepRecorder(), 0.0, 0
        for _step in range(rng.randint(1, 5)):
            spans = [(rng.randint(0, 40), rng.choice([1, 1, rng.randint(1, 30)]), rng.random() < 0.7)
                     for _ in range(rng.randint(1, 8))]
            shape = shape_of_spans(spans)
            nbytes, flops = _literal_count(cfg, elem, spans)
            assert step_bytes(cfg, elem, shape) == pytest.approx(nbytes, rel=1e-12)
            assert step_flops(cfg, shape) == pytest.approx(flops, rel=1e-12)
            memory_s, compute_s = nbytes / (ceiling.gbps * 1e9), flops / (ceiling.tflops * 1e12)
            floor += max(memory_s, compute_s)
            memory_bound += memory_s >= compute_s
            rec.shapes.append(shape)
            rec.schedule_s.append(rng.random())
            rec.launch_s.append(rng.random())
            rec.step_s.append(2 + rng.random())
        r = roofline_of(rec, cfg, elem, ceiling, wall_s=2 * floor, full_rows=1)
        assert r.floor_s == pytest.approx(floor, rel=1e-12) and r.fraction == pytest.approx(0.5, rel=1e-12)
        assert r.memory_bound_steps == memory_bound


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny", dtype="fp32", device="cpu")


def _engine(model, seqs: int, budget: int) -> BatchingEngine:
    return BatchingEngine(model, BatchingConfig(SchedulerConfig(seqs, budget), cuda_graphs=False))


def _requests(engine: BatchingEngine, rng: random.Random, n: int):
    vocab = engine.model.config.vocab_size
    return [engine.make_request([rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))], rng.randint(1, 12),
                                ignore_eos=True) for _ in range(n)]


def test_recorder_counts_equal_the_plans_and_the_requests_work(tiny):
    """Decodes, fresh prompts, later chunks of a chunked prefill and 1-token prompt tails, on a small budget."""
    rng = random.Random()
    seqs = rng.randint(2, 6)
    engine = _engine(tiny, seqs, rng.randint(seqs, 24))
    requests = _requests(engine, rng, rng.randint(6, 14))
    plans, rec = [], StepRecorder()
    with rec.attached(engine):
        engine.generate(requests, on_step=lambda e: plans.append(e.last_step.plan))
    assert not {"schedule", "launch", "step"} & (set(vars(engine.scheduler)) | set(vars(engine.runner))
                                                   | set(vars(engine)))  # the classes' methods again
    assert len(rec.shapes) == len(plans) == len(rec.step_s) == len(rec.launch_s) == len(rec.schedule_s)
    for shape, plan in zip(rec.shapes, plans, strict=True):
        chunks = plan.chunks  # every chunk as an object: the columns' other path
        assert shape.tokens == plan.num_batched_tokens == sum(c.num_tokens for c in chunks)
        assert shape.requests == len(chunks)
        assert shape.sampled == sum(1 for c in chunks if c.sample)
        assert shape.cached == sum(c.start for c in chunks)
        assert shape.pairs == sum(position + 1 for c in chunks for position in range(c.start, c.end))
    assert any(s.tokens > s.requests for s in rec.shapes) and any(s.tokens == s.requests for s in rec.shapes)
    # no preemption in a pool of max_num_seqs whole contexts: every position but the last computed once
    assert sum(s.tokens for s in rec.shapes) == sum(len(r.prompt_ids) + r.max_tokens - 1 for r in requests)
    assert sum(s.sampled for s in rec.shapes) == sum(len(r.output_ids) for r in requests)


def test_a_cpu_run_lands_inside_its_roofline(tiny):
    """Peaks measured here by module 0's helpers (no cache); the floor cannot exceed the run's wall time."""
    device = DeviceInfo(kind="cpu", name="cpu")
    copy_gbps, _ = measure_copy_gbps(device)
    tflops, _, _ = measure_matmul_tflops(device)
    rng = random.Random()
    engine = _engine(tiny, 4, 32)
    requests = _requests(engine, rng, 10)
    r = measure(engine, lambda: engine.generate(requests), Ceiling("measured", tflops, copy_gbps), full_rows=4)
    assert 0 < r.fraction <= 1, r
    assert r.full_steps > 0 and 0 < r.host_share <= 1 and r.host_s >= r.schedule_s > 0
    assert r.tokens == sum(len(q.prompt_ids) + q.max_tokens - 1 for q in requests)
