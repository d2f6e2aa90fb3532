"""Prefill/decode disaggregation: the KV export/import against a reference gather of the blocks, the
engine's prefilled admission (both schedulers, in process), the two-process engine's greedy tokens
against the colocated engine and HF transformers, blocks all free on both sides after a run, a killed
worker's one-line error, and the bench's figures at a tiny size."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from module0_profiling.targets import BenchResult
from phase0_prototype import load_model
from phase0_prototype.errors import ModelError
from phase0_prototype.hf_peer import greedy_reference
from phase4_scheduler.disagg import bench
from phase4_scheduler.disagg.copy_kernel import copy_blocks
from phase4_scheduler.disagg.kv_transfer import export_kv, import_kv
from phase4_scheduler.disagg.router import DisaggregatedEngine, generate_colocated
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.plan import SchedulerConfig

MODEL, SEED = "random:tiny", 3


def _config(impl: str = "solution", overlap: bool = True) -> BatchingConfig:
    # A 16-token budget: prompts longer than that are prefilled in chunks on both sides.
    return BatchingConfig(SchedulerConfig(4, 16), impl, num_blocks=48, block_size=8, cuda_graphs=False,
                          overlap=overlap)


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL, dtype="fp32", device="cpu", seed=SEED)


def _prompts(model, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kv_round_trip_matches_a_reference_gather(seed):
    g = torch.Generator().manual_seed(seed)
    layers, num_blocks, bs, heads, dim = 3, 20, 4, 2, 8
    src = [tuple(torch.randn(num_blocks, bs, heads, dim, generator=g) for _ in range(2)) for _ in range(layers)]
    dst = [tuple(torch.randn(num_blocks, bs, heads, dim, generator=g) for _ in range(2)) for _ in range(layers)]
    before = [tuple(c.clone() for c in caches) for caches in dst]
    num_tokens = int(torch.randint(1, 6 * bs, (1,), generator=g))
    n = math.ceil(num_tokens / bs)
    src_table = torch.randperm(num_blocks, generator=g)[: n + 2].tolist()  # longer than needed: a decode's table
    dst_table = torch.randperm(num_blocks, generator=g)[:n].tolist()

    payload = export_kv(src, src_table, num_tokens)
    want = torch.stack([torch.stack([torch.stack([c[b] for b in src_table[:n]]) for c in caches]) for caches in src])
    assert torch.equal(payload.kv, want)
    assert payload.nbytes == want.numel() * 4

    import_kv(dst, dst_table, payload)
    others = sorted(set(range(num_blocks)) - set(dst_table))
    for layer in range(layers):
        for side in range(2):
            for i, b in enumerate(dst_table):
                assert torch.equal(dst[layer][side][b], src[layer][side][src_table[i]])
            assert torch.equal(dst[layer][side][others], before[layer][side][others])  # nothing else written


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_kernel_moves_every_tensors_blocks_in_one_launch(dtype):
    """The GPU path's Triton kernel (interpreted on CPU) against an indexing reference, fresh random blocks."""
    g = torch.Generator().manual_seed(int(dtype.itemsize))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = [torch.randn(12, 4, 2, 8, generator=g).to(device, dtype) for _ in range(6)]
    dst = [torch.randn(7, 4, 2, 8, generator=g).to(device, dtype) for _ in range(6)]
    want = [d.clone() for d in dst]
    src_blocks, dst_blocks = torch.randperm(12, generator=g)[:5].tolist(), torch.randperm(7, generator=g)[:5].tolist()
    for s, w in zip(src, want, strict=True):
        w[dst_blocks] = s[src_blocks]
    copy_blocks(src, dst, src_blocks, dst_blocks)
    assert all(torch.equal(d, w) for d, w in zip(dst, want, strict=True))
    with pytest.raises(ValueError, match="contiguous tensors of blocks"):
        copy_blocks(src, [torch.zeros(7, 4, 2, 4, dtype=dtype, device=device)] * 6, src_blocks, dst_blocks)


def test_import_refuses_a_payload_of_another_shape():
    src = [tuple(torch.randn(6, 4, 2, 8) for _ in range(2)) for _ in range(2)]
    other = [tuple(torch.zeros(6, 8, 2, 8) for _ in range(2)) for _ in range(2)]  # block size 8
    with pytest.raises(ValueError, match="same model, dtype and block size"):
        import_kv(other, [0, 1], export_kv(src, [3, 4], 6))


@pytest.mark.parametrize("impl", ["framework", "solution"])
@pytest.mark.parametrize("overlap", [False, True])
def test_prefilled_admission_continues_like_the_colocated_engine(model, impl, overlap):
    """In one process: prefill engine (first token, blocks kept) -> export -> release -> decode engine."""
    prompts, lengths = _prompts(model, [5, 23, 40, 9], seed=7), [6, 4, 9, 7]
    prefill, decode = BatchingEngine(model, _config(impl, overlap)), BatchingEngine(model, _config(impl, overlap))
    firsts = [prefill.make_request(p, n, ignore_eos=True) for p, n in zip(prompts, lengths, strict=True)]
    for r in firsts:
        r.max_tokens, r.keep_kv = 1, True
    prefill.generate(firsts)
    assert prefill.blocks.num_free_gpu_blocks < prefill.blocks.num_gpu_blocks  # kept until sent
    loads, decoded = [], []
    for r, p, n in zip(firsts, prompts, lengths, strict=True):
        payload = export_kv(prefill.runner.kv, prefill.blocks.block_table(r.request_id), len(p))
        prefill.release_kv(r.request_id)
        d = decode.make_request(p, n, ignore_eos=True)
        d.output_ids.append(r.output_ids[0])
        d.num_computed = len(p)
        decode.add_prefilled(d, lambda kv, table, payload=payload: loads.append(import_kv(kv, table, payload)))
        decoded.append(d)
    decode.generate([])
    colocated = generate_colocated(BatchingEngine(model, _config(impl, overlap)), prompts, lengths, ignore_eos=True)
    assert len(loads) == len(prompts)
    assert [d.output_ids for d in decoded] == [c.output_ids for c in colocated] == greedy_reference(model, prompts, lengths)
    assert all(d.finish_reason == "length" for d in decoded)
    for engine in (prefill, decode):
        assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks


def test_prefilled_admission_checks_the_request_and_fails_it_alone(model):
    engine = BatchingEngine(model, _config())
    p, q = _prompts(model, [12, 7], seed=11)
    with pytest.raises(ValueError, match="num_computed = len"):
        engine.add_prefilled(engine.make_request(p, 4), lambda kv, table: None)

    def broken(kv, table):
        raise RuntimeError("the KV never arrived")

    bad = engine.make_request(p, 4, ignore_eos=True)
    bad.output_ids.append(5)
    bad.num_computed = len(p)
    engine.add_prefilled(bad, broken)
    good = engine.make_request(q, 3, ignore_eos=True)
    engine.generate([good])
    assert bad.finish_reason == "error: RuntimeError: the KV never arrived"
    assert good.output_ids == greedy_reference(model, [q], [3])[0]
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks


@pytest.fixture(scope="module")
def disagg():
    with DisaggregatedEngine(MODEL, prefill=_config(), decode=_config(), seed=SEED) as engine:
        yield engine


def test_disaggregated_tokens_equal_colocated_and_hf(model, disagg):
    prompts, lengths = _prompts(model, [3, 37, 16, 50, 9, 24], seed=5), [8, 1, 5, 3, 12, 6]
    arrivals = [0.0, 0.001, 0.001, 0.004, 0.01, 0.02]
    split = disagg.generate(prompts, lengths, arrivals=arrivals, ignore_eos=True)
    colocated = generate_colocated(BatchingEngine(model, _config()), prompts, lengths, ignore_eos=True)
    assert [c.output_ids for c in split] == [c.output_ids for c in colocated] == greedy_reference(model, prompts, lengths)
    assert all(c.finish_reason == "length" and c.ttft >= 0 for c in split)
    bs, per_token = 8, 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * model.config.head_dim * 4
    assert [c.kv_bytes for c in split] == [0 if n == 1 else math.ceil(len(p) / bs) * bs * per_token
                                           for p, n in zip(prompts, lengths, strict=True)]
    assert disagg.kv_free() == {"prefill": (48, 48), "decode": (48, 48)}


def test_disaggregated_stop_strings_end_like_the_colocated_engine(model, disagg):
    prompts = _prompts(model, [7, 30, 12], seed=13)
    full = generate_colocated(BatchingEngine(model, _config()), prompts, 12, ignore_eos=True)
    texts = [model.tokenizer.decode(c.output_ids) for c in full]
    stop = tuple({t[4:6] for t in texts if len(t) >= 6})  # strings the outputs reach after a few tokens
    colocated = generate_colocated(BatchingEngine(model, _config()), prompts, 12, ignore_eos=True, stop=stop)
    split = disagg.generate(prompts, 12, ignore_eos=True, stop=stop)
    assert [(c.output_ids, c.finish_reason) for c in split] == [(c.output_ids, c.finish_reason) for c in colocated]
    assert any(c.finish_reason == "stop" for c in split)


def test_disaggregated_request_error_is_its_own(model, disagg):
    ok, too_long = _prompts(model, [6, 400], seed=9)  # over the 48 × 8-token pool
    out = disagg.generate([ok, too_long], [4, 4], ignore_eos=True)
    assert out[0].output_ids == greedy_reference(model, [ok], [4])[0]
    assert out[1].finish_reason.startswith("error: ") and "\n" not in out[1].finish_reason


def test_killed_decode_worker_is_a_one_line_error(model):
    engine = DisaggregatedEngine(MODEL, prefill=_config(), decode=_config(), seed=SEED)
    try:
        os.kill(engine.pids["decode"], signal.SIGKILL)
        with pytest.raises(ModelError) as info:
            engine.generate(_prompts(model, [20], seed=1), 5, ignore_eos=True)
        message = str(info.value)
        assert "decode worker" in message and "exited with code -9" in message and "\n" not in message
        with pytest.raises(ModelError, match="closed"):
            engine.generate(_prompts(model, [20], seed=1), 5)
    finally:
        engine.close()


def test_phase_bench_skips_the_gpu_targets_on_cpu():
    result = BenchResult()
    bench.measure_disaggregation(result, "small")
    assert set(result.skipped) == {"p4_6_kv_transfer_vs_copy", "p4_7_tpot_p99_ratio"}
    assert result.metrics["greedy_equal"] == 1.0 and result.metrics["kv_bytes"] > 0


def test_bench_metrics_at_a_tiny_size():
    s = dict(bench.SIZES["small"], requests=4, prompt=(20, 40), output=3, rate=200.0, seqs=4, budget=16, block_size=8)
    m = bench.run(s=s)
    assert m["greedy_equal"] == 1.0
    assert m["p4_6_kv_transfer_vs_copy"] is None and m["copy_gbps"] is None  # CPU: no copy-bandwidth peak
    cfg = load_model(MODEL, dtype="fp32").config
    prompts, _ = bench.workload(s, cfg.vocab_size)
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4  # K and V, fp32
    assert m["kv_bytes"] == sum(math.ceil(len(p) / 8) * 8 * per_token for p in prompts)  # whole blocks of 8
