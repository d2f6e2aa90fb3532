"""Per-rank work the gloo tests (and bench) spawn: must live in an importable module, not a test file.

Every function takes the rank's ``TPGroup`` first and returns plain tensors/dicts the parent compares.
Inputs are drawn from a generator seeded identically on every rank, so each rank holds the same FULL weights
and inputs and can compute the unsharded twin itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase6_tensor_parallel.dist_env import TPGroup
from phase6_tensor_parallel.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    shard_fused,
)


def layer_errors(group: TPGroup, seed: int) -> dict[str, float]:
    """Max |sharded − unsharded| of every layer type on fresh random fp32 inputs."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    r, n = group.rank, group.world
    x, w = rnd(3, 5, 24), rnd(40, 24)
    full = F.linear(x, w)
    out = {"column_gather": (ColumnParallelLinear(w, group)(x) - full).abs().max().item()}
    local = ColumnParallelLinear(w, group, gather_output=False)(x)
    out["column_local"] = (local - full[..., r * 40 // n:(r + 1) * 40 // n]).abs().max().item()
    w_row = rnd(16, 24)
    full_row = F.linear(x, w_row)
    x_local = x[..., r * 24 // n:(r + 1) * 24 // n]
    out["row_parallel_input"] = (RowParallelLinear(w_row, group)(x_local) - full_row).abs().max().item()
    out["row_full_input"] = (RowParallelLinear(w_row, group, input_is_parallel=False)(x) - full_row).abs().max().item()
    partial = RowParallelLinear(w_row, group, reduce_output=False)(x_local)
    work = group.all_reduce_async(partial)
    if work is not None:
        work.wait()
    out["row_async_reduce"] = (partial - full_row).abs().max().item()
    table = rnd(64, 24)
    ids = torch.randint(0, 64, (4, 9), generator=g)
    out["vocab_embedding"] = (VocabParallelEmbedding(table, group)(ids) - F.embedding(ids, table)).abs().max().item()
    out["lm_head"] = (ParallelLMHead(table, group)(x) - F.linear(x, table)).abs().max().item()
    # Fused q|k|v (8 q heads, 2 kv heads, head_dim 4): rank r's local output = its q heads, then its kv heads.
    d, hq, hkv = 4, 8, 2
    wq, wk, wv = rnd(hq * d, 24), rnd(hkv * d, 24), rnd(hkv * d, 24)
    fused = shard_fused(torch.cat([wq, wk, wv]), [hq * d, hkv * d, hkv * d], group, ["q", "k", "v"])
    q_l, k_l, v_l = F.linear(x, fused).split([hq * d // n, hkv * d // n, hkv * d // n], -1)
    qs, ks = slice(r * hq * d // n, (r + 1) * hq * d // n), slice(r * hkv * d // n, (r + 1) * hkv * d // n)
    out["fused_qkv_shard"] = max((q_l - F.linear(x, wq)[..., qs]).abs().max().item(),
                                 (k_l - F.linear(x, wk)[..., ks]).abs().max().item(),
                                 (v_l - F.linear(x, wv)[..., ks]).abs().max().item())
    return out


def model_outputs(group: TPGroup, spec: str, tokens: torch.Tensor, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Logits and greedy tokens of every implementation/mode on this rank's shard (fp32).

    ``static_greedy``: the same greedy decode through the CUDA-graph-shaped step (``static_decode``), run
    eagerly — on a CPU everything of the graph path but the capture.
    """
    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel import framework, solution
    from phase6_tensor_parallel.static_decode import graph_generate

    model = load_model(spec, dtype="fp32", seed=1)
    engines = {"framework": framework.build(model, group=group),
               "solution": solution.build(model, group=group, overlap=True),
               "solution_no_overlap": solution.build(model, group=group, overlap=False)}
    out = {}
    for name, e in engines.items():
        out[name] = {"logits": e.forward_logits(tokens), "greedy": e.generate(prompt, new_tokens)}
        with torch.inference_mode():
            out[name]["static_greedy"] = graph_generate(e, prompt.to(e.device), new_tokens, capture=False)
    return out


def failing_rank(group: TPGroup, bad_rank: int) -> None:
    """Rank ``bad_rank`` raises; the others enter a collective that can never complete."""
    if group.rank == bad_rank:
        raise ValueError("deliberate failure on this rank")
    group.all_reduce(torch.ones(4))


def measurement_smoke(group: TPGroup, sizes: list[int]) -> dict:
    """The GPU measurements' code paths over gloo at tiny sizes: an all-reduce sweep and a decode-step sweep."""
    from phase6_tensor_parallel.allreduce_study import study_rank
    from phase6_tensor_parallel.throughput import sweep_rank

    configs = [("framework", "framework", False), ("solution", "solution", True)]
    return {"allreduce": study_rank(group, sizes, "Ring", "cpu", iters=3),
            "sweep": sweep_rank(group, configs, "random:tiny", "fp32", "cpu", [1, 2], context=8, steps=3)}


def bench_rank(group: TPGroup, impl: str, spec: str, prompt: torch.Tensor, new_tokens: int,
               device: str, allreduce_sizes: list[int]) -> dict:
    """bench.py's per-rank work: greedy tokens (fp32) and their wall time, then a small all-reduce sweep."""
    import time

    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel import load_impl
    from phase6_tensor_parallel.allreduce_study import study_rank
    from phase6_tensor_parallel.dist_env import local_device

    dev = local_device(device, group)
    model = load_model(spec, dtype="fp32", device=dev, seed=1)
    engine = load_impl(impl).build(model, group=group, max_seq_len=prompt.shape[1] + new_tokens)
    engine.generate(prompt, 2)  # warm-up
    t0 = time.perf_counter()
    greedy = engine.generate(prompt, new_tokens)  # CUDA graphs on a GPU, eager on CPU
    seconds = time.perf_counter() - t0
    eager = engine.generate(prompt, new_tokens, graph=False) if dev.type == "cuda" else greedy
    sweep = study_rank(group, allreduce_sizes, "Ring", device, iters=5) if allreduce_sizes else None
    return {"greedy": greedy, "greedy_eager": eager, "seconds": seconds, "mode": engine.mode, "allreduce": sweep}
