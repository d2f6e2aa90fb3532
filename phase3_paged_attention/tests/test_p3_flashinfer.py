"""FlashInfer as the P3.6 peer, on CPU: the page-list conversion, the wrapper plumbing (through a fake FlashInfer
that reads FlashInfer's layout the way its docs define it), and the SKIP path when it does not import."""

import sys
from types import SimpleNamespace

import pytest
import torch
from oracle_p3 import assert_close, decode_oracle, prefill_oracle

from module0_profiling.targets import FAIL, PASS, SKIP, BenchResult
from phase3_paged_attention import bench, load_impl
from phase3_paged_attention.checks import TARGETS
from phase3_paged_attention.peers import FlashInferPeer, build_peer, to_flashinfer_layout
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

P36 = next(t for t in TARGETS if t.id == "P3.6")


def ours_token_slots(block_tables, context_lens, block_size):
    """Our layout, token by token: token t of sequence b is (block_tables[b][t // bs], t % bs)."""
    return [[(block_tables[b][t // block_size], t % block_size) for t in range(n)] for b, n in enumerate(context_lens)]


def flashinfer_token_slots(indptr, indices, last_page_len, page_size):
    """FlashInfer's layout, token by token: pages indices[indptr[b]:indptr[b+1]], all full but the last."""
    seqs = []
    for b in range(len(indptr) - 1):
        pages = indices[indptr[b]:indptr[b + 1]]
        sizes = [page_size] * (len(pages) - 1) + [last_page_len[b]] if pages else []
        seqs.append([(page, offset) for page, size in zip(pages, sizes, strict=True) for offset in range(size)])
    return seqs


@pytest.mark.parametrize("block_size", [1, 5, 16])
@pytest.mark.parametrize("seed", range(4))
def test_layout_conversion_addresses_the_same_tokens(block_size, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 60, (7,), generator=g)
    lengths[:3] = torch.tensor([0, block_size, 2 * block_size + 1])  # empty, exactly full, one past a page
    max_blocks = int(-(-lengths.max() // block_size)) + 2
    tables = torch.randint(0, 500, (7, max_blocks), generator=g, dtype=torch.int32)  # tails hold garbage
    layout = to_flashinfer_layout(tables, lengths.to(torch.int32), block_size)
    assert layout.indptr.dtype == layout.indices.dtype == layout.last_page_len.dtype == torch.int32
    assert layout.indptr.shape == (8,) and layout.indices.shape == (int(layout.indptr[-1]),)
    expected = ours_token_slots(tables.tolist(), lengths.tolist(), block_size)
    got = flashinfer_token_slots(layout.indptr.tolist(), layout.indices.tolist(), layout.last_page_len.tolist(), block_size)
    assert got == expected


def _gqa_attention(q, k, v, scale, causal):
    """q [n_q, Hq, D], k/v [n_k, Hkv, D] -> [n_q, Hq, D] in float64; causal aligns the last query with the last key."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if causal:
        s = s.masked_fill(torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).triu(k.shape[0] - q.shape[0] + 1),
                          float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)


class FakeDecodeWrapper:
    """FlashInfer's BatchDecodeWithPagedKVCacheWrapper as its docs define it (NHD, CSR page lists)."""

    def __init__(self, workspace, kv_layout, use_tensor_cores):
        assert kv_layout == "NHD" and workspace.numel() > 0
        self.use_tensor_cores = use_tensor_cores

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, *,
             q_data_type, kv_data_type, sm_scale):
        self.plan_args = SimpleNamespace(**locals())

    def run(self, q, paged_kv_cache, out):
        a, (k_cache, v_cache) = self.plan_args, paged_kv_cache
        assert q.shape[1:] == (a.num_qo_heads, a.head_dim) and k_cache.shape[1:] == (a.page_size, a.num_kv_heads, a.head_dim)
        for b, slots in enumerate(flashinfer_token_slots(a.indptr.tolist(), a.indices.tolist(),
                                                         a.last_page_len.tolist(), a.page_size)):
            pages, offsets = (torch.tensor(x, dtype=torch.long) for x in zip(*slots, strict=True))
            out[b] = _gqa_attention(q[b:b + 1], k_cache[pages, offsets], v_cache[pages, offsets], a.sm_scale, False)[0]
        return out


class FakeRaggedPrefillWrapper:
    def __init__(self, workspace, kv_layout):
        assert kv_layout == "NHD"

    def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, *, causal, q_data_type,
             kv_data_type, sm_scale):
        self.plan_args = SimpleNamespace(**locals())

    def run(self, q, k, v, out):
        a = self.plan_args
        qo, kv = a.qo_indptr.tolist(), a.kv_indptr.tolist()
        for b in range(len(qo) - 1):
            out[qo[b]:qo[b + 1]] = _gqa_attention(q[qo[b]:qo[b + 1]], k[kv[b]:kv[b + 1]], v[kv[b]:kv[b + 1]],
                                                  a.sm_scale, a.causal)
        return out


FAKE_FLASHINFER = SimpleNamespace(BatchDecodeWithPagedKVCacheWrapper=FakeDecodeWrapper,
                                  BatchPrefillWithRaggedKVCacheWrapper=FakeRaggedPrefillWrapper)


@pytest.mark.parametrize("use_tensor_cores", [False, True])
@pytest.mark.parametrize("block_size", [4, 16])
def test_decode_plumbing_matches_the_oracle(use_tensor_cores, block_size):
    d = decode_inputs([1, 17, 33, 64], block_size=block_size, num_q_heads=8, num_kv_heads=2, head_dim=16,
                      dtype=torch.float32, seed=block_size)
    out = FlashInferPeer(FAKE_FLASHINFER, "cpu").decode(d, use_tensor_cores, scale=0.3)()
    expected = decode_oracle(d.q, d.k_cache, d.v_cache, d.block_tables, d.context_lens, 0.3)
    assert_close(out, expected, 1e-5, 1e-5, "decode through the FlashInfer plumbing")


def test_prefill_plumbing_matches_the_oracle():
    p = prefill_inputs([1, 9, 30], num_q_heads=4, num_kv_heads=2, head_dim=16, seed=3)
    out = FlashInferPeer(FAKE_FLASHINFER, "cpu").prefill(p)()
    assert_close(out, prefill_oracle(p.q, p.k, p.v, p.cu_seqlens, 16 ** -0.5), 1e-5, 1e-5, "ragged prefill plumbing")


def test_missing_flashinfer_is_a_skip_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # `import flashinfer` now raises ImportError
    peer, reason = build_peer("cpu")
    assert peer is None and reason.startswith("flashinfer is not importable")
    result = BenchResult()
    assert bench.bench_flashinfer(result, load_impl("reference"), torch.bfloat16) is None
    assert set(bench.FLASHINFER_METRICS) <= set(result.skipped)
    outcome = P36.evaluate(result)
    assert outcome.status == SKIP and "flashinfer is not importable" in outcome.reason


@pytest.mark.parametrize("decode,prefill,err,status", [(0.8, 0.7, 0.5, PASS), (1.2, 0.69, 0.5, FAIL),
                                                       (0.79, 0.9, 0.5, FAIL), (1.5, 1.5, 1.2, FAIL)])
def test_p36_thresholds(decode, prefill, err, status):
    result = BenchResult(metrics={"p3_6_decode_fraction_of_flashinfer": decode,
                                  "p3_6_prefill_fraction_of_flashinfer": prefill,
                                  "p3_6_flashinfer_error_over_tolerance": err})
    assert P36.evaluate(result).status == status


def test_bench_flashinfer_fills_p36_through_the_fake(monkeypatch):
    """bench.bench_flashinfer end to end on CPU: the fake stands in for FlashInfer, a constant timer for CUDA events."""
    small = dict(num_q_heads=4, num_kv_heads=2, head_dim=16)
    monkeypatch.setitem(bench.HEADS, "full", small)
    monkeypatch.setitem(bench.CORRECTNESS, "full", ([1, 17, 40], [4, 16]))
    monkeypatch.setattr(bench, "DECODE", dict(batch=3, context=40, block_size=16))
    monkeypatch.setattr(bench, "PREFILL", dict(batch=2, seqlen=24))
    on_cpu = {"device": "cpu", "dtype": torch.float32}
    monkeypatch.setattr(bench, "decode_inputs", lambda *a, **kw: decode_inputs(*a, **{**kw, **on_cpu}))
    monkeypatch.setattr(bench, "prefill_inputs", lambda *a, **kw: prefill_inputs(*a, **{**kw, **on_cpu}))
    seconds = iter([2e-4, 1e-4, 1.5e-4, 3e-4, 2e-4])  # ours decode, CUDA cores, tensor cores, ours prefill, peer
    monkeypatch.setattr(bench, "time_decode", lambda impl, sets: next(seconds))
    monkeypatch.setattr(bench, "time_fn", lambda fn, inputs=None, **kw: SimpleNamespace(median=next(seconds)))
    monkeypatch.setattr(bench, "build_peer", lambda: (FlashInferPeer(FAKE_FLASHINFER, "cpu"), ""))
    result = BenchResult()
    peer, variants = bench.bench_flashinfer(result, load_impl("reference"), torch.float32)
    assert variants == [False, True]
    assert result.metrics["p3_6_decode_fraction_of_flashinfer"] == pytest.approx(1e-4 / 2e-4)
    assert result.metrics["p3_6_prefill_fraction_of_flashinfer"] == pytest.approx(2e-4 / 3e-4)
    assert result.metrics["p3_6_flashinfer_error_over_tolerance"] <= 1.0  # the fake reads the converted layout right
    assert P36.evaluate(result).status == FAIL  # decode 50 % < 80 %
