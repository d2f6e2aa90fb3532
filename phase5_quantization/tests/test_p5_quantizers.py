"""AWQ and GPTQ beat RTN on the output error of a linear with outlier input channels (float64 reference)."""

import torch

from phase5_quantization.framework import quantize_weight
from phase5_quantization.gptq import gptq_weight, hessian
from phase5_quantization.solution import fake_quant, search_clip, search_scale


def _data(seed):
    gen = torch.Generator().manual_seed(seed)
    # correlated channels (a random mixing), as activations of a trained model are
    x = torch.randn(1024, 256,
                    generator=gen) @ (torch.eye(256) + 0.3 * torch.randn(256, 256, generator=gen) / 16)
    x[:, [3, 77, 200]] *= 25.0  # outlier channels, as in Llama activations
    w = torch.randn(96, 256, generator=gen) * 0.02
    return x, w


def _out_err(x, w, w_hat):
    return float(((x.double() @ (w_hat.double() - w.double()).t()) ** 2).mean())


def test_awq_scale_and_clip_search_beat_rtn():
    x, w = _data(5)
    rtn = _out_err(x, w, quantize_weight(w, 128).dequantize())
    s, alpha = search_scale(w, x, 128, grid=20)
    awq = _out_err(x, w, fake_quant(w * s, 128) / s)
    assert alpha > 0 and awq < 0.8 * rtn
    clip = search_clip(w * s, x / s, 128)
    clipped = _out_err(x, w, quantize_weight(w * s, 128, clip=clip).dequantize() / s)
    assert clipped <= awq * 1.0001 and (clip <= 1).all()


def test_gptq_beats_rtn_with_and_without_act_order():
    x, w = _data(6)
    rtn = _out_err(x, w, quantize_weight(w, 128).dequantize())
    h = hessian(x)
    for act_order in (False, True):
        qw = gptq_weight(w, h, 128, act_order=act_order)
        assert qw.codes().max() <= 15
        assert _out_err(x, w, qw.dequantize()) < 0.9 * rtn, act_order
