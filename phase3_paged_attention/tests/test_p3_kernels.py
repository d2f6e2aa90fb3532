"""Every Triton kernel (framework and solution) against the float32 SDPA reference on gathered KV.

On CPU these run in Triton's interpreter at small shapes (lengths 1, 17, 100; block sizes 16, 32);
on a GPU the same tests compile the kernels. Inputs are fresh random values with shuffled block tables.
"""

import pytest
import torch
from oracle_p3 import assert_close

from module0_profiling.impl import impls_under_test
from phase3_paged_attention import PagedAttentionInputError, load_impl, tolerance
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

ref = load_impl("reference")
IMPLS = impls_under_test(["framework", "solution"])
LENGTHS = [1, 17, 100]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_decode_matches_reference(impl, block_size, dtype, device):
    d = decode_inputs(LENGTHS, block_size=block_size, num_q_heads=4, num_kv_heads=2, head_dim=32,
                      dtype=dtype, device=device, seed=block_size)
    out = load_impl(impl).paged_decode_attention(*d.args())
    assert out.shape == d.q.shape and out.dtype == dtype
    assert_close(out, ref.paged_decode_attention(*d.args(), upcast=True), *tolerance(dtype), f"{impl} decode")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_q_heads, num_kv_heads, head_dim", [(8, 1, 64), (4, 4, 16), (6, 2, 24)])
def test_decode_gqa_groups_and_head_dims(impl, num_q_heads, num_kv_heads, head_dim, device):
    """Group 8 (padded to 16 rows of tl.dot), plain multi-head (group 1), odd group 3 with head_dim 24."""
    d = decode_inputs([17, 5, 64], block_size=16, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                      head_dim=head_dim, device=device, seed=num_q_heads)
    out = load_impl(impl).paged_decode_attention(*d.args(), scale=0.7)
    assert_close(out, ref.paged_decode_attention(*d.args(), scale=0.7, upcast=True), 1e-4, 1e-4, impl)


@pytest.mark.parametrize("num_splits, block_n, heads_first", [(1, 16, False), (2, 32, True), (3, 16, False),
                                                               (8, 64, True)])
def test_split_kv_combines_exactly(num_splits, block_n, heads_first, device):
    """Split ranges that end mid-tile, splits past a short sequence's end, an empty sequence; both grid orders."""
    from phase3_paged_attention.kernels.decode_flash import flash_paged_decode

    d = decode_inputs([300, 1, 0, 129], block_size=32, num_q_heads=4, num_kv_heads=2, device=device, seed=11)
    out = flash_paged_decode(*d.args(), 32 ** -0.5, None, torch.empty_like(d.q), num_splits=num_splits,
                             block_n=block_n, heads_first=heads_first)
    expected = ref.paged_decode_attention(*d.args(), upcast=True)
    assert_close(out, expected, 1e-4, 1e-4, f"{num_splits} splits")
    assert torch.count_nonzero(out[2]) == 0  # context length 0 → zeros


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_respects_max_context_len_and_out(impl, device):
    d = decode_inputs([50, 7], block_size=16, device=device, seed=4)
    out = torch.full_like(d.q, float("nan"))
    got = load_impl(impl).paged_decode_attention(*d.args(), max_context_len=50, out=out)
    assert got is out
    assert_close(out, ref.paged_decode_attention(*d.args(), upcast=True), 1e-4, 1e-4, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_matches_reference_and_writes_cache(impl, block_size, dtype, device):
    p = prefill_inputs(LENGTHS + [40], block_size=block_size, num_q_heads=4, num_kv_heads=2, head_dim=32,
                       dtype=dtype, device=device, seed=block_size + 1)
    k_cache, v_cache = p.k_cache.clone(), p.v_cache.clone()
    out = load_impl(impl).varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen,
                                                   k_cache=k_cache, v_cache=v_cache, slot_mapping=p.slot_mapping)
    expected = ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, upcast=True)
    assert_close(out, expected, *tolerance(dtype), f"{impl} prefill")
    k_ref, v_ref = p.k_cache.clone(), p.v_cache.clone()
    ref.write_kv_cache(p.k, p.v, k_ref, v_ref, p.slot_mapping)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_prefill_non_causal_without_cache(device):
    p = prefill_inputs([33, 1, 20], num_q_heads=8, num_kv_heads=2, head_dim=16, device=device, seed=9)
    out = load_impl("solution").varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, 0.5, causal=False)
    expected = ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, 0.5, causal=False, upcast=True)
    assert_close(out, expected, 1e-4, 1e-4, "non-causal prefill")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_cache_kernel(impl, dtype, device):
    p = prefill_inputs([5, 20], block_size=16, num_kv_heads=3, head_dim=24, dtype=dtype, device=device, seed=2)
    slots = p.slot_mapping.clone()
    slots[3] = -1  # a padding token: must not be written
    k_cache, v_cache = p.k_cache.clone(), p.v_cache.clone()
    k_strided = torch.cat([p.k, p.v], dim=1)[:, :3]  # a view with a token stride ≠ heads × dim
    load_impl(impl).write_kv_cache(k_strided, p.v, k_cache, v_cache, slots)
    k_ref, v_ref = p.k_cache.clone(), p.v_cache.clone()
    ref.write_kv_cache(k_strided, p.v, k_ref, v_ref, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_kernels_reject_bad_inputs_with_one_line(impl, device):
    d = decode_inputs([3], device=device)
    with pytest.raises(PagedAttentionInputError, match="context_lens must be int32"):
        load_impl(impl).paged_decode_attention(d.q, d.k_cache, d.v_cache, d.block_tables, d.context_lens.long())


def test_prefill_then_decode_round_trip(device):
    """Prefill writes the cache; decode of the next token over that cache equals attention over the full sequence."""
    lengths = [70, 17]
    p = prefill_inputs(lengths, block_size=16, dtype=torch.bfloat16, device=device, seed=5, num_q_heads=4, num_kv_heads=2, head_dim=32)
    sol = load_impl("solution")
    sol.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, k_cache=p.k_cache, v_cache=p.v_cache,
                                 slot_mapping=p.slot_mapping)
    last = (p.cu_seqlens[1:] - 1).long()  # the last prompt token of each sequence, as a decode query
    tables = torch.zeros(len(lengths), 32, dtype=torch.int32, device=device)
    for i, (start, n) in enumerate(zip(p.cu_seqlens[:-1].tolist(), lengths, strict=True)):
        tables[i, : -(-n // 16)] = (p.slot_mapping[start:start + n:16] // 16).int()
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    out = sol.paged_decode_attention(p.q[last].contiguous(), p.k_cache, p.v_cache, tables, lens)
    full = ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, upcast=True)
    assert_close(out, full[last], *tolerance(torch.bfloat16), "prefill → decode")
