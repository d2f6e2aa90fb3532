"""What the bench and the tests share: seeded inputs, the error measure, the implementations under test,
and the sequence-parallel ranks.

``sp_rank`` and ``sp_parts_rank`` run on each spawned process (``phase6_tensor_parallel.dist_env.spawn``):
every rank builds the same seeded weights itself (nothing large crosses the process boundary).
``sp_impls_under_test``: the tests take the same switch as the checks (``IMPL=phase7_dit_parallel.mine``),
the sequence-parallel ones the solution by default (the framework is one device by design).
"""

from __future__ import annotations

import torch

from module0_profiling.impl import impls_under_test
from phase6_tensor_parallel.dist_env import TPError, TPGroup, local_device
from phase7_dit_parallel import PRESETS, load_impl, model
from phase7_dit_parallel.config import DiTConfig
from phase7_dit_parallel.sequence_parallel import ring_attention, sp_forward, ulysses_attention
from phase7_dit_parallel.weights import random_weights

SP_MODES = ("ulysses", "ring")


def sp_impls_under_test() -> list[str]:
    return impls_under_test(["solution"])


def random_inputs(config: DiTConfig, batch: int, latent: int, *, seed: int, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents ``[B, C, latent, latent]``, timesteps in [0, 1000) and class labels, from one generator."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, config.in_channels, latent, latent, generator=g).to(device, dtype)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).to(device)
    labels = torch.randint(0, config.num_classes, (batch,), generator=g).to(device)
    return latents, timesteps, labels


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|, in float64."""
    ours, reference = ours.double().cpu(), reference.double().cpu()
    return float((ours - reference).abs().max() / reference.abs().max())


def sp_rank(group: TPGroup, impl: str, preset: str, seed: int, latents: torch.Tensor, timesteps: torch.Tensor,
            labels: torch.Tensor, parallel: str, *, time_steps: int = 0):
    """One rank of a sequence-parallel run: the output (CPU), or the median step seconds if ``time_steps``."""
    device = local_device("cuda" if torch.cuda.is_available() and time_steps else "cpu", group)
    weights = random_weights(PRESETS[preset], seed=seed, dtype=latents.dtype, device=str(device))
    model = load_impl(impl).build(weights, group=group, parallel=parallel)
    inputs = [x.to(device) for x in (latents, timesteps, labels)]
    with torch.no_grad():
        if not time_steps:
            return model(*inputs).cpu()
        from module0_profiling.timing import time_fn

        return time_fn(lambda: model(*inputs), warmup=3, iters=time_steps).median


def sp_parts_rank(group: TPGroup, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, latents: torch.Tensor,
                  timesteps: torch.Tensor, labels: torch.Tensor, weight_seed: int, impls: list[str]) -> dict:
    """One rank of the tests: its shard of both SP attentions (q/k/v ``[B, heads, S, d]`` cut by sequence)
    and the whole ``tiny`` DiT output through ``sp_forward`` and through each implementation's ``build``
    (the refusal's line instead, for an implementation that runs on one device only)."""
    s_local = q.shape[2] // group.world
    shard = slice(group.rank * s_local, (group.rank + 1) * s_local)
    q, k, v = (x[:, :, shard] for x in (q, k, v))
    out = {"ulysses_attn": ulysses_attention(q, k, v, group, model.sdpa_attention),
           "ring_attn": ring_attention(q, k, v, group)}
    weights = random_weights(PRESETS["tiny"], seed=weight_seed)
    with torch.no_grad():
        for parallel in SP_MODES:
            out[parallel] = sp_forward(weights, latents, timesteps, labels, group, parallel, model.sdpa_attention)
            for impl in impls:
                try:
                    dit = load_impl(impl).build(weights, group=group, parallel=parallel)
                except TPError as e:  # one device by design (the framework, a learner's copy of it)
                    out[f"{impl}_{parallel}"] = str(e).splitlines()[0]
                    continue
                out[f"{impl}_{parallel}"] = dit(latents, timesteps, labels)
    return out
