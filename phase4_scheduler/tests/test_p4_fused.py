"""The fused kernels (residual add + RMSNorm, RoPE + q/k/v split + paged-cache write, SwiGLU) against
phase 0's PyTorch layer math on fresh random inputs, and the runner's fused forward pass against its
PyTorch forward pass on a mixed step (decodes, a fresh prompt, a later chunk). On CPU the kernels run
in Triton's interpreter (fp32 and fp16; bf16 is checked on a GPU)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from phase0_prototype import load_model
from phase0_prototype.model import apply_rope, rms_norm, rope_cache
from phase4_scheduler.kernels.fused import add_rms_norm, rope_qkv_cache, silu_mul
from phase4_scheduler.plan import ScheduledChunk, StepPlan
from phase4_scheduler.request import Request
from phase4_scheduler.runner import PagedModelRunner
from phase4_scheduler.step_inputs import HostStep, upload

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_rms_norm_matches_residual_add_then_rms_norm(dtype, with_delta):
    torch.manual_seed(1)
    x, d = (torch.randn(5, 96, device=DEVICE).to(dtype) for _ in range(2))
    w = torch.rand(96, device=DEVICE).to(dtype)
    want_x = x + d if with_delta else x.clone()
    want = rms_norm(want_x, w, 1e-5)
    got_x = x.clone()
    got = add_rms_norm(got_x, d if with_delta else None, w, 1e-5)
    torch.testing.assert_close(got_x, want_x, atol=0, rtol=0)
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_qkv_cache_matches_apply_rope_and_writes_only_the_given_slots(dtype):
    torch.manual_seed(2)
    cfg = load_model("random:tiny", dtype="fp32").config
    hq, hkv, d, n = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, 6
    cos, sin = rope_cache(cfg, 64, DEVICE)
    qkv = torch.randn(n, (hq + 2 * hkv) * d, device=DEVICE).to(dtype)
    positions = torch.tensor([0, 5, 17, 63, 2, 9], device=DEVICE, dtype=torch.int32)
    slots = torch.tensor([3, -1, 40, 7, -1, 12], device=DEVICE, dtype=torch.int32)
    k_cache = torch.randn(8, 8, hkv, d, device=DEVICE).to(dtype)
    v_cache = torch.randn_like(k_cache)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    q, k, v = rope_qkv_cache(qkv, positions, cos, sin, hq, hkv, d, slots, k_cache, v_cache)
    rq, rk, rv = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    want_q, want_k = apply_rope(rq.view(1, n, hq, d), rk.view(1, n, hkv, d), cos, sin, positions.long()[None])
    torch.testing.assert_close(q, want_q[0], atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(k, want_k[0], atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(v, rv.reshape(n, hkv, d), atol=0, rtol=0)
    flat_k, flat_v = k_before.view(-1, hkv, d), v_before.view(-1, hkv, d)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            flat_k[s], flat_v[s] = k[i], v[i]
    torch.testing.assert_close(k_cache, k_before, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, v_before, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_swiglu(dtype):
    torch.manual_seed(3)
    gu = (torch.randn(4, 2 * 1100, device=DEVICE) * 4).to(dtype)
    gate, up = gu.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gu), F.silu(gate) * up, atol=TOL[dtype], rtol=TOL[dtype])


def test_fused_forward_matches_the_pytorch_forward_on_a_mixed_step():
    model = load_model("random:tiny", dtype="fp32", device=DEVICE)
    runners = [PagedModelRunner(model, num_blocks=64, block_size=4, cuda_graphs=False, fused=f) for f in (False, True)]
    gen = torch.Generator(device="cpu").manual_seed(4)
    for a, b in zip(runners[0].kv, runners[1].kv, strict=True):  # one random cache content for both
        for x, y in zip(a, b, strict=True):
            x.copy_(torch.randn(x.shape, generator=gen))
            y.copy_(x)
    rng = random.Random(5)
    pool = list(range(1, 64))
    rng.shuffle(pool)  # requests own disjoint blocks, as the block manager guarantees
    chunks = []
    for prompt, outputs, start, n in ((9, 2, 10, 1), (4, 1, 4, 1), (6, 0, 0, 6), (13, 0, 5, 8)):
        r = Request([rng.randrange(3, 300) for _ in range(prompt)], 20)
        r.output_ids = [rng.randrange(3, 300) for _ in range(outputs)]
        chunks.append(ScheduledChunk(r, start, n, [pool.pop() for _ in range(-(-r.num_tokens // 4))]))
    plan = StepPlan(1, chunks)
    logits = [rn.forward(upload(HostStep(plan, 4, {}), rn.device, block_size=4)) for rn in runners]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(runners[0].kv, runners[1].kv, strict=True):
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)


def test_small_decode_steps_run_phase0s_fused_step_and_match_the_pytorch_forward():
    """A decode-only step of few rows goes through ``fused_decode_step`` (phase 0's GEMVs, paged attention)."""
    from phase0_prototype.kernels.gemv import fused_gemv

    calls = []

    def counting_gemv(x, w, **fusion):
        calls.append(x.shape[0])
        return fused_gemv(x, w, **fusion)

    model = load_model("random:tiny", dtype="fp32", device=DEVICE)
    runners = [PagedModelRunner(model, num_blocks=64, block_size=4, cuda_graphs=False, fused=False),
               PagedModelRunner(model, num_blocks=64, block_size=4, cuda_graphs=False, fused=True,
                                gemv=counting_gemv)]
    gen = torch.Generator(device="cpu").manual_seed(6)
    for a, b in zip(runners[0].kv, runners[1].kv, strict=True):
        for x, y in zip(a, b, strict=True):
            x.copy_(torch.randn(x.shape, generator=gen))
            y.copy_(x)
    rng = random.Random(7)
    pool = list(range(1, 64))
    rng.shuffle(pool)
    chunks = []
    for prompt, outputs in ((9, 2), (4, 1), (15, 3)):
        r = Request([rng.randrange(3, 300) for _ in range(prompt)], 20)
        r.output_ids = [rng.randrange(3, 300) for _ in range(outputs)]
        chunks.append(ScheduledChunk(r, r.num_tokens - 1, 1, [pool.pop() for _ in range(-(-r.num_tokens // 4))]))
    plan = StepPlan(1, chunks)
    logits = [rn.forward(upload(HostStep(plan, 4, {}), rn.device, block_size=4)) for rn in runners]
    assert calls and set(calls) == {3}  # every projection of the step, at the step's 3 rows
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(runners[0].kv, runners[1].kv, strict=True):
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
