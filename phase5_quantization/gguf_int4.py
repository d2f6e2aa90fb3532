"""llama.cpp's Q4_1 blocks straight into phase 5's INT4 layout: the codes are kept, never dequantized first.

Q4_1 stores a block of 32 weights of a row as an fp16 scale ``d``, an fp16 minimum ``m`` and 32 four-bit
codes ``q`` (byte ``j`` holds weight ``j`` in its low nibble, ``j + 16`` in its high one): ``w = d·q + m``,
20 bytes per 32 weights (5.0 bits). Phase 5 reads ``w = s·(q − z)`` per (row, group): group 32, ``s = d`` and
``z = −m/d`` give the same weights with the same codes. Phase 5's zero-points are integers (uint8 0..15,
``packing``) and ``−m/d`` is not (fractional in 99.7 % of SmolLM2's first q_proj blocks): rounding it would move every
weight of a block by up to ``d/2``. So the import stores ``z`` as float32, which ``packing.dequantize`` reads
as it is: the weights equal ``d·q + m`` to fp32 rounding. A block with ``d = 0`` (all weights ``m``) becomes
codes 0, ``s = |m|`` (1 when ``m = 0``) and ``z = −m/s``: exact as well.

Limits: these layers run ``QuantLinear``'s dequantize + ``F.linear`` (CPU or GPU). The W4A16 kernels take
groups of 128 and uint8 zero-points (``kernels.layout``), so ``Int4Engine`` on CUDA refuses them, and
``LinearLlama.load`` refuses float zero-points. Only the projections must be Q4_1; embeddings, norms, config
and tokenizer come from phase 0's ``load_gguf``, whose model also holds the float-dequantized projections
(the reference the tests and the bench compare with: ~4 bytes per weight beside the INT4 copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from phase0_prototype.errors import ModelError, require
from phase0_prototype.gguf_model import LAYER_NAMES, load_gguf, unpermute_rope_rows
from phase0_prototype.sources import LoadedModel
from phase5_quantization.model import DenseLinear, LinearLlama, QuantLinear
from phase5_quantization.packing import QuantizedWeight

Q4_1_BLOCK = 32  # weights per block
Q4_1_BYTES = 20  # fp16 d, fp16 m, 16 bytes of codes
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def q4_1_weight(blocks: np.ndarray, shape: tuple[int, int]) -> QuantizedWeight:
    """Q4_1 bytes of a ``[out, in]`` matrix (``[out, in/32·20]`` uint8, rows in file order) -> group-32
    ``QuantizedWeight`` with float32 zero-points (module docstring)."""
    out, inp = shape
    b = torch.from_numpy(np.array(blocks, dtype=np.uint8)).view(out, inp // Q4_1_BLOCK, Q4_1_BYTES)  # a copy
    d, m = b[..., 0:2].contiguous().view(torch.float16)[..., 0], b[..., 2:4].contiguous().view(torch.float16)[..., 0]
    qs = b[..., 4:]
    codes = torch.cat([qs & 0xF, qs >> 4], dim=-1)  # [out, blocks, 32]: low nibbles first, then high
    flat = d == 0
    codes[flat] = 0  # w = m whatever the codes say
    scales = torch.where(flat, torch.where(m == 0, torch.ones_like(m), m.abs()), d)
    zeros = -m.float() / scales.float()
    codes = codes.reshape(out, inp)
    # packing.pack_int4's layout (column 8k + j in bits 4j..4j+3 of word k), built bytewise: two codes per byte,
    # four bytes per little-endian int32 (pack_int4's int64 arithmetic costs ~0.1 s per matrix)
    words = (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous().view(torch.int32)
    return QuantizedWeight(words, scales.contiguous(), zeros.contiguous(), Q4_1_BLOCK)


def _projection_tensors(path: Path) -> dict[str, object]:
    """``blk.{i}.{name}.weight`` -> the reader's tensor, each checked to be Q4_1 (one error otherwise)."""
    from phase0_prototype.gguf_model import _open

    reader = _open(path)
    found = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in PROJECTIONS:
            kind = tensor.tensor_type.name
            if kind != "Q4_1":
                raise ModelError(f"{path}: tensor {tensor.name} is {kind}, not Q4_1: phase 5 imports llama.cpp's "
                                 "Q4_1 blocks only; use a Q4_1 GGUF (llama-quantize ... Q4_1), or load this one "
                                 "as floats and quantize it with --quant rtn|awq|gptq")
            found[tensor.name] = tensor
    return found


def _q4_1(tensors: dict, layer: int, name: str, rows: int, cols: int, heads: int | None, path: Path) -> QuantizedWeight:
    key = f"blk.{layer}.{name}.weight"
    require(key in tensors, path, f"has no {key}: the file is incomplete; download it again")
    blocks = np.asarray(tensors[key].data)
    require(blocks.shape == (rows, cols // Q4_1_BLOCK * Q4_1_BYTES), path, f"tensor {key} holds {blocks.shape} "
            f"bytes but the metadata implies [{rows}, {cols}]: the file is inconsistent; re-convert it")
    if heads is not None:  # llama.cpp's Q/K row order: whole rows move, so each row keeps its blocks
        blocks = unpermute_rope_rows(blocks, heads)
    return q4_1_weight(blocks, (rows, cols))


def _cat_rows(weights: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack matrices along the output rows (``weights.fuse``'s qkv / gate_up): rows keep their groups."""
    return QuantizedWeight(*(torch.cat([getattr(w, f) for w in weights]) for f in ("qweight", "scales", "zeros")),
                           weights[0].group_size)


def load_gguf_int4(path: str | Path, *, dtype: str | torch.dtype = "fp32",
                   device: str | torch.device = "cpu") -> tuple[LoadedModel, LinearLlama]:
    """``(model, quantized)``: phase 0's ``load_gguf`` of ``path`` (tokenizer, config, float embeddings and
    norms in ``dtype``) and a ``LinearLlama`` whose projections are the file's Q4_1 blocks (``Int4Engine``'s
    and the accuracy table's input). Any projection not Q4_1 is one ``ModelError``."""
    path = Path(path).expanduser()
    require(path.is_file(), path, "does not exist: pass an existing .gguf file")
    tensors = _projection_tensors(path)
    model = load_gguf(path, dtype=dtype, device=device)
    cfg = model.config
    h, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = {"attn_q": (cfg.q_size, h, cfg.num_attention_heads), "attn_k": (cfg.kv_size, h, cfg.num_key_value_heads),
              "attn_v": (cfg.kv_size, h, None), "attn_output": (h, cfg.q_size, None),
              "ffn_gate": (inter, h, None), "ffn_up": (inter, h, None), "ffn_down": (h, inter, None)}
    linears = []
    for i in range(cfg.num_hidden_layers):
        q = {name: _q4_1(tensors, i, name, *shapes[name], path) for name in PROJECTIONS}
        layer = {"qkv_proj": _cat_rows([q["attn_q"], q["attn_k"], q["attn_v"]]), "o_proj": q["attn_output"],
                 "gate_up_proj": _cat_rows([q["ffn_gate"], q["ffn_up"]]), "down_proj": q["ffn_down"]}
        linears.append({n: QuantLinear(QuantizedWeight(*(t.to(device) for t in (w.qweight, w.scales, w.zeros)),
                                                       w.group_size)) for n, w in layer.items()})
    s = model.state
    norms = [(s[f"model.layers.{i}.{LAYER_NAMES['attn_norm']}.weight"],
              s[f"model.layers.{i}.{LAYER_NAMES['ffn_norm']}.weight"]) for i in range(cfg.num_hidden_layers)]
    embed = s["model.embed_tokens.weight"]
    head = s["lm_head.weight"]
    quantized = LinearLlama(cfg, embed, norms, linears, s["model.norm.weight"],
                            DenseLinear(embed if head is embed else head), "gguf-q4_1", {"source": path.name})
    return model, quantized
