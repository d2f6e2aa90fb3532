"""Whole AutoAWQ checkpoints (``quant_method: awq``, GEMM version) in and out of ``LinearLlama``.

An AutoAWQ Llama directory holds ``config.json`` with a ``quantization_config`` (``bits 4``, ``group_size``,
``zero_point``, ``version gemm``), and safetensors with HF names: ``…q_proj.qweight/qzeros/scales`` per
projection (``packing.from_awq_gemm`` reads one) and the float tensors — embeddings, norms (AWQ has folded
its scales into them), ``lm_head``. ``load_awq_gemm`` fuses q/k/v and gate/up into phase 0's layout by
stacking rows (codes, scales and zero-points are per output row, so stacking is exact);
``save_awq_gemm`` splits them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from phase0_prototype.config import LlamaConfig
from phase0_prototype.errors import ModelError, read_json, require
from phase0_prototype.weights import hf_shapes, read_tensors
from phase5_quantization.linear import DenseLinear, QuantLinear
from phase5_quantization.model import LinearLlama
from phase5_quantization.packing import PACK, QuantizedWeight, from_awq_gemm, to_awq_gemm

FUSED = {"qkv_proj": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o_proj": ("self_attn", ("o_proj",)),
         "gate_up_proj": ("mlp", ("gate_proj", "up_proj")), "down_proj": ("mlp", ("down_proj",))}


def stack_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    return QuantizedWeight(torch.cat([p.qweight for p in parts]), torch.cat([p.scales for p in parts]),
                           torch.cat([p.zeros for p in parts]), parts[0].group_size)


def split_rows(qw: QuantizedWeight, sizes: list[int]) -> list[QuantizedWeight]:
    out, start = [], 0
    for n in sizes:
        out.append(QuantizedWeight(qw.qweight[start:start + n], qw.scales[start:start + n], qw.zeros[start:start + n],
                                   qw.group_size))
        start += n
    return out


def _part_sizes(config: LlamaConfig, fused: str) -> list[int]:
    return {"qkv_proj": [config.q_size, config.kv_size, config.kv_size], "o_proj": [config.hidden_size],
            "gate_up_proj": [config.intermediate_size] * 2, "down_proj": [config.hidden_size]}[fused]


def check_quantization_config(path: Path, qc: dict | None) -> int:
    """The group size of an AutoAWQ ``quantization_config``; one clear error for anything else."""
    file = path / "config.json"
    require(qc, file, "has no quantization_config: not an AutoAWQ checkpoint")
    require(isinstance(qc, dict), file, "quantization_config is not an object {...}: fix it or re-download")
    method, bits = qc.get("quant_method"), qc.get("bits", qc.get("w_bit"))
    version, zero_point = str(qc.get("version", "gemm")).lower(), qc.get("zero_point", True)
    require(method == "awq" and bits == 4 and version == "gemm" and zero_point, file,
            f"quant_method {method!r}, {bits} bits, version {version!r}, zero_point {zero_point}; "
            "expected AutoAWQ 'awq', 4 bits, 'gemm', zero_point true")
    group = qc.get("group_size", qc.get("q_group_size", 128))
    require(isinstance(group, int) and not isinstance(group, bool) and group > 0 and group % PACK == 0, file,
            f"quantization_config group_size={group!r} must be a positive multiple of {PACK}: fix it or "
            "re-download the checkpoint")
    return group


def from_awq_tensors(tensors: dict[str, torch.Tensor], config: LlamaConfig, group_size: int = 128) -> LinearLlama:
    """HF-named AutoAWQ tensors -> ``LinearLlama`` (phase 0's fused layout, INT4 projections)."""
    float_shapes = hf_shapes(config)  # embeddings, norms, lm_head (the projections are INT4 here)

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ModelError(f"tensor {name} is missing from the AutoAWQ checkpoint: re-download or "
                             "re-save it")
        t = tensors[name]
        if name in float_shapes and (not t.is_floating_point() or tuple(t.shape) != float_shapes[name]):
            raise ModelError(f"tensor {name} is {t.dtype} {tuple(t.shape)}: expected floating point "
                             f"{float_shapes[name]} from config.json; re-download or re-save the checkpoint")
        return t

    norms, linears = [], []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        norms.append((get(p + "input_layernorm.weight"), get(p + "post_attention_layernorm.weight")))
        layer = {}
        for fused, (block, parts) in FUSED.items():
            qws = [from_awq_gemm(p + f"{block}.{n}", {k: get(p + f"{block}.{n}.{k}") for k in ("qweight", "qzeros", "scales")},
                                 group_size) for n in parts]
            layer[fused] = QuantLinear(stack_rows(qws))
        linears.append(layer)
    embed = get("model.embed_tokens.weight")
    untied = not config.tie_word_embeddings and "lm_head.weight" in tensors
    head = DenseLinear(get("lm_head.weight") if untied else embed)
    return LinearLlama(config, embed, norms, linears, get("model.norm.weight"), head, "autoawq")


def load_awq_gemm(path: str | Path) -> LinearLlama:
    """An AutoAWQ GEMM checkpoint directory -> ``LinearLlama``; a corrupt one is one ``ModelError``."""
    path = Path(path)
    file = path / "config.json"
    require(file.is_file(), path, "has no config.json: pass an AutoAWQ checkpoint directory")
    hf = read_json(file)
    group = check_quantization_config(path, hf.get("quantization_config"))
    config = LlamaConfig.from_hf_dict(hf, source=file)
    in_features = sorted({config.hidden_size, config.q_size, config.intermediate_size})
    require(all(n % group == 0 for n in in_features), file, f"quantization_config group_size={group} "
            f"does not divide the projections' in_features {in_features}: fix it or re-quantize")
    files = sorted(path.glob("*.safetensors"))
    require(files, path, "holds no .safetensors files: re-download the checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(read_tensors(f))
    try:
        return from_awq_tensors(tensors, config, group)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None


def save_awq_gemm(model: LinearLlama, path: str | Path) -> Path:
    """``model`` (INT4 projections) as an AutoAWQ GEMM checkpoint directory."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    t = {"model.embed_tokens.weight": model.embed_tokens, "model.norm.weight": model.norm}
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = model.lm_head.dense()
    groups = set()
    for i, (layer, (n1, n2)) in enumerate(zip(model.linears, model.norms, strict=True)):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"], t[p + "post_attention_layernorm.weight"] = n1, n2
        for fused, (block, parts) in FUSED.items():
            lin = layer[fused]
            if not isinstance(lin, QuantLinear):
                raise ModelError(f"layers.{i}.{fused} is not INT4: AutoAWQ checkpoints quantize every projection")
            groups.add(lin.qw.group_size)
            for n, qw in zip(parts, split_rows(lin.qw, _part_sizes(cfg, fused)), strict=True):
                for k, v in to_awq_gemm(qw).items():
                    t[p + f"{block}.{n}.{k}"] = v
    save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(path / "model.safetensors"))
    hf = dict(cfg.to_hf_dict(), quantization_config={"quant_method": "awq", "bits": 4, "group_size": groups.pop(),
                                                     "zero_point": True, "version": "gemm"})
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    return path
