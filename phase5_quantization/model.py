"""``QuantLinear`` and a Llama whose projections are INT4: phase 0's fused layout with the matrices swapped out.

``LinearLlama`` holds phase 0's fused weights (``weights.fuse``: ``qkv_proj``, ``o_proj``, ``gate_up_proj``,
``down_proj`` per layer) as *linear objects*: ``DenseLinear`` (the float matrix, the baseline) or ``QuantLinear``
(INT4 codes + group scales/zero-points). Embeddings, norms and (by default) ``lm_head`` stay in float:
they are a small share of the bytes here and the tied embedding is both the first and the last layer.

``QuantLinear`` (``linear``) on a CPU dequantizes the whole matrix on every call and runs ``F.linear``: correct,
and slower than the float model (it reads 4-bit codes *and* writes a float copy). On a GPU the Triton W4A16
kernel (``kernels/``) dequantizes in registers instead, so only the 4-bit codes cross memory.

The forward is phase 0's ``decoder_layer`` with no KV cache (causal SDPA over the whole sequence), its
projections these objects, with an ``observer(layer, linear_name, input)`` hook the quantizers use to
collect calibration activations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from phase0_prototype.config import LlamaConfig
from phase0_prototype.errors import ModelError, read_json, require
from phase0_prototype.model import decoder_layer, rms_norm, rope_cache
from phase0_prototype.solution import prefill_attention
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LayerWeights, fuse, read_tensors
from phase5_quantization.linear import DenseLinear, QuantLinear
from phase5_quantization.packing import QuantizedWeight

LINEAR_NAMES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
Observer = Callable[[int, str, torch.Tensor], None]
FORMAT = "titaninfer-int4-v1"


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
        layers = [{n: DenseLinear(getattr(lw, n).to(dtype)) for n in LINEAR_NAMES} for lw in w.layers]
        norms = [(lw.input_norm.to(dtype), lw.post_norm.to(dtype)) for lw in w.layers]
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
        tokens = torch.as_tensor(tokens, dtype=torch.long).to(self.embed_tokens.device)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        B, T = tokens.shape
        if T > cfg.max_position_embeddings:
            raise ModelError(f"{T} tokens exceed the model's {cfg.max_position_embeddings} positions")
        cos, sin = rope_cache(cfg, T, tokens.device)
        positions = torch.arange(T, device=tokens.device).expand(B, T)
        see = observer or (lambda *a: None)

        def watched(i: int, name: str, lin):
            def call(h):
                see(i, name, h)
                return lin(h)
            return call

        x = self.embed_tokens[tokens]
        for i, (lin, (n1, n2)) in enumerate(zip(self.linears, self.norms, strict=True)):
            w = LayerWeights(n1, *(watched(i, n, lin[n]) for n in ("qkv_proj", "o_proj")), n2,
                             *(watched(i, n, lin[n]) for n in ("gate_up_proj", "down_proj")))
            x = decoder_layer(cfg, i, w, x, positions, cos, sin, lambda i, q, k, v: prefill_attention(q, k, v),
                              linear=lambda h, proj: proj(h))
        return self.lm_head(rms_norm(x, self.norm, cfg.rms_norm_eps)).float()

    @torch.inference_mode()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation by recomputation (small models, tests)."""
        ids = list(prompt_ids)
        for _ in range(max_new_tokens):
            ids.append(int(self.forward_logits(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt_ids):]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "LinearLlama":
        """A copy on ``device``; ``dtype`` applies to the float tensors (activations follow the embedding)."""
        mv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        norms = [(mv(a), mv(b)) for a, b in self.norms]
        linears = [{n: lin.to(device, dtype) for n, lin in layer.items()} for layer in self.linears]
        embed = mv(self.embed_tokens)
        head = self.lm_head.to(device, dtype)
        if isinstance(self.lm_head, DenseLinear) and self.lm_head.weight is self.embed_tokens:
            head = DenseLinear(embed)  # keep the tie
        return LinearLlama(self.config, embed, norms, linears, mv(self.norm), head, self.method, dict(self.meta))

    # ------------------------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """``model.safetensors`` (float tensors + INT4 triples per linear) + ``quant_config.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        t = {"embed_tokens": self.embed_tokens, "norm": self.norm}
        groups = set()

        def put(key: str, lin) -> None:
            if isinstance(lin, QuantLinear):
                t[key + ".qweight"], t[key + ".scales"], t[key + ".zeros"] = lin.qw.qweight, lin.qw.scales, lin.qw.zeros
                groups.add(lin.qw.group_size)
            else:
                t[key + ".weight"] = lin.weight

        tied = isinstance(self.lm_head, DenseLinear) and self.lm_head.weight is self.embed_tokens
        if not tied:
            put("lm_head", self.lm_head)
        for i, (layer, (n1, n2)) in enumerate(zip(self.linears, self.norms, strict=True)):
            t[f"layers.{i}.input_norm"], t[f"layers.{i}.post_norm"] = n1, n2
            for name, lin in layer.items():
                put(f"layers.{i}.{name}", lin)
        if len(groups) > 1:
            raise ModelError(f"cannot save mixed group sizes {sorted(groups)} in one checkpoint")
        save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(path / "model.safetensors"))
        meta = {"format": FORMAT, "bits": 4, "group_size": groups.pop() if groups else None, "method": self.method,
                "config": self.config.to_hf_dict(), "tied_lm_head": tied, **self.meta}
        (path / "quant_config.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "LinearLlama":
        """A model saved by ``save``; one clear error for another format, bit width, or a wrong tensor."""
        path = Path(path)
        cfg_file = path / "quant_config.json"
        if not cfg_file.is_file():
            hint = (" (this looks like an AutoAWQ checkpoint: use phase5_quantization.awq_checkpoint.load_awq_gemm)"
                    if (path / "config.json").is_file() and "quantization_config" in (path / "config.json").read_text()
                    else "")
            raise ModelError(f"{path} has no quant_config.json: save a quantized model with LinearLlama.save first{hint}")
        meta = read_json(cfg_file)
        if meta.get("format") != FORMAT or meta.get("bits") != 4:
            raise ModelError(f"{cfg_file}: format {meta.get('format')!r} with {meta.get('bits')} bits; expected "
                             f"{FORMAT!r} with 4 bits (AutoAWQ checkpoints: use awq_checkpoint.load_awq_gemm)")
        require(all(k in meta for k in ("config", "method", "tied_lm_head")), cfg_file,
                "lacks config, method or tied_lm_head: re-save the model with LinearLlama.save")
        t = read_tensors(path / "model.safetensors", device)
        config = LlamaConfig.from_hf_dict(meta["config"], source=cfg_file)
        group = meta.get("group_size")
        shapes = linear_shapes(config)

        def get(key: str) -> torch.Tensor:
            if key not in t:
                raise ModelError(f"{path}: tensor {key} is missing (a {FORMAT} checkpoint of this config stores it)")
            return t[key]

        def linear(key: str, shape: tuple[int, int]):
            if key + ".qweight" not in t:
                w = get(key + ".weight")
                if tuple(w.shape) != shape:
                    raise ModelError(f"{key}.weight has shape {tuple(w.shape)}: expected {shape}")
                return DenseLinear(w)
            qweight, scales, zeros = get(key + ".qweight"), get(key + ".scales"), get(key + ".zeros")
            check_quantized(key, qweight, scales, zeros, shape, group)
            return QuantLinear(QuantizedWeight(qweight, scales, zeros, group))

        norms = [(get(f"layers.{i}.input_norm"), get(f"layers.{i}.post_norm")) for i in range(config.num_hidden_layers)]
        linears = [{name: linear(f"layers.{i}.{name}", shapes[name]) for name in LINEAR_NAMES}
                   for i in range(config.num_hidden_layers)]
        embed = get("embed_tokens")
        head = DenseLinear(embed) if meta["tied_lm_head"] else linear("lm_head", (config.vocab_size, config.hidden_size))
        out = cls(config, embed, norms, linears, get("norm"), head, meta["method"])
        out.meta = {k: v for k, v in meta.items() if k not in ("format", "bits", "group_size", "method", "config",
                                                               "tied_lm_head")}
        return out


def linear_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """``[out, in]`` of each fused projection (``weights.fuse``'s layout)."""
    h, i = config.hidden_size, config.intermediate_size
    return {"qkv_proj": (config.q_size + 2 * config.kv_size, h), "o_proj": (h, config.q_size),
            "gate_up_proj": (2 * i, h), "down_proj": (h, i)}


def check_quantized(key: str, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    shape: tuple[int, int], group: int | None) -> None:
    """One clear error when an INT4 triple does not match ``shape [out, in]`` at 4 bits and ``group``."""
    out, inp = shape
    if not isinstance(group, int) or isinstance(group, bool) or group <= 0 or inp % group:
        raise ModelError(f"{key}: group size {group} does not divide in_features {inp}")
    if qweight.dtype != torch.int32:
        raise ModelError(f"{key}.qweight is {qweight.dtype}: expected int32 words of 8 four-bit codes")
    if tuple(qweight.shape) != (out, inp // 8):
        per_word = inp // qweight.shape[1] if qweight.dim() == 2 and qweight.shape[1] else "?"
        raise ModelError(f"{key}.qweight has shape {tuple(qweight.shape)}: expected {(out, inp // 8)} (4-bit codes, "
                         f"8 per int32); {per_word} input features per word looks like {32 // per_word if isinstance(per_word, int) and per_word else '?'}-bit")
    if tuple(scales.shape) != (out, inp // group) or scales.dtype != torch.float16:
        raise ModelError(f"{key}.scales is {scales.dtype} {tuple(scales.shape)}: expected float16 {(out, inp // group)} "
                         f"(one scale per {group} inputs)")
    if tuple(zeros.shape) != (out, inp // group) or zeros.dtype != torch.uint8:
        raise ModelError(f"{key}.zeros is {zeros.dtype} {tuple(zeros.shape)}: expected uint8 {(out, inp // group)}")
    if not torch.isfinite(scales).all():
        raise ModelError(f"{key}.scales holds NaN or Inf: the checkpoint is corrupt; re-quantize the model")


def calibration_windows(ids, n_tokens: int, seq_len: int, bos_id: int | None = None) -> torch.Tensor:
    """``[n, seq_len]`` windows spread evenly over ``ids`` (``n = n_tokens // seq_len``, fewer if the text is short).

    With ``bos_id`` each window starts with ``<s>`` and holds ``seq_len − 1`` text tokens, the way the model was
    trained and is evaluated: the ``<s>`` position carries the largest activations of the model (e.g. layer 0's
    down_proj input reaches ~185 there, ~38 elsewhere), which calibration must see.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    span = seq_len - (bos_id is not None)
    available = ids.numel() // span
    if available == 0:
        raise ModelError(f"calibration text has {ids.numel()} tokens: need at least {span}")
    n = max(1, min(n_tokens // seq_len, available))
    starts = torch.linspace(0, ids.numel() - span, n).long().tolist()
    rows = [ids[s:s + span] for s in starts]
    if bos_id is not None:
        rows = [torch.cat([torch.tensor([bos_id]), r]) for r in rows]
    return torch.stack(rows)


def calibration_inputs(model: LinearLlama, ids, seq_len: int = 256, n_tokens: int | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """Every linear's input rows ``[tokens, in]`` (fp32) over ``n_tokens`` of ``ids`` (all by default) in
    windows of ``seq_len`` spread over the text, each starting with ``<s>`` (``calibration_windows``)."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    windows = calibration_windows(ids, n_tokens or ids.numel(), seq_len, model.config.bos_token_id)
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    model.forward_logits(windows,
                         observer=lambda i, name, x: seen.setdefault((i, name), []).append(x.reshape(-1, x.shape[-1]).float()))
    return {k: torch.cat(v) for k, v in seen.items()}
