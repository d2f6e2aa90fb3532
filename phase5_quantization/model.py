"""``QuantLinear`` and a Llama whose projections are INT4: phase 0's fused layout with the matrices swapped out.

``LinearLlama`` holds phase 0's fused weights (``weights.fuse``: ``qkv_proj``, ``o_proj``, ``gate_up_proj``,
``down_proj`` per layer) as *linear objects*: ``DenseLinear`` (the float matrix, the baseline) or ``QuantLinear``
(INT4 codes + group scales/zero-points). Embeddings, norms and (by default) ``lm_head`` stay in float:
they are a small share of the bytes here and the tied embedding is both the first and the last layer.

``QuantLinear`` on a CPU dequantizes the whole matrix on every call and runs ``F.linear``: correct, and
slower than the float model (it reads 4-bit codes *and* writes a float copy). On a GPU the Triton W4A16
kernel (``kernels/``) dequantizes in registers instead, so only the 4-bit codes cross memory.

The forward is phase 0's framework forward (no KV cache), written over the fused layout, with an
``observer(layer, linear_name, input)`` hook the quantizers use to collect calibration activations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from phase0_prototype.config import LlamaConfig
from phase0_prototype.errors import ModelError
from phase0_prototype.model import apply_rope, repeat_kv, rms_norm, rope_cache, swiglu
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import fuse
from phase5_quantization.packing import QuantizedWeight

LINEAR_NAMES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
Observer = Callable[[int, str, torch.Tensor], None]
FORMAT = "titaninfer-int4-v1"


class DenseLinear:
    """A float matrix ``[out, in]`` behind the same call as ``QuantLinear``."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))

    def dense(self) -> torch.Tensor:
        return self.weight

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class QuantLinear:
    """``y = x · dequant(W)ᵀ`` with W stored as INT4 (``packing.QuantizedWeight``)."""

    def __init__(self, qw: QuantizedWeight):
        self.qw = qw

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qw.dequantize(x.dtype))

    def dense(self) -> torch.Tensor:
        return self.qw.dequantize(torch.float32)

    def nbytes(self) -> int:
        return self.qw.nbytes()


@dataclass
class LinearLlama:
    config: LlamaConfig
    embed_tokens: torch.Tensor
    norms: list[tuple[torch.Tensor, torch.Tensor]]  # (input_norm, post_norm) per layer
    linears: list[dict[str, object]]  # per layer: LINEAR_NAMES -> DenseLinear | QuantLinear
    norm: torch.Tensor
    lm_head: object
    method: str = "fp"
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_loaded(cls, model: LoadedModel, dtype: torch.dtype = torch.float32) -> "LinearLlama":
        w = fuse(model.state, model.config)
        layers = [{n: DenseLinear(getattr(l, n).to(dtype)) for n in LINEAR_NAMES} for l in w.layers]
        norms = [(l.input_norm.to(dtype), l.post_norm.to(dtype)) for l in w.layers]
        return cls(model.config, w.embed_tokens.to(dtype), norms, layers, w.norm.to(dtype), DenseLinear(w.lm_head.to(dtype)))

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    def linear_bytes(self) -> int:
        return sum(lin.nbytes() for layer in self.linears for lin in layer.values())

    # ------------------------------------------------------------------------------------ forward
    @torch.inference_mode()
    def forward_logits(self, tokens: torch.Tensor, observer: Observer | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` (fp32) of fresh sequences ``[B, T]``."""
        cfg = self.config
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        B, T = tokens.shape
        if T > cfg.max_position_embeddings:
            raise ModelError(f"{T} tokens exceed the model's {cfg.max_position_embeddings} positions")
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos, sin = rope_cache(cfg, T, tokens.device)
        positions = torch.arange(T, device=tokens.device).expand(B, T)
        see = observer or (lambda *a: None)
        x = self.embed_tokens[tokens]
        for i, (lin, (n1, n2)) in enumerate(zip(self.linears, self.norms)):
            h = rms_norm(x, n1, cfg.rms_norm_eps)
            see(i, "qkv_proj", h)
            q, k, v = lin["qkv_proj"](h).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
            q, k = apply_rope(q.view(B, T, Hq, D), k.view(B, T, Hkv, D), cos, sin, positions)
            g = Hq // Hkv
            attn = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(k.transpose(1, 2), g),
                                                  repeat_kv(v.view(B, T, Hkv, D).transpose(1, 2), g), is_causal=True)
            attn = attn.transpose(1, 2).reshape(B, T, Hq * D)
            see(i, "o_proj", attn)
            x = x + lin["o_proj"](attn)
            h = rms_norm(x, n2, cfg.rms_norm_eps)
            see(i, "gate_up_proj", h)
            gate, up = lin["gate_up_proj"](h).chunk(2, dim=-1)
            act = swiglu(gate, up)
            see(i, "down_proj", act)
            x = x + lin["down_proj"](act)
        return self.lm_head(rms_norm(x, self.norm, cfg.rms_norm_eps)).float()

    @torch.inference_mode()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation by recomputation (small models, tests)."""
        ids = list(prompt_ids)
        for _ in range(max_new_tokens):
            ids.append(int(self.forward_logits(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt_ids):]

    # ------------------------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """``model.safetensors`` (float tensors + INT4 triples per linear) + ``quant_config.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        t = {"embed_tokens": self.embed_tokens, "norm": self.norm}
        groups = set()
        if isinstance(self.lm_head, DenseLinear) and self.lm_head.weight is not self.embed_tokens:
            t["lm_head"] = self.lm_head.weight
        for i, (layer, (n1, n2)) in enumerate(zip(self.linears, self.norms)):
            t[f"layers.{i}.input_norm"], t[f"layers.{i}.post_norm"] = n1, n2
            for name, lin in layer.items():
                key = f"layers.{i}.{name}"
                if isinstance(lin, QuantLinear):
                    t[key + ".qweight"], t[key + ".scales"], t[key + ".zeros"] = lin.qw.qweight, lin.qw.scales, lin.qw.zeros
                    groups.add(lin.qw.group_size)
                else:
                    t[key + ".weight"] = lin.weight
        save_file({k: v.contiguous() for k, v in t.items()}, str(path / "model.safetensors"))
        meta = {"format": FORMAT, "bits": 4, "group_size": max(groups) if groups else None, "method": self.method,
                "config": self.config.to_hf_dict(), "tied_lm_head": "lm_head" not in t, **self.meta}
        (path / "quant_config.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LinearLlama":
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file = path / "quant_config.json"
        if not cfg_file.is_file():
            raise ModelError(f"{path} has no quant_config.json: save a quantized model with LinearLlama.save first")
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != FORMAT or meta.get("bits") != 4:
            raise ModelError(f"{cfg_file}: format {meta.get('format')!r} with {meta.get('bits')} bits; expected "
                             f"{FORMAT!r} with 4 bits (AutoAWQ checkpoints: use awq_checkpoint.load_awq_gemm)")
        t = load_file(str(path / "model.safetensors"))
        config = LlamaConfig.from_hf_dict(meta["config"])
        norms, linears = [], []
        for i in range(config.num_hidden_layers):
            norms.append((t[f"layers.{i}.input_norm"], t[f"layers.{i}.post_norm"]))
            layer = {}
            for name in LINEAR_NAMES:
                key = f"layers.{i}.{name}"
                if key + ".qweight" in t:
                    layer[name] = QuantLinear(QuantizedWeight(t[key + ".qweight"], t[key + ".scales"], t[key + ".zeros"],
                                                              meta["group_size"]))
                else:
                    layer[name] = DenseLinear(t[key + ".weight"])
            linears.append(layer)
        head = DenseLinear(t["embed_tokens"] if meta["tied_lm_head"] else t["lm_head"])
        return cls(config, t["embed_tokens"], norms, linears, t["norm"], head, meta["method"])


def calibration_inputs(model: LinearLlama, ids: torch.Tensor, seq_len: int = 256) -> dict[tuple[int, str], torch.Tensor]:
    """Every linear's input rows ``[tokens, in]`` (fp32) over ``ids`` cut into sequences of ``seq_len``."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = (ids.numel() // seq_len) * seq_len
    if n == 0:
        raise ModelError(f"calibration text has {ids.numel()} tokens: need at least {seq_len}")
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    model.forward_logits(ids[:n].view(-1, seq_len),
                         observer=lambda i, name, x: seen.setdefault((i, name), []).append(x.reshape(-1, x.shape[-1]).float()))
    return {k: torch.cat(v) for k, v in seen.items()}
