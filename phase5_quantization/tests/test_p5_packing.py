"""Packing, RTN's error bound and AutoAWQ's GEMM format, against float64 and hand-built words."""

import pytest
import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.framework import quantize_weight
from phase5_quantization.packing import AWQ_ORDER, from_awq_gemm, pack_int4, to_awq_gemm, unpack_int4


def test_pack_unpack_round_trip_and_bit_positions():
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (37, 64), generator=gen, dtype=torch.uint8)
    words = pack_int4(codes)
    assert words.dtype == torch.int32 and words.shape == (37, 8)
    assert torch.equal(unpack_int4(words), codes)
    # independent reference: the unsigned word is Σ_j code[8k + j] · 16^j
    ref = sum(int(codes[5, 8 + j]) * 16 ** j for j in range(8))
    assert int(words[5, 1]) & 0xFFFFFFFF == ref


def test_rtn_error_within_half_a_step_float64():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(64, 512, generator=gen, dtype=torch.float64) * 0.05
    w[:, 7] *= 30  # an outlier column widens its groups' range
    qw = quantize_weight(w.float(), 128)
    deq = qw.dequantize(torch.float64)
    s = qw.scales.double().repeat_interleave(128, dim=1)
    assert ((w - deq).abs() <= s / 2 + 1e-6).all()
    assert (w - deq).abs().max() > 0  # really quantized


def test_awq_gemm_round_trip_and_known_nibble_order(tmp_path):
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(48, 256, generator=gen) * 0.02
    qw = quantize_weight(w, 128)
    awq = to_awq_gemm(qw)
    assert awq["qweight"].shape == (256,
                                    6) and awq["qzeros"].shape == (2, 6) and awq["scales"].shape == (2, 48)
    # independent reference for one word: nibble j holds output column 8c + AWQ_ORDER[j] of input row i
    codes = qw.codes()
    i, c = 17, 3
    ref = sum(int(codes[8 * c + AWQ_ORDER[j], i]) << (4 * j) for j in range(8))
    assert int(awq["qweight"][i, c]) & 0xFFFFFFFF == ref
    # a checkpoint written in that format, read back and dequantized: the same matrix
    save_file({f"model.layers.0.mlp.down_proj.{k}": v for k, v in awq.items()},
              str(tmp_path / "awq.safetensors"))
    t = load_file(str(tmp_path / "awq.safetensors"))
    back = from_awq_gemm("model.layers.0.mlp.down_proj", {k.rsplit(".", 1)[1]: v for k, v in t.items()})
    assert torch.equal(back.qweight, qw.qweight) and torch.equal(back.zeros, qw.zeros)
    ref_deq = ((codes.double() - qw.zeros.double().repeat_interleave(128, 1))
               * qw.scales.double().repeat_interleave(128, 1))
    assert torch.allclose(back.dequantize(torch.float64), ref_deq)
    assert (back.dequantize() - w).abs().max() < qw.scales.float().max()


def test_bad_inputs_name_the_tensor():
    with pytest.raises(ModelError, match=r"layers\.3\.o_proj.*multiple of the group size 128"):
        quantize_weight(torch.randn(64, 200), 128, name="layers.3.o_proj")
    qw = quantize_weight(torch.randn(16, 128), 128)
    awq = to_awq_gemm(qw)
    eight_bit = {**awq, "qweight": torch.zeros(128, 4, dtype=torch.int32)}  # 8-bit: 4 per word
    with pytest.raises(ModelError, match=r"lin\.qweight.*4 bits per weight"):
        from_awq_gemm("lin", eight_bit)
    with pytest.raises(ModelError, match=r"lin\.qzeros is missing"):
        from_awq_gemm("lin", {"qweight": awq["qweight"], "scales": awq["scales"]})
    with pytest.raises(ModelError, match=r"lin\.scales.*q_group_size 64"):
        from_awq_gemm("lin", awq, group_size=64)
    with pytest.raises(ModelError, match=r"int32"):
        from_awq_gemm("lin", {**awq, "qweight": awq["qweight"].float()})


def test_autoawq_packer_agrees_when_importable():
    awq_mod = pytest.importorskip("awq.modules.linear.gemm", reason="autoawq is not installed")
    gen = torch.Generator().manual_seed(4)
    lin = torch.nn.Linear(256, 64, bias=False)
    lin.weight.data = torch.randn(64, 256, generator=gen) * 0.02
    qw = quantize_weight(lin.weight.data, 128)
    lin.weight.data = qw.dequantize()  # on the grid, as AutoAWQ passes it (pseudo-quantized before packing)
    ours = to_awq_gemm(qw)
    scales = qw.scales.t().contiguous()
    zeros = qw.zeros.t().contiguous().to(torch.int32)
    theirs = awq_mod.WQLinear_GEMM.from_linear(lin, 4, 128, False, scales, zeros)
    assert torch.equal(theirs.qweight, ours["qweight"]) and torch.equal(theirs.qzeros, ours["qzeros"])


def test_checks_skip_gpu_targets_without_metrics():
    from module0_profiling.targets import BenchResult
    from phase5_quantization.checks import TARGETS

    res = BenchResult(metrics={"p5_1_awq_top1_drop_rel": 0.01, "p5_1_awq_ppl_over_rtn": 0.99})
    res.skip("p5_2_kernel_vs_linear_m1", "needs a CUDA GPU")
    status = {t.id: t.evaluate(res).status for t in TARGETS}
    assert status["P5.1"] == "PASS" and status["P5.2"] == "SKIP"
    res.metrics["p5_1_awq_ppl_over_rtn"] = 1.02
    assert TARGETS[0].evaluate(res).status == "FAIL"


def test_autoawq_checkpoint_directory_round_trip(tmp_path):
    """A whole checkpoint written in AutoAWQ's GEMM format (HF names, q/k/v and gate/up split,
    quantization_config) from a known INT4 model loads back into the same fused model; other formats and bit
    widths are refused."""
    import json

    from phase0_prototype.config import TINY
    from phase0_prototype.sources import LoadedModel
    from phase0_prototype.tokenizer import load_tokenizer
    from phase0_prototype.weights import random_state_dict
    from phase5_quantization import framework
    from phase5_quantization.awq_checkpoint import load_awq_gemm, save_awq_gemm
    from phase5_quantization.model import LinearLlama

    cfg = TINY.with_(intermediate_size=256, num_hidden_layers=2)
    m = LoadedModel("t", cfg, random_state_dict(cfg, seed=5), load_tokenizer(None, vocab_size=cfg.vocab_size),
                    None)
    q = framework.quantize(LinearLlama.from_loaded(m))
    path = save_awq_gemm(q, tmp_path / "awq")
    from safetensors.torch import load_file

    names = load_file(str(path / "model.safetensors")).keys()
    assert "model.layers.1.self_attn.k_proj.qzeros" in names and "model.layers.0.mlp.up_proj.scales" in names
    back = load_awq_gemm(path)
    ids = torch.randint(3, cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(back.forward_logits(ids), q.forward_logits(ids))
    hf = json.loads((path / "config.json").read_text())
    hf8 = dict(hf, quantization_config=dict(hf["quantization_config"], bits=8))
    (path / "config.json").write_text(json.dumps(hf8))
    with pytest.raises(ModelError, match="8 bits.*expected AutoAWQ 'awq', 4 bits"):
        load_awq_gemm(path)
    with pytest.raises(ModelError, match="looks like an AutoAWQ checkpoint: use .*load_awq_gemm"):
        LinearLlama.load(path)
