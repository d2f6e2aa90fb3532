"""Our paged decode and prefill against FlashInfer's on the same inputs (TinyLlama heads, bf16: the dtype the bench
JIT-builds FlashInfer for, so these tests add no nvcc build of their own).

Each side is first held to the float32 reference (so a disagreement names the wrong side), then ours
is compared with FlashInfer's directly: both round to the same dtype, so twice the tolerance bounds them.
"""

import pytest
import torch
from oracle_p3 import assert_close

from phase3_paged_attention import load_impl, tolerance
from phase3_paged_attention.peers import DECODE_VARIANTS, FlashInferPeer
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ref = load_impl("reference")
HEADS = dict(num_q_heads=32, num_kv_heads=4, head_dim=64)


@pytest.fixture(scope="module")
def peer():
    fi = pytest.importorskip("flashinfer", reason="flashinfer is not importable (carry its wheels, see NOTES.md)")
    return FlashInferPeer(fi)


@pytest.mark.parametrize("use_tensor_cores", list(DECODE_VARIANTS.values()))
@pytest.mark.parametrize("block_size", [16, 128])
def test_decode_matches_flashinfer(peer, use_tensor_cores, block_size, dtype=torch.bfloat16):
    d = decode_inputs([1, 17, 100, 1000, 4097], block_size=block_size, dtype=dtype, device="cuda", seed=block_size,
                      **HEADS)
    expected = ref.paged_decode_attention(*d.args(), upcast=True)
    theirs = peer.decode(d, use_tensor_cores)()
    ours = load_impl("solution").paged_decode_attention(*d.args(), max_context_len=d.max_context_len)
    atol, rtol = tolerance(dtype)
    assert_close(theirs, expected, atol, rtol, "FlashInfer decode vs reference (page-list conversion)")
    assert_close(ours, theirs, 2 * atol, 2 * rtol, "solution vs FlashInfer decode")


def test_prefill_matches_flashinfer(peer, dtype=torch.bfloat16):
    p = prefill_inputs([1, 17, 100, 1000, 2049], dtype=dtype, device="cuda", seed=5, **HEADS)
    expected = ref.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, upcast=True)
    theirs = peer.prefill(p)()
    ours = load_impl("solution").varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen)
    atol, rtol = tolerance(dtype)
    assert_close(theirs, expected, atol, rtol, "FlashInfer ragged prefill vs reference")
    assert_close(ours, theirs, 2 * atol, 2 * rtol, "solution vs FlashInfer prefill")
