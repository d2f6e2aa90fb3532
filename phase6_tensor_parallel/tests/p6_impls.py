"""The implementations phase 6's correctness tests check, as the other phases' do: ``IMPL`` from the environment
(``make test-phase6 IMPL=phase6_tensor_parallel.mine`` runs them on the learner's module), else the framework and
the solution. A part an implementation has not written yet (``NotImplementedError``) or a configuration it
refuses (``TPError``) skips its test with the refusal's line as the reason. ``impl_outputs`` is the per-rank
work of the two-process test (spawned ranks import it by name: it lives in a module, not a test file)."""

from __future__ import annotations

import pytest
import torch

from module0_profiling.impl import impls_under_test
from phase6_tensor_parallel import load_impl
from phase6_tensor_parallel.dist_env import TPError, TPGroup

IMPLS = impls_under_test(["framework", "solution"])
REFUSALS = (NotImplementedError, TPError)


def refusal(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def build_or_skip(impl: str, model, **options):
    """``load_impl(impl).build(model, **options)``, or skip the test with the implementation's refusal."""
    try:
        return load_impl(impl).build(model, **options)
    except REFUSALS as e:
        pytest.skip(f"{impl}: {refusal(e)}")


def skip_if_refused(outputs) -> None:
    """``impl_outputs``' entry is a refusal's line (str): skip with it."""
    if isinstance(outputs, str):
        pytest.skip(outputs)


def impl_outputs(group: TPGroup, spec: str, tokens: torch.Tensor, prompt: torch.Tensor, new_tokens: int,
                 impls: list[str]) -> dict:
    """On this rank's shard (fp32), per implementation and overlap (``name`` / ``name_no_overlap``): logits,
    greedy tokens, and the same greedy decode through the CUDA-graph-shaped step run eagerly
    (``static_greedy``); the refusal's line instead for a part not written yet or a configuration refused."""
    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel.static_decode import graph_generate

    model = load_model(spec, dtype="fp32", seed=1)
    out = {}
    for impl in impls:
        for overlap in (True, False):
            key = impl if overlap else f"{impl}_no_overlap"
            try:
                e = load_impl(impl).build(model, group=group, overlap=overlap)
                out[key] = {"logits": e.forward_logits(tokens), "greedy": e.generate(prompt, new_tokens)}
                with torch.inference_mode():
                    out[key]["static_greedy"] = graph_generate(e, prompt.to(e.device), new_tokens, capture=False)
            except REFUSALS as err:
                out[key] = f"{impl}: {refusal(err)}"
    return out
