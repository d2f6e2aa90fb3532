"""llama.cpp Q4_1 blocks as phase 5 INT4 (``gguf_int4``): the weights of the gguf package's own dequantization,
the logits and greedy tokens of the float-dequantized model, and one-line refusals of other tensor types.

Oracles: ``gguf.quants.dequantize`` (llama.cpp's ``d·q + m``) on fresh random blocks and on SmolLM2's tensors,
with the Q/K rows put back by an index formula written here; phase 0's ``load_gguf`` at fp32 (itself checked
against transformers by phase 0's tests) for logits and tokens. The weights agree to fp32 rounding (the zero-point
``−m/d`` is a float32), bounded per block by 2⁻¹⁸ · (16·d + |m|). SmolLM2 is fetched once into the user cache
(skipped when offline), as phase 0's GGUF tests do; the random-block and refusal tests need no download.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.gguf_int4 import PROJECTIONS, load_gguf_int4, q4_1_weight
from phase5_quantization.model import LinearLlama, QuantLinear


def q4_1_reference(blocks: np.ndarray) -> torch.Tensor:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return torch.from_numpy(dequantize(blocks, GGMLQuantizationType.Q4_1).astype(np.float32))


def rounding_bound(blocks: np.ndarray, cols: int) -> torch.Tensor:
    """Per weight: 2⁻¹⁸ · (16·d + |m|) of its block (fp32 rounding of ``(q + m/d)·d``, with margin)."""
    b = np.array(blocks).reshape(blocks.shape[0], -1, 20)
    d = np.abs(b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
    m = np.abs(b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    return torch.from_numpy(np.repeat(2.0 ** -18 * (16 * d + m), 32, axis=1)[:, :cols])


def test_random_blocks_equal_gguf_dequantization():
    rng = np.random.default_rng()
    rows, n_blocks = 24, 12
    d = (np.abs(rng.normal(0, 0.02, (rows, n_blocks))) * (rng.random((rows, n_blocks)) > 0.1)).astype(np.float16)
    m = (-15 * d.astype(np.float32) * rng.random((rows, n_blocks)) + rng.normal(0, 0.01, (rows, n_blocks))
         * (d == 0)).astype(np.float16)  # d = 0 blocks: all weights m, of either sign
    qs = rng.integers(0, 256, (rows, n_blocks, 16), dtype=np.uint8)
    blocks = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8), qs], -1).reshape(rows, -1)
    qw = q4_1_weight(blocks, (rows, 32 * n_blocks))
    assert qw.group_size == 32 and qw.scales.dtype == torch.float16 and qw.qweight.dtype == torch.int32
    assert torch.equal(qw.scales[torch.from_numpy(d != 0)], torch.from_numpy(d[d != 0]))
    assert ((qw.dequantize() - q4_1_reference(blocks)).abs() <= rounding_bound(blocks, 32 * n_blocks)).all()


def write_gguf(path, kind: str) -> None:
    """A one-tensor GGUF whose attn_q is ``kind`` (enough for the type check, which runs before anything else)."""
    import gguf

    w = np.random.default_rng().normal(size=(64, 64)).astype(np.float32)
    writer = gguf.GGUFWriter(str(path), "llama")
    qtype = gguf.GGMLQuantizationType[kind]
    data = gguf.quants.quantize(w, qtype) if kind != "F16" else w.astype(np.float16)
    writer.add_tensor("blk.0.attn_q.weight", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", ["Q8_0", "F16"])
def test_other_tensor_types_refused_in_one_line(tmp_path, kind):
    path = tmp_path / f"tiny-{kind}.gguf"
    write_gguf(path, kind)
    with pytest.raises(ModelError, match=f"blk.0.attn_q.weight is {kind}, not Q4_1") as e:
        load_gguf_int4(path)
    assert "\n" not in str(e.value) and "--quant rtn|awq|gptq" in str(e.value)


# ------------------------------------------------------------------------------------------- SmolLM2 (cached)
@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, two_threads):
    path = smollm2_gguf
    model, quantized = load_gguf_int4(path)  # model: phase 0's load_gguf at fp32, the float reference
    return path, model, quantized, LinearLlama.from_loaded(model)


def hf_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's Q/K row order back to HF's: in each head, HF row r < half is file row 2r, and
    r ≥ half is file row 2(r − half) + 1."""
    head_dim = w.shape[0] // heads
    half = head_dim // 2
    order = [h * head_dim + (2 * r if r < half else 2 * (r - half) + 1) for h in range(heads) for r in range(head_dim)]
    return w[order]


def test_smollm2_weights_equal_gguf_dequantization(smollm2):
    import gguf

    path, model, quantized, _ = smollm2
    cfg = model.config
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    for layer in (0, cfg.num_hidden_layers - 1):
        refs, bounds = {}, {}
        for name in PROJECTIONS:
            data = np.asarray(tensors[f"blk.{layer}.{name}.weight"].data)
            ref, bound = q4_1_reference(data), rounding_bound(data, data.shape[1] // 20 * 32)
            refs[name], bounds[name] = ((hf_rows(ref, heads[name]), hf_rows(bound, heads[name])) if name in heads
                                        else (ref, bound))
        fused = {"qkv_proj": ("attn_q", "attn_k", "attn_v"), "o_proj": ("attn_output",),
                 "gate_up_proj": ("ffn_gate", "ffn_up"), "down_proj": ("ffn_down",)}
        for fused_name, parts in fused.items():
            lin = quantized.linears[layer][fused_name]
            assert isinstance(lin, QuantLinear) and lin.group_size == 32
            diff = (lin.dense() - torch.cat([refs[p] for p in parts])).abs()
            assert (diff <= torch.cat([bounds[p] for p in parts])).all(), (layer, fused_name)


def test_smollm2_int4_logits_equal_float_model(smollm2):
    _, model, quantized, base = smollm2
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    got, want = quantized.forward_logits(ids), base.forward_logits(ids)  # QuantLinear: dequantize + F.linear
    assert (got - want).abs().max() <= 1e-3, float((got - want).abs().max())


def test_smollm2_int4_engine_greedy_equals_float_model(smollm2):
    """Six greedy tokens of a fresh chat prompt from phase 5's engine (``Int4Engine``: phase 0's engine over the
    imported INT4 layers, on a CPU their dequantize + ``F.linear`` path) equal the float model's."""
    from phase5_quantization.integration import Int4Engine

    _, model, quantized, base = smollm2
    topic = np.random.default_rng().choice(["rivers", "bread", "winter", "libraries", "bicycles", "candles"])
    prompt = model.tokenizer.encode_chat([{"role": "user", "content": f"Write one sentence about {topic}."}])
    engine = Int4Engine(model, quantized, compile=False)
    got = engine.generate(torch.tensor([prompt]), 6, stop_on_eos=False).tokens[0].tolist()
    assert got == base.greedy(prompt, 6)
