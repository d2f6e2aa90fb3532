"""FlashInfer as the P2.5 peer, on CPU: its absence is a SKIP with the reason; the agreement check compares."""

import sys

import pytest
import torch

from module0_profiling.targets import FAIL, PASS, SKIP, BenchResult
from phase2_rope_cuda import bench, reference
from phase2_rope_cuda.checks import TARGETS
from phase2_rope_cuda.peers import flashinfer_agreement, flashinfer_peers
from phase2_rope_cuda.workload import RopeShape, make_inputs

P25 = next(t for t in TARGETS if t.id == "P2.5")
SHAPE = RopeShape(tokens=37, q_heads=6, kv_heads=2, head_dim=64, dtype=torch.float32, max_position=300)


def test_missing_flashinfer_is_a_skip_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # `import flashinfer...` now raises ImportError
    monkeypatch.setitem(sys.modules, "flashinfer.rope", None)
    peers, reason = flashinfer_peers("cpu")
    assert peers == {} and "flashinfer is not importable" in reason
    result = BenchResult()
    bench._flashinfer_agreement(result, reference, peers, reason, SHAPE)
    outcome = P25.evaluate(result)
    assert outcome.status == SKIP and "flashinfer is not importable" in outcome.reason


def _vllm_contract(rotate):
    """A fake FlashInfer out-of-place call: q, k as [tokens, heads·D] in, rotated copies out."""
    def run(x):
        q_out, k_out = rotate(x.q.clone(), x.k.clone(), x.positions, x.cache)
        return q_out.reshape(x.q.shape[0], -1), k_out.reshape(x.k.shape[0], -1)
    return run


def _interleaved(q, k, positions, cache):
    """GPT-J style (is_neox=False): pairs (x_2i, x_2i+1) — the mistake the agreement check must catch."""
    half = q.shape[-1] // 2
    perm = torch.arange(q.shape[-1]).view(2, half).t().reshape(-1)  # [0, half, 1, half+1, ...]
    inv = torch.argsort(perm)
    q_r, k_r = reference.apply_rope_reference(q[..., inv], k[..., inv], positions, cache)
    return q_r[..., perm], k_r[..., perm]


def test_agreement_passes_for_the_same_rope_and_fails_for_another_convention():
    x = make_inputs(SHAPE, "cpu", seed=21)
    same = flashinfer_agreement(reference.apply_rope_, _vllm_contract(reference.apply_rope_reference), x)
    other = flashinfer_agreement(reference.apply_rope_, _vllm_contract(_interleaved), x)
    assert same <= 1.0 < other
    assert torch.equal(x.q, make_inputs(SHAPE, "cpu", seed=21).q)  # ours ran on a copy: inputs untouched


def test_a_mismatch_fails_p25_and_leaves_a_note(monkeypatch):
    fake_peers = {"flashinfer": _vllm_contract(_interleaved)}
    result = BenchResult()
    monkeypatch.setattr(bench, "make_inputs", lambda shape, device, seed: make_inputs(shape, "cpu", seed))
    bench._flashinfer_agreement(result, reference, fake_peers, "", SHAPE)
    result.metrics["p2_5_fraction_of_flashinfer"] = 1.5  # faster, yet different outputs: still FAIL
    assert P25.evaluate(result).status == FAIL
    assert any(n.startswith("FAIL: our RoPE and FlashInfer's disagree") for n in result.notes)


@pytest.mark.parametrize("fraction,status", [(0.79, FAIL), (0.8, PASS), (1.3, PASS)])
def test_p25_threshold(fraction, status):
    result = BenchResult(metrics={"p2_5_fraction_of_flashinfer": fraction, "p2_5_flashinfer_err_ratio": 0.2})
    assert P25.evaluate(result).status == status
