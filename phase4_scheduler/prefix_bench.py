"""P4.8: automatic prefix caching on a shared-prefix workload — throughput with vs without the cache.

The workload is what prefix caching is for: many requests sharing a long system prompt and few-shot
examples, each with a short distinct question and a short answer, then repeated sampling of one prompt
(``n`` completions of the same text). Both runs use the same model, requests and engine settings in one
process; greedy, ``ignore_eos``. Throughput = (prompt + generated tokens) / wall time of ``generate``; the
speedup is the ratio of the two wall times. The hit rate is the prefix cache's (tokens served from cached
blocks / prompt tokens looked up); ``greedy_identical``: every request's tokens equal with and without.

Limit: the cache saves prefill only. The ratio approaches the uncached run's cost over (uncached prompt tokens
+ the decode steps): short answers and long shared prefixes make it large; where a step's fixed host cost
dominates (a tiny model on a CPU) it is bounded by the step counts instead. A workload without shared
prefixes gains nothing and pays the hashing of each full block (~0.2 µs per block in Rust, ``NOTES.md``).

size "small": ``random:tiny`` on the CPU, a 768-token shared prefix, phase 4's small budget of 128 tokens
per step (seconds). size "full": ``random:tinyllama`` on CUDA, bf16, a 1,536-token shared prefix.
"""

from __future__ import annotations

import random

import torch

from module0_profiling.timing import time_region
from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.plan import SchedulerConfig

SIZES = {
    "small": dict(model="random:tiny", dtype="fp32", device="cpu", prefix=768, shared=24, suffix=(4, 24),
                  repeated=12, repeated_len=256, max_tokens=4, seqs=8, budget=128, block_size=16),
    "full": dict(model="random:tinyllama", dtype="bf16", device="cuda", prefix=1536, shared=128, suffix=(16, 64),
                 repeated=64, repeated_len=1024, max_tokens=16, seqs=128, budget=8192, block_size=16),
}


def shared_prefix_prompts(vocab: int, s: dict, seed: int = 0) -> list[list[int]]:
    """``shared`` prompts = one ``prefix``-token system prompt + few-shot block and a distinct suffix, then
    ``repeated`` copies of one ``repeated_len``-token prompt (random token ids: the model is random too)."""
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    prefix = tokens(s["prefix"])
    prompts = [prefix + tokens(rng.randint(*s["suffix"])) for _ in range(s["shared"])]
    return prompts + [tokens(s["repeated_len"])] * s["repeated"]


def _generate(model, prompts: list[list[int]], s: dict, cache: bool) -> tuple[list[list[int]], float, dict | None]:
    config = BatchingConfig(SchedulerConfig(s["seqs"], s["budget"]), block_size=s["block_size"],
                            enable_prefix_caching=cache)
    engine = BatchingEngine(model, config)
    if engine.runner.graphs is not None:
        engine.runner.graphs.warmup()
    warm = [engine.make_request([5 + i] * 40, 2, ignore_eos=True) for i in range(4)]  # compiles, allocator
    engine.generate(warm)
    before = engine.prefix_cache_stats()
    requests = [engine.make_request(p, s["max_tokens"], ignore_eos=True) for p in prompts]
    seconds = time_region(lambda: engine.generate(requests), repeats=1, warmup=0).median  # (requests run once)
    stats = engine.prefix_cache_stats()
    if stats is not None:  # the timed run's own lookups, not the warm-up's
        stats = {k: stats[k] - before[k] for k in ("prefix_queries", "prefix_hits", "evictions")}
    return [r.output_ids for r in requests], seconds, stats


def run_prefix_bench(size: str = "small", seed: int = 0) -> dict[str, float]:
    """Metrics: ``p4_8_prefix_speedup`` (wall time without / with the cache), ``prefix_hit_rate``,
    ``prefix_greedy_identical`` (1.0 or 0.0), both throughputs (tokens/s) and the workload's token counts."""
    s = SIZES[size]
    if s["device"] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("size 'full' needs a CUDA GPU: use size 'small' on a CPU")
    model = load_model(s["model"], dtype=s["dtype"], device=s["device"])
    prompts = shared_prefix_prompts(model.config.vocab_size, s, seed)
    plain, t_plain, _ = _generate(model, prompts, s, cache=False)
    cached, t_cached, stats = _generate(model, prompts, s, cache=True)
    tokens = sum(map(len, prompts)) + len(prompts) * s["max_tokens"]
    return {
        "p4_8_prefix_speedup": t_plain / t_cached,
        "prefix_hit_rate": stats["prefix_hits"] / stats["prefix_queries"],
        "prefix_greedy_identical": float(plain == cached),
        "prefix_tokens_per_s_cached": tokens / t_cached,
        "prefix_tokens_per_s_plain": tokens / t_plain,
        "prefix_prompt_tokens": float(sum(map(len, prompts))),
        "prefix_requests": float(len(prompts)),
    }


def measure_prefix_caching(result, size: str) -> None:
    """Add P4.8's metrics (``run_prefix_bench``) and a note on the workload to a ``BenchResult``."""
    m = run_prefix_bench(size)
    result.metrics.update(m)
    s = SIZES[size]
    result.notes.append(
        f"P4.8 prefix caching: {s['shared']} requests sharing a {s['prefix']}-token prefix + {s['repeated']} copies "
        f"of one {s['repeated_len']}-token prompt, {s['max_tokens']} new tokens each, {s['model']} on "
        f"{s['device']}: {m['p4_8_prefix_speedup']:.2f}× throughput, hit rate {m['prefix_hit_rate'] * 100:.0f} %, "
        f"greedy tokens {'identical' if m['prefix_greedy_identical'] else 'DIFFERENT'} with and without the cache.")
