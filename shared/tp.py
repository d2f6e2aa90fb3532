"""Tensor parallelism in the engine: phase 6's ranks, spawned for one ``generate`` call.

Each of the ``tp`` local processes loads the same checkpoint, keeps its shard (phase 6's ``build``), and
runs the prompts greedily with its KV cache; rank 0's ids come back (phase 6 broadcasts the sampled ids,
so every rank holds the same). NCCL on CUDA (one GPU per rank), gloo on a CPU. Greedy only: phase 6's
``TPEngine.generate`` has no sampler. A process group lives for one call — start-up costs seconds,
which ``generate`` pays every time; a persistent worker pool is not built.
"""

from __future__ import annotations

import torch

from phase0_prototype.errors import ModelError


def check(model_spec_config, tp: int, device: str, impl: str) -> None:
    """Refuse a TP size the model or the machine cannot run, before spawning anything."""
    from phase6_tensor_parallel.dist_env import TPError

    if tp < 1:
        raise ModelError(f"tp={tp}: pass a positive number of ranks")
    if impl == "solution":
        from phase6_tensor_parallel.solution import check_tp_size

        try:
            check_tp_size(model_spec_config, tp)
        except TPError as e:
            raise ModelError(str(e)) from None
    if model_spec_config.vocab_size % tp:
        raise ModelError(f"tp={tp} does not divide vocab_size={model_spec_config.vocab_size}: choose a divisor")
    if device == "cuda" and torch.cuda.device_count() < tp:
        raise ModelError(f"tp={tp} needs {tp} GPUs but {torch.cuda.device_count()} are visible: "
                         f"use --tp {max(torch.cuda.device_count(), 1)} or --device cpu")


def generate_rank(group, model_spec: str, dtype: str, device: str, seed: int, impl: str,
                  prompts: list[list[int]], max_tokens: list[int]) -> dict:
    """One rank: load, shard, greedy-generate every prompt (one at a time: prompts differ in length)."""
    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel import load_impl
    from phase6_tensor_parallel.dist_env import local_device

    model = load_model(model_spec, dtype=dtype, device=local_device(device, group), seed=seed)
    length = max(len(p) + n for p, n in zip(prompts, max_tokens, strict=True))
    engine = load_impl(impl).build(model, group=group, max_seq_len=length)
    del model  # the engine keeps only this rank's shard
    ids = [engine.generate(torch.tensor([p]), n)[0].tolist() for p, n in zip(prompts, max_tokens, strict=True)]
    return {"ids": ids, "mode": engine.mode}


def generate(model_spec: str, *, dtype: str, device: str, seed: int, impl: str, tp: int,
             prompts: list[list[int]], max_tokens: list[int], timeout_s: float = 600.0) -> tuple[list[list[int]], str]:
    """Greedy ids per prompt from ``tp`` spawned ranks, and phase 6's mode string."""
    from phase6_tensor_parallel.dist_env import TPError, spawn

    try:
        ranks = spawn(generate_rank, tp, model_spec, dtype, device, seed, impl, prompts, max_tokens,
                      device=device, timeout_s=timeout_s)
    except TPError as e:
        raise ModelError(str(e)) from None
    return ranks[0]["ids"], ranks[0]["mode"]
