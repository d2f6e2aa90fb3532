"""The PyTorch reference against HF transformers (the oracle) and a float64 complex rotation, on CPU."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaConfig, LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

from phase2_rope_cuda import reference  # noqa: E402
from phase2_rope_cuda.integration import cache_from_tables, phase0_rope_fn  # noqa: E402
from phase2_rope_cuda.shapes import RopeInputError, check_positions_in_range  # noqa: E402

TOL = {torch.float32: (1e-5, 1.3e-6), torch.bfloat16: (1e-5, 1.6e-2), torch.float16: (1e-5, 1e-3)}


def hf_rope(q, k, positions, head_dim, max_position, theta):
    """HF's own modules, in HF's layout [batch=1, heads, tokens, head_dim]."""
    config = LlamaConfig(hidden_size=head_dim * q.shape[1], num_attention_heads=q.shape[1],
                         num_key_value_heads=k.shape[1], head_dim=head_dim,
                         max_position_embeddings=max_position, rope_theta=theta)
    rotary = LlamaRotaryEmbedding(config)
    cos, sin = rotary(q, positions[None].long())
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin, unsqueeze_dim=1)
    return q_hf[0].transpose(0, 1), k_hf[0].transpose(0, 1), rotary


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("tokens,q_heads,kv_heads", [(1, 4, 1), (37, 8, 2), (129, 6, 6)])
@pytest.mark.parametrize("pos_dtype", [torch.int64, torch.int32])
def test_reference_equals_hf_in_fp32(head_dim, tokens, q_heads, kv_heads, pos_dtype):
    g = torch.Generator().manual_seed(tokens * head_dim + q_heads)
    max_position, theta = 4096, 10000.0
    q = torch.randn(tokens, q_heads, head_dim, generator=g)
    k = torch.randn(tokens, kv_heads, head_dim, generator=g)
    positions = torch.randint(0, max_position, (tokens,), generator=g, dtype=torch.int64).to(pos_dtype)
    q_hf, k_hf, _ = hf_rope(q, k, positions, head_dim, max_position, theta)
    cache = reference.build_cos_sin_cache(head_dim, max_position, theta)
    q_ref, k_ref = reference.apply_rope_reference(q, k, positions, cache)
    torch.testing.assert_close(q_ref, q_hf, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k_ref, k_hf, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_low_precision_within_tolerance_of_hf(dtype):
    g = torch.Generator().manual_seed(7)
    tokens, head_dim = 53, 64
    q32 = torch.randn(tokens, 8, head_dim, generator=g)
    k32 = torch.randn(tokens, 2, head_dim, generator=g)
    positions = torch.randint(0, 2048, (tokens,), generator=g)
    q, k = q32.to(dtype), k32.to(dtype)
    # HF in fp32 on the same (rounded) inputs: the accurate answer both should approach.
    q_hf, k_hf, _ = hf_rope(q.float(), k.float(), positions, head_dim, 2048, 10000.0)
    q_ref, k_ref = reference.apply_rope_reference(q, k, positions, reference.build_cos_sin_cache(head_dim, 2048))
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(q_ref.float(), q_hf, atol=atol, rtol=rtol)
    torch.testing.assert_close(k_ref.float(), k_hf, atol=atol, rtol=rtol)
    assert q_ref.dtype == dtype and k_ref.dtype == dtype


def test_cache_reproduces_hf_rotary_module_with_scaling():
    """``inv_freq`` + ``scaling`` taken from an HF module (llama3 scaling) give HF's cos/sin exactly."""
    head_dim, max_position = 64, 512
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_position,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 128})
    rotary = LlamaRotaryEmbedding(config)
    positions = torch.randint(0, max_position, (1, 40))
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    cache = reference.build_cos_sin_cache(head_dim, max_position, inv_freq=rotary.inv_freq,
                                          scaling=rotary.attention_scaling)
    cos_ref, sin_ref = reference.cos_sin_for_positions(cache, positions[0])
    torch.testing.assert_close(cos_ref, cos[0], atol=0, rtol=0)
    torch.testing.assert_close(sin_ref, sin[0], atol=0, rtol=0)


def test_reference_matches_float64_complex_rotation():
    g = torch.Generator().manual_seed(3)
    head_dim, tokens = 128, 77
    q = torch.randn(tokens, 5, head_dim, generator=g, dtype=torch.float64).float()
    positions = torch.randint(0, 4096, (tokens,), generator=g)
    inv_freq = reference.inverse_frequencies(head_dim)
    cache = reference.build_cos_sin_cache(head_dim, 4096)
    q_ref, _ = reference.apply_rope_reference(q, q[:, :1], positions, cache)
    expected = reference.apply_rope_complex_f64(q, positions, inv_freq)
    # only fp32 cos/sin evaluation and fp32 arithmetic separate the two
    torch.testing.assert_close(q_ref.double(), expected, atol=1e-5, rtol=1e-5)


def test_in_place_reference_and_strided_views():
    """``apply_rope_`` rotates q/k views of a fused QKV buffer in place and leaves V untouched."""
    g = torch.Generator().manual_seed(11)
    tokens, hq, hkv, d = 19, 4, 2, 64
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=g)
    before = qkv.clone()
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d: (hq + hkv) * d].view(tokens, hkv, d)
    positions = torch.randint(0, 100, (tokens,), generator=g)
    cache = reference.build_cos_sin_cache(d, 100)
    q_exp, k_exp = reference.apply_rope_reference(q.contiguous(), k.contiguous(), positions, cache)
    reference.apply_rope_(q, k, positions, cache)
    torch.testing.assert_close(q, q_exp, atol=0, rtol=0)
    torch.testing.assert_close(k, k_exp, atol=0, rtol=0)
    torch.testing.assert_close(qkv[:, (hq + hkv) * d:], before[:, (hq + hkv) * d:], atol=0, rtol=0)
    assert not torch.equal(qkv[:, : hq * d], before[:, : hq * d])


def test_phase0_adapter_matches_hf_layout():
    g = torch.Generator().manual_seed(5)
    B, T, hq, hkv, d, P = 2, 9, 4, 2, 64, 64
    inv_freq = reference.inverse_frequencies(d)
    freqs = torch.outer(torch.arange(P, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    q = torch.randn(B, T, hq, d, generator=g)
    k = torch.randn(B, T, hkv, d, generator=g)
    positions = torch.arange(T).expand(B, T)
    cache = cache_from_tables(cos, sin)
    torch.testing.assert_close(cache, reference.build_cos_sin_cache(d, P), atol=0, rtol=0)
    q_exp = q * cos[positions][:, :, None] + reference.rotate_half(q) * sin[positions][:, :, None]
    k_exp = k * cos[positions][:, :, None] + reference.rotate_half(k) * sin[positions][:, :, None]
    q_out, k_out = phase0_rope_fn("reference")(q.clone(), k.clone(), cos, sin, positions)
    torch.testing.assert_close(q_out, q_exp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k_out, k_exp, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: {**a, "q": a["q"][0]}, "tokens, heads, head_dim"),
        (lambda a: {**a, "k": a["k"].double()}, "one dtype"),
        (lambda a: {**a, "positions": a["positions"].float()}, "int64 or int32"),
        (lambda a: {**a, "positions": a["positions"][:-1]}, r"positions must be \[tokens\]"),
        (lambda a: {**a, "cos_sin_cache": a["cos_sin_cache"][:, :32]}, "max_position, head_dim"),
        (lambda a: {**a, "cos_sin_cache": a["cos_sin_cache"].half()}, "float32"),
    ],
)
def test_bad_inputs_raise_one_clear_error(mutate, match):
    args = dict(q=torch.randn(5, 4, 64), k=torch.randn(5, 2, 64), positions=torch.arange(5),
                cos_sin_cache=reference.build_cos_sin_cache(64, 16))
    with pytest.raises(RopeInputError, match=match):
        reference.apply_rope_reference(**mutate(args))


def test_positions_out_of_range_is_reported():
    with pytest.raises(RopeInputError, match=r"\[0, 16\)"):
        check_positions_in_range(torch.tensor([0, 16]), reference.build_cos_sin_cache(64, 16))
