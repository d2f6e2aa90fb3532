"""INT4 on the bundled kjv-llama-18m: the float path equals phase 0, quantized logits/tokens stay close,
save/load round-trips, and AWQ's folded scales leave the float function unchanged."""

import pytest
import torch

from phase0_prototype import load_impl
from phase0_prototype.errors import ModelError
from phase0_prototype.sources import load_model
from phase5_quantization import framework, solution
from phase5_quantization.bench import CALIBRATION
from phase5_quantization.model import LinearLlama, QuantLinear


@pytest.fixture(scope="module")
def kjv():
    m = load_model("kjv-llama-18m", dtype="fp32")
    ids = m.tokenizer.encode("And God said unto Moses, Go in unto Pharaoh, and tell him",
                             add_special_tokens=True)
    return m, LinearLlama.from_loaded(m), torch.tensor([ids])


def test_float_path_matches_phase0_framework(kjv):
    m, fp, ids = kjv
    ref = load_impl("framework").build(m).forward_logits(ids)
    assert torch.allclose(fp.forward_logits(ids), ref, atol=1e-4, rtol=1e-4)


def test_rtn_model_close_to_float_and_save_load(kjv, tmp_path):
    m, fp, ids = kjv
    q = framework.quantize(fp)
    assert all(isinstance(lin, QuantLinear) for layer in q.linears for lin in layer.values())
    assert fp.linear_bytes() / q.linear_bytes() > 7.0  # fp32 -> 4 bit + group params
    a, b = fp.forward_logits(ids)[0], q.forward_logits(ids)[0]
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    assert agree >= 0.8 and (a - b).abs().max() < 0.25 * a.abs().max()
    back = LinearLlama.load(q.save(tmp_path / "rtn"))
    assert torch.equal(back.forward_logits(ids), q.forward_logits(ids))
    (tmp_path / "rtn" / "quant_config.json").write_text('{"format": "awq-gemm", "bits": 8}')
    with pytest.raises(ModelError, match="expected 'titaninfer-int4-v1' with 4 bits"):
        LinearLlama.load(tmp_path / "rtn")


def test_awq_folding_is_exact_and_quantized_model_is_close(kjv):
    m, fp, ids = kjv
    cal = m.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)[:4096]
    q = solution.quantize(fp, cal, grid=5, search_tokens=512, clip=False)
    assert any(a > 0 for a in q.meta["awq_alpha"].values())  # some layer really scaled
    a, b = fp.forward_logits(ids)[0], q.forward_logits(ids)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8


def test_awq_scaled_float_model_unchanged(kjv):
    """The folding alone (no rounding) must compute the same function: scale, fold, compare in fp32."""
    m, fp, ids = kjv
    from phase5_quantization.model import DenseLinear

    cfg, g = fp.config, torch.Generator().manual_seed(0)
    layer, (n1, n2) = fp.linears[0], fp.norms[0]
    s_in = torch.rand(cfg.hidden_size, generator=g) + 0.5
    s_o = (torch.rand(cfg.num_key_value_heads, 1, cfg.head_dim, generator=g) + 0.5).expand(
        -1, cfg.num_attention_heads // cfg.num_key_value_heads, -1).reshape(-1)
    qkv, o = layer["qkv_proj"].dense().clone(), layer["o_proj"].dense().clone()
    qkv *= s_in
    qkv[cfg.q_size + cfg.kv_size:] /= s_o.view(cfg.num_key_value_heads, -1, cfg.head_dim)[:, 0].reshape(-1, 1)
    scaled = LinearLlama(cfg, fp.embed_tokens, [(n1 / s_in, n2)] + fp.norms[1:],
                         [{**layer, "qkv_proj": DenseLinear(qkv), "o_proj": DenseLinear(o * s_o)}]
                         + fp.linears[1:],
                         fp.norm, fp.lm_head)
    assert torch.allclose(scaled.forward_logits(ids), fp.forward_logits(ids), atol=1e-3, rtol=1e-3)
