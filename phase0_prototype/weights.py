"""Llama weights: safetensors checkpoints (single file or sharded index) and seeded random weights.

Two forms of the same numbers:

- the **state dict** with Hugging Face names (``model.layers.3.self_attn.q_proj.weight``), what a
  checkpoint stores and what the framework reads, one tensor per projection;
- ``LlamaWeights``, the fused form the solution and later phases run (``fuse``). Per layer:

  ==================  =====================================  ==========================================
  field               shape                                  rows
  ==================  =====================================  ==========================================
  ``input_norm``      [hidden]                               RMSNorm before attention
  ``qkv_proj``        [(n_heads + 2·n_kv_heads)·head_dim,    q rows [0, q_size), k rows [q_size,
                       hidden]                               q_size+kv_size), v rows after
  ``o_proj``          [hidden, n_heads·head_dim]
  ``post_norm``       [hidden]                               RMSNorm before the MLP
  ``gate_up_proj``    [2·intermediate, hidden]               gate rows [0, I), up rows [I, 2I)
  ``down_proj``       [hidden, intermediate]
  ==================  =====================================  ==========================================

  Fusing q/k/v (and gate/up) turns three matrix-vector products that each read the activation into one
  that reads it once and launches one kernel: at batch 1 the launch count, not the FLOPs, is the cost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from phase0_prototype.config import LlamaConfig
from phase0_prototype.errors import ModelError, first_line, read_json, require

PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}: choose one of bf16, fp16, fp32")
    return DTYPES[name]


def hf_names(config: LlamaConfig) -> list[str]:
    """Every tensor name a Llama checkpoint must hold (lm_head absent when tied)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{n}.weight" for n in PROJ_NAMES]
        names += [p + f"mlp.{n}.weight" for n in MLP_NAMES]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {}
    for name in hf_names(config):
        if "norm" in name:
            shapes[name] = (h,)
        elif "embed_tokens" in name or name == "lm_head.weight":
            shapes[name] = (v, h)
        elif "q_proj" in name:
            shapes[name] = (config.q_size, h)
        elif "k_proj" in name or "v_proj" in name:
            shapes[name] = (config.kv_size, h)
        elif "o_proj" in name:
            shapes[name] = (h, config.q_size)
        elif "down_proj" in name:
            shapes[name] = (h, i)
        else:  # gate_proj, up_proj
            shapes[name] = (i, h)
    return shapes


def read_tensors(file: Path, device: str | torch.device = "cpu", names: set[str] | None = None) -> dict:
    """The tensors of one safetensors ``file`` (those in ``names`` when given); a truncated or garbage file
    is one ``ModelError``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            return {name: f.get_tensor(name) for name in f.keys() if names is None or name in names}
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{file} is not a readable safetensors file ({first_line(e)}): it is truncated or "
                         "corrupt; re-download or re-convert the checkpoint") from None


def shard_files(path: Path) -> list[Path]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` lists (kept inside ``path``)."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        require((path / "model.safetensors").is_file(), path, "no model.safetensors or model.safetensors"
                ".index.json: convert the checkpoint to safetensors or pass random:tinyllama")
        return [path / "model.safetensors"]
    weight_map = read_json(index).get("weight_map")
    require(isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values()), index,
            "has no weight_map of tensor name -> shard file: re-download the checkpoint")
    root = Path(os.path.abspath(path))
    files = []
    for name in sorted(set(weight_map.values())):
        # Normalised, not resolved: a hub snapshot's shards are symlinks into its blob store (legitimate).
        file = Path(os.path.normpath(root / name))
        require(file.is_relative_to(root) and file != root, index,
                f"shard {name!r} lies outside the model directory: refusing to read it; fix the weight_map")
        require(file.is_file(), index, f"shard {name} is missing from {path}: re-download the checkpoint")
        files.append(file)
    return files


def load_safetensors_dir(path: str | Path, config: LlamaConfig, dtype: torch.dtype,
                         device: str | torch.device) -> dict:
    """Read ``model.safetensors`` or the shards listed in ``model.safetensors.index.json``; each tensor's
    name, shape and (floating-point) dtype is checked against ``config``."""
    path = Path(path)
    shapes = hf_shapes(config)
    state: dict[str, torch.Tensor] = {}
    for file in shard_files(path):
        for name, tensor in read_tensors(file, device, set(shapes)).items():
            require(tensor.is_floating_point(), file, f"tensor {name} is {tensor.dtype}, not floating point: "
                    "quantized checkpoints need their own loader (AutoAWQ: phase5 load_awq_gemm)")
            require(tuple(tensor.shape) == shapes[name], file, f"tensor {name} has shape "
                    f"{tuple(tensor.shape)} but config.json implies {shapes[name]}: the weights belong to "
                    "another config; re-download the checkpoint")
            state[name] = tensor.to(dtype)
    return complete_state(state, shapes, config, path, "is this a complete Llama checkpoint? re-download it")


def complete_state(state: dict, shapes: dict, config: LlamaConfig, source, fix: str) -> dict:
    """``state`` with every tensor of ``shapes`` (else one ``ModelError`` naming ``source`` and ``fix``), and the
    lm_head tied to the embedding when the config says so."""
    missing = sorted(shapes.keys() - state.keys())
    require(not missing, source, f"{len(missing)} tensors missing (first: {missing[0] if missing else ''}): {fix}")
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def random_state_dict(config: LlamaConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", std: float = 0.02) -> dict:
    """Seeded random weights with a checkpoint's names: the shapes are real, the numbers are not.

    Projections and embeddings ~ N(0, std²) (transformers' ``initializer_range``). Norm weights are
    1 + N(0, 0.1²) rather than exactly 1 so that a test would notice a norm weight applied wrongly.
    Drawn in fp32 then cast, so the bf16 model is the fp32 model rounded.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, shape in hf_shapes(config).items():
        w = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        w = 1.0 + 0.1 * w if "norm" in name else w * std
        state[name] = w.to(dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


@dataclass
class LayerWeights:
    """One decoder layer in fused form (layout in the module docstring)."""

    input_norm: torch.Tensor
    qkv_proj: torch.Tensor
    o_proj: torch.Tensor
    post_norm: torch.Tensor
    gate_up_proj: torch.Tensor
    down_proj: torch.Tensor


@dataclass
class LlamaWeights:
    config: LlamaConfig
    embed_tokens: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden]; the same tensor as embed_tokens when tied

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device


def fuse(state: dict, config: LlamaConfig) -> LlamaWeights:
    """Concatenate q/k/v and gate/up per layer (new tensors; the state dict is left as it was)."""
    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            input_norm=state[p + "input_layernorm.weight"],
            qkv_proj=torch.cat([state[p + f"self_attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]),
            o_proj=state[p + "self_attn.o_proj.weight"],
            post_norm=state[p + "post_attention_layernorm.weight"],
            gate_up_proj=torch.cat([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]]),
            down_proj=state[p + "mlp.down_proj.weight"],
        ))
    return LlamaWeights(config, state["model.embed_tokens.weight"], layers, state["model.norm.weight"],
                        state["lm_head.weight"])


def decode_bytes_per_token(config: LlamaConfig, dtype: torch.dtype, context: int, batch: int = 1) -> float:
    """Bytes one decode step must read: every weight but the embedding table (one row per sequence),
    plus the K and V of ``context`` cached positions per sequence (gpt-fast's "achieved GB/s")."""
    elem = torch.finfo(dtype).bits // 8
    # An untied embedding table is read one row per sequence; a tied one is read whole as lm_head.
    weights = config.num_parameters() - (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)
    kv = 2 * config.num_hidden_layers * config.kv_size * context * batch
    return float((weights + batch * config.hidden_size + kv) * elem)


def save_hf_dir(state: dict, config: LlamaConfig, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (e.g. a random model, for other tools to read)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    tensors = {k: v.contiguous() for k, v in state.items()
               if not (config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, str(path / "model.safetensors"))
    return path
