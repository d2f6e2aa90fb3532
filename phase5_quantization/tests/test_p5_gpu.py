"""GPU: the W4A16 kernels at TinyLlama's shapes against the dequantized matrix, the fusions, split-K and CUDA
graphs, and the INT4 engine against the recomputed INT4 model."""

import pytest
import torch

from phase5_quantization.framework import quantize_weight

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPES = [(2048, 5632), (5632, 2048), (2048, 2560), (2048, 2048)]  # (K, N): gate/up, down, qkv, o


def _weight(n, k, seed, layout="row"):
    from phase5_quantization.kernels import to_kernel_layout

    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, generator=gen, device="cuda") * 0.02
    qw = quantize_weight(w, 128)
    return qw, to_kernel_layout(qw, layout=layout), qw.dequantize(torch.float32)


def _close(y, ref, rel):
    err = float((y.float() - ref).abs().max() / ref.abs().max())
    assert err < rel, err


@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("m,layout", [(1, "row"), (3, "row"), (8,
                                                               "row"), (16, "row"), (64, "row"), (1, "col"),
                                      (16, "col")])
def test_tinyllama_shapes_match_dequantized_matmul(k, n, m, layout):
    """Row layout: the row GEMV (M = 1), the small-batch MMA kernel (2–64 rows); col: the [K/8, N] GEMV (M =
    1) and the GEMM."""
    from phase5_quantization.kernels import w4a16_linear

    qw, kw, deq = _weight(n, k, k + n + m, layout)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ deq.t()
    _close(w4a16_linear(x, kw), ref, 2 ** -7)  # bf16 output rounding, fp32 accumulation
    x32 = x.float()
    _close(w4a16_linear(x32, kw), x32 @ deq.t(), 1e-5)


@pytest.mark.parametrize("config", [dict(BLOCK_N=16, BLOCK_KW=128, SPLIT_K=4, num_warps=4),
                                    dict(BLOCK_N=16, BLOCK_KW=256, SPLIT_K=2, num_warps=8)])
def test_gemv_split_k_repeated_calls(config):
    """The last program of each tile must leave the workspace and its ticket zeroed for the next call."""
    from phase5_quantization.kernels import w4a16_linear

    qw, kw, deq = _weight(2048, 5632, 7)
    for seed in range(3):
        x = torch.randn(1, 5632, device="cuda", dtype=torch.bfloat16,
                        generator=torch.Generator(device="cuda").manual_seed(seed))
        _close(w4a16_linear(x, kw, config=config), x.float() @ deq.t(), 2 ** -7)


def _check_fusions(m: int, config: dict, plain: bool = False, calls: int = 1) -> None:
    """``w4a16_linear`` under ``config`` at TinyLlama's shapes, fused as the decode step calls it, against
    float math on the dequantized weights: qkv (RMSNorm; ``plain``: also without it), gate_up (RMSNorm +
    SwiGLU), down (residual in place, K = 5632: a partial last slab), ``calls`` times (split-K must leave its
    workspace clean)."""
    from phase5_quantization.kernels import w4a16_linear

    gen = torch.Generator(device="cuda").manual_seed(m)
    g = 1 + 0.1 * torch.randn(2048, device="cuda", generator=gen)
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16, generator=gen)
    h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5) * g
    _, kq, dq = _weight(2560, 2048, 1, "row")
    _close(w4a16_linear(x, kq, norm_weight=g.bfloat16(), eps=1e-5, config=config), h @ dq.t(), 2 ** -6)
    if plain:
        _close(w4a16_linear(x, kq, config=config), x.float() @ dq.t(), 2 ** -7)
    _, kg, dg = _weight(2 * 5632, 2048, 2, "row")
    gate, up = (h @ dg.t()).chunk(2, -1)
    _close(w4a16_linear(x, kg, norm_weight=g.bfloat16(), eps=1e-5, swiglu=True, config=config),
           torch.nn.functional.silu(gate) * up, 2 ** -6)
    _, kd, dd = _weight(2048, 5632, 3, "row")
    act = torch.randn(m, 5632, device="cuda", dtype=torch.bfloat16, generator=gen)
    res = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16, generator=gen)
    expect = res.float() + act.float() @ dd.t()
    for _ in range(calls):
        r = res.clone()
        w4a16_linear(act, kd, residual=r, out=r, config=config)
        _close(r, expect, 2 ** -6)


@pytest.mark.parametrize("config", [dict(BLOCK_N=1, BLOCK_KW=256, SPLIT_K=1, num_warps=2),
                                    dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=1, num_warps=2),
                                    dict(BLOCK_N=4, BLOCK_KW=512, SPLIT_K=1, num_warps=4),
                                    dict(BLOCK_N=2, BLOCK_KW=256, SPLIT_K=2, num_warps=2)])
@pytest.mark.parametrize("m", [1, 4])
def test_row_gemv_configs_and_fusions(config, m):
    """The row GEMV under sweep-like configurations, fused as the decode step calls it
    (``_check_fusions``)."""
    _check_fusions(m, config)


@pytest.mark.parametrize("m", [1, 16])
def test_fusions_at_tinyllama_shapes(m):
    from phase5_quantization.kernels import w4a16_linear

    qw, kw, deq = _weight(2 * 5632, 2048, 11)
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    g = 1 + 0.1 * torch.randn(2048, device="cuda")
    h = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5) * g).float()
    gate, up = (h @ deq.t()).chunk(2, -1)
    _close(w4a16_linear(x, kw, norm_weight=g.bfloat16(), eps=1e-5, swiglu=True),
           torch.nn.functional.silu(gate) * up, 2 ** -6)
    qo, ko, do = _weight(2048, 2048, 12)
    res = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    expect = res.float() + x.float() @ do.t()
    w4a16_linear(x, ko, residual=res, out=res)
    _close(res, expect, 2 ** -6)


def test_cuda_graph_replay_matches_eager():
    from module0_profiling.timing import capture_cuda_graph
    from phase5_quantization.kernels import w4a16_linear

    qw, kw, deq = _weight(5632, 2048, 21)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(1, 5632, device="cuda", dtype=torch.bfloat16)
    eager = w4a16_linear(x, kw).clone()
    graph = capture_cuda_graph(lambda: [w4a16_linear(x, kw, out=out) for _ in range(3)])  # back to back (PDL)
    out.zero_()
    graph.replay()
    assert torch.equal(out, eager)


def test_int4_engine_matches_recomputed_model_on_gpu():
    """kjv-llama-18m in fp32 on the GPU: the engine's greedy tokens (W4A16 GEMV step in a CUDA graph, GEMM
    prefill) equal the INT4 model's recomputed greedy tokens on the CPU (dequantize + F.linear)."""
    from phase0_prototype.sources import load_model
    from phase5_quantization import framework
    from phase5_quantization.integration import Int4Engine
    from phase5_quantization.model import LinearLlama

    cpu = load_model("kjv-llama-18m", dtype="fp32")
    q = framework.quantize(LinearLlama.from_loaded(cpu))
    ids = cpu.tokenizer.encode("And the LORD spake unto Moses, saying,", add_special_tokens=True)
    expected = q.greedy(ids, 24)
    gpu = load_model("kjv-llama-18m", dtype="fp32", device="cuda")
    engine = Int4Engine(gpu, q, max_seq_len=128, compile=True)
    got = engine.generate(torch.tensor([ids], device="cuda"), 24, stop_on_eos=False).tokens[0].tolist()
    assert got == expected
    logits = engine.forward_logits(torch.tensor([ids], device="cuda")).cpu()
    assert torch.allclose(logits, q.forward_logits(torch.tensor([ids])), atol=2e-3, rtol=1e-3)


def test_int4pack_peer_agrees_with_our_codes():
    """The tinygemm peer is fed the same numbers (so P5.2 compares kernels, not different weights)."""
    from phase5_quantization.peers import int4pack_linear, int4pack_reason

    if int4pack_reason():
        pytest.skip(int4pack_reason())
    qw, kw, deq = _weight(2048, 2048, 31)
    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    _close(int4pack_linear(qw)(x), x.float() @ deq.t(), 2 ** -6)


@pytest.mark.parametrize("config", [dict(BLOCK_N=64, SPLIT_K=4, num_warps=4, DEPTH=1, ONE_DOT=1),
                                    dict(BLOCK_N=64, SPLIT_K=6, num_warps=4, DEPTH=2, ONE_DOT=1, maxnreg=128),
                                    dict(BLOCK_N=64, SPLIT_K=1, num_warps=8, DEPTH=1, ONE_DOT=0),
                                    dict(BLOCK_N=32, SPLIT_K=3, num_warps=2, DEPTH=1, ONE_DOT=1),
                                    dict(BLOCK_N=128, SPLIT_K=2, num_warps=8, DEPTH=2, ONE_DOT=1)])
@pytest.mark.parametrize("m", [2, 16, 40])
def test_small_batch_mma_configs_and_fusions(config, m):
    """The small-batch tensor-core kernel under the sweep's configurations, fused as the batched decode step
    calls it (qkv: norm; gate_up: norm + SwiGLU; down: residual in place, K = 5632) and plain."""
    _check_fusions(m, dict(config, KERNEL="mma"), plain=True, calls=2)


@pytest.mark.parametrize("k,n", [(2048, 5632), (5632, 2048), (384, 320)])
@pytest.mark.parametrize("m", [1, 5, 16, 33, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gluon_wgmma_kernel_matches_dequantized_matmul(k, n, m, dtype):
    """The Hopper Gluon kernel (``w4a16_wgmma``), plain and with the residual added in place, twice (split-K
    must leave its workspace clean); 384 → 320: 3 groups over programs of 2 (one half empty), rows past N
    masked."""
    from phase5_quantization.kernels import w4a16_linear
    from phase5_quantization.kernels.launch import wgmma_reason

    qw, kw, deq = _weight(n, k, 3 * k + n + m)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    if (why := wgmma_reason(x, kw, False, False)) is not None:
        pytest.skip(why)
    ref = x.float() @ deq.t()
    res = torch.randn(m, n, device="cuda", dtype=dtype)
    for _ in range(2):
        _close(w4a16_linear(x, kw, config=dict(KERNEL="wgmma")), ref, 2 ** -7)
        out = res.clone()
        w4a16_linear(x, kw, residual=out, out=out, config=dict(KERNEL="wgmma"))
        _close(out, ref.to(dtype).float() + res.float(), 2 ** -7)


@pytest.mark.parametrize("k,n,config", [(5632, 2048, dict(BLOCK_N=64,
                                                          GPP=1)), (5632, 2048, dict(BLOCK_N=64, GPP=3)),
                                        (5632, 2048, dict(BLOCK_N=128, GPP=4)),
                                        (5632, 2048, dict(BLOCK_N=128, GPP=11, SPLIT_K=4)),
                                        (384, 320, dict(BLOCK_N=64, GPP=3, SPLIT_K=1))])
def test_gluon_wgmma_configs(k, n, config):
    """Other tiles and splits of the Gluon kernel (the sweep's space) at 16 rows; SPLIT_K=1: no reduction."""
    from phase5_quantization.kernels import w4a16_linear
    from phase5_quantization.kernels.launch import wgmma_reason

    qw, kw, deq = _weight(n, k, 11)
    x = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
    if (why := wgmma_reason(x, kw, False, False)) is not None:
        pytest.skip(why)
    for _ in range(2):
        _close(w4a16_linear(x, kw, config=dict(config, KERNEL="wgmma")), x.float() @ deq.t(), 2 ** -7)


def test_default_route_uses_gluon_kernel_on_hopper(monkeypatch):
    """16 plain rows go to the Gluon kernel on an H100/H200, fused RMSNorm to the Triton one."""
    from phase5_quantization.kernels import launch

    qw, kw, deq = _weight(2048, 2048, 5)
    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    if (why := launch.wgmma_reason(x, kw, False, False)) is not None:
        pytest.skip(why)
    seen = []
    for name in ("_row_wgmma", "_row_mma"):
        real = getattr(launch, name)
        monkeypatch.setattr(launch, name, lambda *a, _r=real, _n=name,
                            **kw_: (seen.append(_n), _r(*a, **kw_)))
    launch.w4a16_linear(x, kw)
    launch.w4a16_linear(x, kw, norm_weight=torch.ones(2048, device="cuda", dtype=torch.bfloat16), eps=1e-5)
    assert seen == ["_row_wgmma", "_row_mma"]
