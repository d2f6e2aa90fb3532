"""The PyTorch reference (the CPU backend and the oracle of the kernels) against a float64 oracle."""

import pytest
import torch
from oracle_p3 import assert_close, decode_oracle, prefill_oracle

from phase3_paged_attention import (
    PagedAttentionInputError,
    allocate_kv_cache,
    default_impl,
    load_impl,
    slot_mapping_for,
    tolerance,
)
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

ref = load_impl("reference")


@pytest.mark.parametrize("block_size", [16, 32, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_decode_matches_float64(block_size, dtype):
    d = decode_inputs([1, 17, 100, 0, 33], block_size=block_size, num_q_heads=8, num_kv_heads=2, dtype=dtype, seed=7)
    expected = decode_oracle(*d.args(), scale=0.3)
    rounding = 1e-5 if dtype == torch.float32 else 2.0**-8  # the upcast result is returned in q's dtype
    assert_close(ref.paged_decode_attention(*d.args(), 0.3, upcast=True), expected, 1e-5, rounding, "upcast reference")
    assert_close(ref.paged_decode_attention(*d.args(), 0.3), expected, *tolerance(dtype), f"{dtype} reference")


def test_reference_decode_equal_lengths_takes_the_unmasked_path():
    d = decode_inputs([40, 40, 40], block_size=16, num_q_heads=4, num_kv_heads=1, seed=3)
    expected = decode_oracle(*d.args(), scale=32 ** -0.5)
    assert_close(ref.paged_decode_attention(*d.args()), expected, 1e-5, 1e-5, "equal lengths")


@pytest.mark.parametrize("causal", [True, False])
def test_reference_prefill_matches_float64_and_writes_cache(causal):
    p = prefill_inputs([1, 17, 100, 0, 9], block_size=16, num_q_heads=4, num_kv_heads=2, seed=5)
    k_cache, v_cache = p.k_cache.clone(), p.v_cache.clone()
    out = ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, 0.2, causal=causal,
                                       k_cache=k_cache, v_cache=v_cache, slot_mapping=p.slot_mapping)
    assert_close(out, prefill_oracle(p.q, p.k, p.v, p.cu_seqlens, 0.2, causal), 1e-5, 1e-5, "prefill")
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    assert torch.equal(flat_k[p.slot_mapping], p.k)
    untouched = torch.ones(flat_k.shape[0], dtype=torch.bool)
    untouched[p.slot_mapping] = False
    assert torch.equal(flat_k[untouched], p.k_cache.view(-1, *k_cache.shape[2:])[untouched])


def test_write_kv_cache_skips_negative_slots():
    k_cache, v_cache = allocate_kv_cache(4, 8, 2, 16, torch.float32)
    k_cache.normal_(), v_cache.normal_()
    before = k_cache.clone()
    k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    ref.write_kv_cache(k, v, k_cache, v_cache, torch.tensor([9, -1, 30]))
    assert torch.equal(k_cache[1, 1], k[0]) and torch.equal(v_cache[3, 6], v[2])
    changed = (k_cache != before).any(dim=(2, 3)).nonzero().tolist()
    assert changed == [[1, 1], [3, 6]]


def test_slot_mapping_for_follows_the_block_table():
    tables = torch.tensor([[5, 2, 7], [1, 0, 3]], dtype=torch.int32)
    slots = slot_mapping_for(tables, torch.tensor([0, 0, 1]), torch.tensor([3, 17, 16]), block_size=16)
    assert slots.tolist() == [5 * 16 + 3, 2 * 16 + 1, 0 * 16 + 0]


def test_default_impl_is_reference_on_cpu():
    assert default_impl("cpu") is ref


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(q=d["q"].to(torch.float16)), "dtype"),
    (lambda d: d.update(block_tables=d["block_tables"].long()), "block_tables must be int32"),
    (lambda d: d.update(context_lens=d["context_lens"][:1]), "context_lens"),
    (lambda d: d.update(q=d["q"][:, :3]), "multiple of num_kv_heads"),
    (lambda d: d.update(v_cache=d["v_cache"][:, :, :1]), "v_cache must match"),
])
def test_bad_decode_inputs_name_the_problem(mutate, message):
    d = decode_inputs([3, 5], num_q_heads=4, num_kv_heads=2)
    kwargs = dict(q=d.q, k_cache=d.k_cache, v_cache=d.v_cache, block_tables=d.block_tables, context_lens=d.context_lens)
    mutate(kwargs)
    with pytest.raises(PagedAttentionInputError, match=message):
        ref.paged_decode_attention(**kwargs)


def test_unknown_impl_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        load_impl("phase3_paged_attention.no_such_module")
