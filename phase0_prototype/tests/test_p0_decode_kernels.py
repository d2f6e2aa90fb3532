"""The Triton decode kernels against float64 PyTorch references, and the Triton decode step against the
PyTorch one (greedy tokens, fp32). On a CPU they run in Triton's interpreter at small shapes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase0_prototype import apply_rope, load_model  # noqa: E402
from phase0_prototype.config import TINY  # noqa: E402
from phase0_prototype.dev import TritonStepEngine  # noqa: E402
from phase0_prototype.kernels.decode_attention import rope_cache_attention, split_len  # noqa: E402
from phase0_prototype.kernels.gemv import fused_gemv  # noqa: E402
from phase0_prototype.model import rope_cache  # noqa: E402
from phase0_prototype.solution import SolutionEngine  # noqa: E402

torch.set_num_threads(1)
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def rand(*shape, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=DEVICE)


def rms64(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,n,k,config", [
    (1, 40, 64, None), (3, 24, 200, (8, 64, 4)), (2, 20, 96, (16, 32, 2)),
    (1, 40, 96, (8, 128, 4))])  # the last: the whole row is one masked slab (ONE_SLAB, K % BLOCK_K != 0)
def test_gemv_prologue_and_epilogues_match_float64(dtype, batch, n, k, config):
    x, w = rand(batch, k, seed=1, dtype=dtype), rand(2 * n, k, seed=2, dtype=dtype, scale=0.1)
    g, res = rand(k, seed=3, dtype=dtype), rand(batch, n, seed=4, dtype=dtype)
    eps = 1e-5
    tol = TOL[dtype]
    w1 = w[:n].contiguous()

    plain = fused_gemv(x, w1, config=config)
    torch.testing.assert_close(plain.double(), x.double() @ w1.double().T, **tol)

    normed = fused_gemv(x, w1, norm_weight=g, eps=eps, config=config)
    torch.testing.assert_close(normed.double(), rms64(x, g, eps) @ w1.double().T, **tol)

    out = res.clone()
    fused_gemv(x, w1, residual=out, out=out, config=config)  # in place, as the engine uses it
    torch.testing.assert_close(out.double(), res.double() + x.double() @ w1.double().T, **tol)

    act = fused_gemv(x, w, norm_weight=g, eps=eps, swiglu=True, config=config)
    h = rms64(x, g, eps)
    gate, up = h @ w[:n].double().T, h @ w[n:].double().T
    torch.testing.assert_close(act.double(), F.silu(gate) * up, **tol)


def reference_attention(qkv, k_cache, v_cache, cos, sin, positions, n_heads, rope=True):
    """float64: rotate, write the cache slot, softmax over slots [0, position] with GQA."""
    B = qkv.shape[0]
    n_kv, D = k_cache.shape[1], k_cache.shape[3]
    q, k, v = qkv.double().split([n_heads * D, n_kv * D, n_kv * D], dim=-1)
    q, k = q.view(B, 1, n_heads, D), k.view(B, 1, n_kv, D)
    if rope:
        q, k = apply_rope(q, k, cos.double(), sin.double(), positions[:, None])
    kc, vc = k_cache.double().clone(), v_cache.double().clone()
    out = []
    for b in range(B):
        p = int(positions[b])
        kc[b, :, p], vc[b, :, p] = k[b, 0], v.view(B, n_kv, D)[b]
        keys = kc[b, :, : p + 1].repeat_interleave(n_heads // n_kv, 0)  # [Hq, p+1, D]
        vals = vc[b, :, : p + 1].repeat_interleave(n_heads // n_kv, 0)
        probs = torch.softmax(torch.einsum("hd,hsd->hs", q[b, 0], keys) * D ** -0.5, -1)
        out.append(torch.einsum("hs,hsd->hd", probs, vals).reshape(-1))
    return torch.stack(out), kc, vc


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope", [True, False])
def test_rope_cache_attention_matches_float64(dtype, rope):
    n_heads, n_kv, D, S, B = 8, 2, 16, 100, 3  # 4 splits of 32 slots at S=100
    assert split_len(S) < S
    cos, sin = rope_cache(TINY, S, DEVICE)
    qkv = rand(B, (n_heads + 2 * n_kv) * D, seed=5, dtype=dtype)
    k_cache = rand(B + 1, n_kv, S, D, seed=6, dtype=dtype)  # a cache for more rows than the batch
    v_cache = rand(B + 1, n_kv, S, D, seed=7, dtype=dtype)
    positions = torch.tensor([0, 37, S - 1], device=DEVICE)  # first slot, mid-split, last slot
    expected, k_exp, v_exp = reference_attention(qkv, k_cache[:B], v_cache[:B], cos, sin, positions, n_heads,
                                                 rope)
    untouched = k_cache[B].clone()
    got = rope_cache_attention(qkv, k_cache, v_cache, cos, sin, positions, n_heads, rope=rope)
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), expected, **tol)
    torch.testing.assert_close(k_cache[:B].double(), k_exp, **tol)
    torch.testing.assert_close(v_cache[:B].double(), v_exp, **tol)
    assert torch.equal(k_cache[B], untouched)


def test_rope_cache_attention_several_blocks_per_split(monkeypatch):
    """Splits longer than a loop block: the next block is prefetched while the current one is used."""
    from phase0_prototype.kernels import decode_attention

    monkeypatch.setattr(decode_attention, "MAX_SPLITS", 2)
    n_heads, n_kv, D, S, B = 4, 2, 16, 100, 3
    assert split_len(S, 16) == 64  # 2 splits of 4 blocks of 16 positions
    cos, sin = rope_cache(TINY, S, DEVICE)
    qkv = rand(B, (n_heads + 2 * n_kv) * D, seed=15)
    k_cache, v_cache = rand(B, n_kv, S, D, seed=16), rand(B, n_kv, S, D, seed=17)
    positions = torch.tensor([17, 64, 90], device=DEVICE)  # mid-block, a split's first slot, the last split
    expected, k_exp, _ = reference_attention(qkv, k_cache, v_cache, cos, sin, positions, n_heads)
    got = rope_cache_attention(qkv, k_cache, v_cache, cos, sin, positions, n_heads, block_s=16)
    torch.testing.assert_close(got.double(), expected, **TOL[torch.float32])
    torch.testing.assert_close(k_cache.double(), k_exp, **TOL[torch.float32])


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny", dtype="fp32", device=DEVICE, seed=5)


def test_triton_step_greedy_tokens_equal_pytorch_step(tiny):
    prompts = torch.randint(3, TINY.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    prompts = prompts.to(DEVICE)
    base = SolutionEngine(tiny, max_batch_size=2, max_seq_len=48, compile=False)
    fast = TritonStepEngine(tiny, max_batch_size=2, max_seq_len=48, compile=False)
    assert "Triton" in fast.mode and "Triton" not in base.mode
    expected = base.generate(prompts, 12, stop_on_eos=False).tokens
    assert torch.equal(fast.generate(prompts, 12, stop_on_eos=False).tokens, expected)
    torch.testing.assert_close(fast.kv_cache, base.kv_cache, rtol=1e-4, atol=1e-4)


def test_triton_step_with_a_plugged_in_rope(tiny):
    calls = []

    def my_rope(q, k, cos, sin, positions):
        calls.append(1)
        return apply_rope(q, k, cos, sin, positions)

    prompt = torch.randint(3, TINY.vocab_size, (1, 7), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    base = SolutionEngine(tiny, max_seq_len=32, compile=False)
    fast = TritonStepEngine(tiny, max_seq_len=32, compile=False, rope_fn=my_rope)
    assert not fast.fused_rope
    assert torch.equal(fast.generate(prompt, 8, stop_on_eos=False).tokens,
                       base.generate(prompt, 8, stop_on_eos=False).tokens)
    assert len(calls) > 8  # the prefill's layers and the Triton decode steps both called it


def test_triton_step_refuses_a_batch_beyond_a_gemv_in_one_line(tiny):
    from phase0_prototype.errors import ModelError

    one_line = r"^the Triton decode step cannot run this engine: batch 9 > 8[^\n]*$"
    with pytest.raises(ModelError, match=one_line):
        TritonStepEngine(tiny, max_batch_size=9, max_seq_len=16, compile=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,vocab", [(1, 1000), (3, 4100), (2, 20000)])  # 20000: 3 loop rounds
def test_greedy_tail_matches_torch(dtype, batch, vocab):
    """argmax (first index of ties, like torch), EOS padding and marking, feedback, position, history."""
    from phase0_prototype.kernels.greedy import greedy_tail

    logits = rand(batch, vocab, seed=7, dtype=dtype)
    # ties across loop iterations and lanes: the winner must be the first occurrence
    logits[0, [5, max(6, 9000 % vocab), vocab - 1]] = 50.0
    L = 16
    positions = torch.tensor([3, 9, 14][:batch], device=DEVICE)
    finished = torch.tensor([0, 1, 0][:batch], dtype=torch.uint8, device=DEVICE)
    pad = torch.tensor([2, 2, 7][:batch], device=DEVICE)
    expected_tok = logits.float().argmax(-1)
    eos_hit = int(expected_tok[-1])  # the last row emits one of the EOS ids -> becomes finished
    eos = torch.tensor([-1, eos_hit, -1, -1], device=DEVICE)
    tokens = torch.zeros(batch, dtype=torch.long, device=DEVICE)
    history = torch.full((batch, L), -5, dtype=torch.long, device=DEVICE)
    pos0, fin0 = positions.clone(), finished.clone()

    greedy_tail(logits, tokens, positions, finished, eos, pad, history)

    want = torch.where(fin0.bool(), pad, expected_tok)
    assert int(expected_tok[0]) == 5
    assert torch.equal(tokens, want)
    assert torch.equal(positions, pos0 + 1)
    assert torch.equal(finished.bool(), fin0.bool() | torch.isin(want, eos))
    assert bool(finished[-1])
    for b in range(batch):
        row = history[b].tolist()
        assert row[int(pos0[b]) + 1] == int(want[b])
        assert sum(v != -5 for v in row) == 1  # nothing else written
    # saturation: at the last slot the position stays and that slot is rewritten
    positions.fill_(L - 1)
    greedy_tail(logits, tokens, positions, finished, eos, pad, history)
    assert positions.tolist() == [L - 1] * batch


class _EagerReplay:
    """Stands in for a CUDA graph on a CPU: ``replay`` runs the body the graph would have captured."""

    def __init__(self, body):
        self.replay = body


@pytest.mark.parametrize("case", ["greedy", "greedy_eos", "sampled_eos"])
@pytest.mark.parametrize("lookahead", [True, False])
def test_graph_path_bookkeeping_equals_eager_generate(tiny, case, lookahead):
    """The graph path of ``generate`` (history buffer, in-graph greedy tail, EOS, host sampling) against the
    eager path, with the captured body run eagerly."""
    from phase0_prototype.sampling import SamplingParams
    from phase0_prototype.solution import DecodeGraph

    prompts = torch.randint(3, TINY.vocab_size, (2, 6), generator=torch.Generator().manual_seed(11))
    prompts = prompts.to(DEVICE)
    # On a GPU: a real CUDA graph of the Triton step against the same kernels run eagerly. On a CPU: the
    # PyTorch step (fast there), with the body the graph would capture run eagerly at each "replay".
    options = dict(max_batch_size=2, max_seq_len=40)
    eager = (TritonStepEngine if DEVICE == "cuda" else SolutionEngine)(tiny, compile=False, **options)
    graphed = SolutionEngine(tiny, compile=DEVICE == "cuda", **options)
    if DEVICE == "cpu":
        graphed.use_graphs = True
        g = DecodeGraph.allocate(2, graphed.max_seq_len, graphed.device)
        g.graph = _EagerReplay(graphed._decode_body(g, graphed.decode_step))
        graphed._graphs[2] = g
    assert graphed.use_graphs
    graphed.lookahead, graphed.sync_every = lookahead, 4  # the next step launched before each chunk is read
    sampling = SamplingParams(temperature=0.9, seed=3) if case == "sampled_eos" else SamplingParams()
    kw = dict(stop_on_eos=False)
    if case != "greedy":  # an EOS id that one sequence emits mid-way: it must stop there, the other not
        free = eager.generate(prompts, 14, sampling, stop_on_eos=False).tokens
        kw = dict(stop_on_eos=True, eos_ids=(int(free[0, 4]),))
    chunks = []
    want = eager.generate(prompts, 14, sampling, **kw)
    got = graphed.generate(prompts, 14, sampling, on_tokens=chunks.append, **kw)
    assert torch.equal(got.tokens, want.tokens) and got.lengths == want.lengths, case
    assert torch.equal(torch.cat(chunks, 1)[:, : got.tokens.shape[1]], got.tokens)
