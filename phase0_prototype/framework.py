"""The slow, correct engine: a ~100-line TinyLlama forward, made right.

What it does right: RMSNorm with HF's casts, residual connections around attention and the MLP,
grouped-query attention (32 query heads share 4 key/value heads), rotary embeddings, SwiGLU.

What is slow, on purpose, and why:

- **No KV cache.** Every new token re-runs the whole sequence through all 22 layers, so token ``t``
  costs O(t) matrix multiplies and O(t²) attention, and the logits of every position are computed
  although only the last is used. With a 512-token prompt each step is a 512+ token prefill.
- **One kernel per operation, launched from Python.** Separate q/k/v and gate/up projections,
  RoPE as a handful of elementwise ops, no fusion: at short lengths the CPU's launch rate sets the pace.
- **A host synchronisation per token** (the EOS test reads a flag back), so the CPU never runs ahead.

The engine reads the checkpoint's HF-named state dict directly, with no conversion step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase0_prototype.generation import (
    EosState,
    GenerationOutput,
    TokenCallback,
    as_batch,
    check_context,
    finish,
)
from phase0_prototype.model import RopeFn, apply_rope, repeat_kv, rms_norm, rope_cache, swiglu
from phase0_prototype.sampling import GREEDY, SamplingParams, sample
from phase0_prototype.sources import LoadedModel


def forward(state: dict, config, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            rope_fn: RopeFn = apply_rope) -> torch.Tensor:
    """Logits ``[batch, tokens, vocab]`` (fp32) of a whole sequence, from scratch."""
    B, T = tokens.shape
    Hq, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    positions = torch.arange(T, device=tokens.device).expand(B, T)
    x = state["model.embed_tokens.weight"][tokens]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, state[p + "input_layernorm.weight"], config.rms_norm_eps)
        q = F.linear(h, state[p + "self_attn.q_proj.weight"]).view(B, T, Hq, D)
        k = F.linear(h, state[p + "self_attn.k_proj.weight"]).view(B, T, Hkv, D)
        v = F.linear(h, state[p + "self_attn.v_proj.weight"]).view(B, T, Hkv, D)
        q, k = rope_fn(q, k, cos, sin, positions)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
        attn = F.scaled_dot_product_attention(q, repeat_kv(k, Hq // Hkv), repeat_kv(v, Hq // Hkv),
                                              is_causal=True)
        x = x + F.linear(attn.transpose(1, 2).reshape(B, T, Hq * D), state[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, state[p + "post_attention_layernorm.weight"], config.rms_norm_eps)
        gate = F.linear(h, state[p + "mlp.gate_proj.weight"])
        up = F.linear(h, state[p + "mlp.up_proj.weight"])
        x = x + F.linear(swiglu(gate, up), state[p + "mlp.down_proj.weight"])
    x = rms_norm(x, state["model.norm.weight"], config.rms_norm_eps)
    return F.linear(x, state["lm_head.weight"]).float()


class FrameworkEngine:
    """``Engine`` contract (see ``phase0_prototype``): recompute everything, every token."""

    name = "framework"
    kv_slots_per_request = None  # no KV cache: every token recomputes the sequence

    def __init__(self, model: LoadedModel, *, max_batch_size: int = 1, max_seq_len: int | None = None,
                 compile: bool = False, rope_fn: RopeFn | None = None):
        self.model, self.config = model, model.config
        limit = self.config.max_position_embeddings
        self.max_seq_len = min(max_seq_len or limit, limit)
        self.cos, self.sin = rope_cache(self.config, self.max_seq_len, model.device)
        self.rope_fn = rope_fn or apply_rope
        self.mode = "eager, no KV cache"  # `compile` is accepted for the contract and ignored

    @torch.inference_mode()
    def forward_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = as_batch(tokens, self.model.device)
        check_context(tokens.shape[1], 1, self.max_seq_len + 1)  # prompt alone must fit
        return forward(self.model.state, self.config, tokens, self.cos, self.sin, self.rope_fn)

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, sampling: SamplingParams = GREEDY, *,
                 on_tokens: TokenCallback | None = None, stop_on_eos: bool = True,
                 eos_ids: tuple[int, ...] | None = None) -> GenerationOutput:
        tokens = as_batch(prompt_ids, self.model.device)
        check_context(tokens.shape[1], max_new_tokens, self.max_seq_len)
        eos_ids = self.model.tokenizer.eos_ids if eos_ids is None else eos_ids
        eos = EosState(tokens.shape[0], eos_ids if stop_on_eos else (), tokens.device)
        generator = sampling.generator(tokens.device)
        prompt_len = tokens.shape[1]
        for _ in range(max_new_tokens):
            logits = forward(self.model.state, self.config, tokens, self.cos, self.sin, self.rope_fn)[:, -1]
            next_tokens = eos.update(sample(logits, sampling, generator))
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            if on_tokens is not None and on_tokens(next_tokens[:, None].cpu()):
                break  # the caller has what it needs
            if stop_on_eos and bool(eos.finished.all()):  # host sync every token
                break
        return finish(tokens[:, prompt_len:], eos_ids, stop_on_eos)


def build(model: LoadedModel, **options) -> FrameworkEngine:
    return FrameworkEngine(model, **options)
