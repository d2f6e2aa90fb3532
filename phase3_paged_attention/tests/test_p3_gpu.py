"""The full sweep on a GPU: compiled kernels, TinyLlama heads (32 q / 4 kv, head_dim 64), bf16 and fp16.

Lengths 1, 17, 100, 1000, 4097 (non-powers of two, one past a page boundary) in one ragged batch;
block sizes 16–128; decode, split-KV decode, prefill with cache write — against the float32 reference.
"""

import pytest
import torch
from oracle_p3 import assert_close

from module0_profiling.impl import impls_under_test
from phase3_paged_attention import load_impl, tolerance
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ref = load_impl("reference")
LENGTHS = [1, 17, 100, 1000, 4097]
HEADS = dict(num_q_heads=32, num_kv_heads=4, head_dim=64)


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_decode_sweep(impl, block_size, dtype):
    d = decode_inputs(LENGTHS, block_size=block_size, dtype=dtype, device="cuda", seed=block_size, **HEADS)
    out = load_impl(impl).paged_decode_attention(*d.args(), max_context_len=d.max_context_len)
    assert_close(out, ref.paged_decode_attention(*d.args(), upcast=True), *tolerance(dtype), f"{impl} {block_size}")


@pytest.mark.parametrize("num_splits", [1, 2, 7, 32])
def test_gpu_split_kv(num_splits):
    d = decode_inputs([4097, 1, 2000], block_size=16, dtype=torch.bfloat16, device="cuda", seed=num_splits, **HEADS)
    out = load_impl("solution").paged_decode_attention(*d.args(), num_splits=num_splits)
    assert_close(out, ref.paged_decode_attention(*d.args(), upcast=True), *tolerance(torch.bfloat16), "split-KV")


def test_gpu_decode_float32_is_not_rounded_to_tf32():
    d = decode_inputs([1000, 17], block_size=32, dtype=torch.float32, device="cuda", seed=3, **HEADS)
    out = load_impl("solution").paged_decode_attention(*d.args())
    assert_close(out, ref.paged_decode_attention(*d.args(), upcast=True), 1e-4, 1e-4, "fp32 decode")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [16, 128])
def test_gpu_prefill_sweep(dtype, block_size):
    p = prefill_inputs(LENGTHS, block_size=block_size, dtype=dtype, device="cuda", seed=block_size, **HEADS)
    k_cache, v_cache = p.k_cache.clone(), p.v_cache.clone()
    out = load_impl("solution").varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, k_cache=k_cache,
                                                         v_cache=v_cache, slot_mapping=p.slot_mapping)
    expected = ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, upcast=True)
    assert_close(out, expected, *tolerance(dtype), "prefill")
    k_ref, v_ref = p.k_cache.clone(), p.v_cache.clone()
    ref.write_kv_cache(p.k, p.v, k_ref, v_ref, p.slot_mapping)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
