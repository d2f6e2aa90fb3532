"""The tensor-parallel Llama engine both implementations share: embedding, layers, lm_head, KV cache, greedy loop.

Every layer is phase 0's ``decoder_layer``; tensor parallelism is a transform of its weights. ``framework`` and
``solution`` each give ``shard_weights(weights, group)``: the fused layers with their projections replaced by
``layers``' parallel layers (run through ``layers.project``) and a config with the heads this rank attends
with. Every rank runs this same program on its shard; the vocab-parallel embedding and the gathered lm_head
make the activations entering and the logits leaving the stack identical on every rank.

``AttnContext.attend`` is decoder_layer's ``attend`` over this engine's cache: dynamic (a host-side start) or
static (a device-side position, what a CUDA graph replays); a one-token static step on a GPU runs phase 0's
RoPE + cache-write + attention kernels, so decoder_layer's ``rope`` is then a pass-through.

``overlapped_layer`` is the one other spelling of the layer: decoder_layer cut at its two row-parallel sums,
as a generator, so two half batches can run in lockstep with one half's all-reduce in flight while the other
computes (a plain call cannot pause mid-layer for the other half). Same arithmetic, same order: tested equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from phase0_prototype.config import LlamaConfig
from phase0_prototype.model import Attend, RopeFn, apply_rope, decoder_layer, repeat_kv, rope_cache, swiglu
from phase0_prototype.model import rms_norm as layer_rms_norm
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LayerWeights, LlamaWeights, fuse
from phase6_tensor_parallel.dist_env import TPGroup
from phase6_tensor_parallel.layers import ParallelLMHead, VocabParallelEmbedding, project
from phase6_tensor_parallel.ops import choose_kernels, rms_norm

# A layout: the fused weights -> this rank's (config with its head counts, layers with parallel projections).
ShardWeights = Callable[[LlamaWeights, TPGroup], LlamaWeights]


def rotated_in_kernel(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """decoder_layer's ``rope`` on the fused step: q and k unchanged, phase 0's attention kernel rotates them."""
    return q, k


@dataclass
class AttnContext:
    """Where this forward's tokens sit: the KV cache, the batch rows being computed, the first position."""

    cache_k: list  # per layer [B, Hkv_local, S, D]
    cache_v: list
    start: int
    cos: torch.Tensor
    sin: torch.Tensor
    rows: slice = field(default_factory=lambda: slice(None))
    pos: torch.Tensor | None = None  # static mode (CUDA graphs): the first position as a device scalar
    positions: torch.Tensor | None = None  # static one-token step: ``pos`` per batch row (kernels want [B])
    kernels: bool = False  # the final norm and the one-token static attention as Triton kernels (``ops``)

    def at(self, rows: slice) -> "AttnContext":
        return replace(self, rows=rows)

    def fused_step(self, tokens: int) -> bool:
        """A one-token static step on the kernels: RoPE, cache write and attention in phase 0's two kernels."""
        return self.pos is not None and tokens == 1 and self.kernels

    def rope(self, tokens: int) -> RopeFn:
        return rotated_in_kernel if self.fused_step(tokens) else apply_rope

    def token_positions(self, batch: int, tokens: int) -> torch.Tensor:
        """``[batch, tokens]`` positions from ``start`` (host) or ``pos`` (device: nothing read on the host)."""
        first = self.pos if self.pos is not None else self.start
        return (first + torch.arange(tokens, device=self.cos.device)).expand(batch, tokens)

    def attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """decoder_layer's ``attend`` (``model.Attend``) over layer ``i``'s cache rows ``rows``."""
        if self.fused_step(q.shape[1]):
            return kernel_attention(q, k, v, self, i)
        if self.pos is not None:
            return static_attention(q, k, v, self, i)
        return cached_attention(q, k, v, self, i)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext, i: int) -> torch.Tensor:
    """q ``[b, T, Hq, D]``, k/v ``[b, T, Hkv, D]`` (RoPE applied) -> ``[b, T, Hq·D]``.

    Writes k/v at positions ``[start, start+T)`` of the cache rows ``ctx.rows`` and attends causally over
    everything cached so far.
    """
    b, t, hq, d = q.shape
    end = ctx.start + t
    ck, cv = ctx.cache_k[i], ctx.cache_v[i]
    ck[ctx.rows, :, ctx.start:end] = k.transpose(1, 2)
    cv[ctx.rows, :, ctx.start:end] = v.transpose(1, 2)
    keys, values = ck[ctx.rows, :, :end], cv[ctx.rows, :, :end]
    groups = hq // keys.shape[1]
    # Query j (absolute position start+j) sees keys at positions <= start+j.
    mask = torch.arange(end, device=q.device)[None, :] <= torch.arange(ctx.start, end, device=q.device)[:, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(keys, groups), repeat_kv(values, groups),
                                         attn_mask=mask)
    return out.transpose(1, 2).reshape(b, t, hq * d)


def static_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext, i: int) -> torch.Tensor:
    """``cached_attention`` with every shape fixed: positions ``pos + [0, T)`` read from the device.

    The k/v rows are written with ``index_copy_`` at those positions and attention runs over the WHOLE cache
    length with a mask (positions > the query's are −∞), so nothing depends on a host-side length. The q heads
    that share a kv head are stacked along the query axis (``[b, Hkv, G·T, D]``): no ``repeat_kv`` copy of the
    cache, which at batch 256 would move 8× the cache bytes.
    """
    b, t, hq, d = q.shape
    ck, cv = ctx.cache_k[i][ctx.rows], ctx.cache_v[i][ctx.rows]
    hkv, length = ck.shape[1], ck.shape[2]
    groups = hq // hkv
    positions = ctx.pos + torch.arange(t, device=q.device)
    ck.index_copy_(2, positions, k.transpose(1, 2).to(ck.dtype))
    cv.index_copy_(2, positions, v.transpose(1, 2).to(cv.dtype))
    # Query (g, j) is row g·T + j: it sees keys at positions <= pos + j.
    mask = (torch.arange(length, device=q.device)[None, :] <= positions[:, None]).repeat(groups, 1)
    qg = q.view(b, t, hkv, groups, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, groups * t, d)
    out = F.scaled_dot_product_attention(qg, ck, cv, attn_mask=mask)
    return out.view(b, hkv, groups, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, hq * d)


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext, i: int) -> torch.Tensor:
    """The one-token static step as phase 0's ``rope_cache_attention``: q/k NOT yet rotated (the kernel
    rotates them, writes k/v at each row's device-side position and attends), ``[b, 1, Hq·D]`` out."""
    from phase0_prototype.kernels.decode_attention import rope_cache_attention

    b, _, n_q, d = q.shape
    if ctx.positions is None:
        ctx.positions = ctx.pos.expand(b).contiguous()  # one slot per sequence, all at one position
    positions = ctx.positions if ctx.positions.shape[0] == b else ctx.positions[ctx.rows]
    qkv = torch.cat([q.reshape(b, -1), k.reshape(b, -1), v.reshape(b, -1)], dim=-1)  # the kernel's row layout
    out = rope_cache_attention(qkv, ctx.cache_k[i][ctx.rows], ctx.cache_v[i][ctx.rows], ctx.cos, ctx.sin,
                               positions, n_q)
    return out.view(b, 1, n_q * d)


def overlapped_layer(config: LlamaConfig, i: int, w: LayerWeights, x: torch.Tensor, positions: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, attend: Attend, *, rope: RopeFn = apply_rope):
    """``decoder_layer`` over Megatron-sharded weights (``solution.shard_weights``), cut at its row-parallel sums.

    A generator: yields this rank's partial o_proj output, receives it summed over the ranks, then the same for
    down_proj; returns the layer's output. What ``decoder_layer(..., linear=project)`` computes, in its order.
    """
    B, T = x.shape[0], x.shape[1]
    Hq, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    h = layer_rms_norm(x, w.input_norm, config.rms_norm_eps)
    q, k, v = w.qkv_proj(h).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    q, k = rope(q.view(B, T, Hq, D), k.view(B, T, Hkv, D), cos, sin, positions)
    x = x + (yield w.o_proj.partial(attend(i, q, k, v.view(B, T, Hkv, D))))
    h = layer_rms_norm(x, w.post_norm, config.rms_norm_eps)
    gate, up = w.gate_up_proj(h).chunk(2, dim=-1)
    return x + (yield w.down_proj.partial(swiglu(gate, up)))


class TPEngine:
    """One rank's share of a Llama model; ``shard_weights`` (a layout: ``framework`` or ``solution``) splits it.

    ``overlap`` (Megatron layouts only: their row-parallel layers have ``partial``) runs the two half batches of
    ``overlapped_layer``. ``kernels``: run the final norm and the one-token static attention as Triton kernels
    (default: on CUDA; True on a CPU needs ``TRITON_INTERPRET=1``, False on a GPU runs the PyTorch versions)."""

    def __init__(self, model: LoadedModel, group: TPGroup, shard_weights: ShardWeights, *, name: str, mode: str,
                 overlap: bool = False, max_seq_len: int | None = None, kernels: bool | None = None):
        config = model.config
        # Overlap needs a collective to hide: at world 1 the half batches would only re-read the weights.
        self.name, self.mode, self.config, self.group = name, mode, config, group
        self.overlap = overlap and group.world > 1
        full = fuse(model.state, config)
        shard = shard_weights(full, group)
        self.layer_config, self.layers = shard.config, shard.layers  # this rank's heads, its projections
        self.embed = VocabParallelEmbedding(full.embed_tokens, group)
        self.norm = full.norm
        self.lm_head = ParallelLMHead(full.lm_head, group)
        self.max_seq_len = max_seq_len or config.max_position_embeddings
        self.device, self.dtype = model.device, model.dtype
        self.kernels = choose_kernels(self.device, kernels)
        self.cos, self.sin = rope_cache(config, self.max_seq_len, self.device)

    def new_context(self, batch: int, length: int) -> AttnContext:
        if length > self.max_seq_len:
            raise ValueError(f"{length} positions exceed max_seq_len={self.max_seq_len}: pass a shorter prompt "
                             "or fewer new tokens")
        shape = (batch, self.layer_config.num_key_value_heads, length, self.config.head_dim)
        make = lambda: [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]  # noqa: E731
        return AttnContext(make(), make(), 0, self.cos, self.sin, kernels=self.kernels)

    # --- forward ------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """Logits (fp32, ``[B, T, vocab]``, identical on every rank) of ``tokens`` at positions ctx.start..."""
        x = self.embed(tokens)
        if ctx.pos is not None:  # one copy of the position per row for this step's attention kernels
            ctx.positions = ctx.pos.expand(tokens.shape[0]).contiguous() if ctx.kernels else None
        if self.overlap and tokens.shape[0] >= 2:
            x = self._layers_overlapped(x, ctx)
        else:
            b, t = tokens.shape
            positions, rope = ctx.token_positions(b, t), ctx.rope(t)
            for i, w in enumerate(self.layers):
                x = decoder_layer(self.layer_config, i, w, x, positions, ctx.cos, ctx.sin, ctx.attend,
                                  linear=project, rope=rope)
        x = rms_norm(x, self.norm, self.config.rms_norm_eps, ctx.kernels)
        if ctx.pos is None:
            ctx.start += tokens.shape[1]
        else:
            ctx.pos.add_(tokens.shape[1])  # on the device: a replayed graph advances by itself
        return self.lm_head(x).float()

    def _layers_overlapped(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """Two half batches in lockstep: while one half's all-reduce is in flight, the other computes.

        Each half runs the stack as ``overlapped_layer`` generators, which yield every row-parallel partial sum
        (two a layer). Per half in turn: wait for its all-reduce, hand the sum back, compute to its next
        partial, start that all-reduce without waiting. Every rank issues the collectives in the same order.
        """
        half = x.shape[0] // 2
        runs = [self._stack(x[rows], ctx.at(rows)) for rows in (slice(0, half), slice(half, x.shape[0]))]
        flights = [self._start(next(run)) for run in runs]
        out: list = [None, None]
        while out[0] is None:  # both halves yield as many partials: they end on the same round
            for h, run in enumerate(runs):
                try:
                    flights[h] = self._start(run.send(self._land(*flights[h])))
                except StopIteration as end:
                    out[h] = end.value
        return torch.cat(out, dim=0)

    def _stack(self, x: torch.Tensor, ctx: AttnContext):
        """One half batch through every layer, yielding each row-parallel partial sum (see above)."""
        b, t = x.shape[0], x.shape[1]
        positions, rope = ctx.token_positions(b, t), ctx.rope(t)
        for i, w in enumerate(self.layers):
            x = yield from overlapped_layer(self.layer_config, i, w, x, positions, ctx.cos, ctx.sin, ctx.attend,
                                            rope=rope)
        return x

    def _start(self, partial: torch.Tensor) -> tuple:
        return self.group.all_reduce_async(partial), partial

    @staticmethod
    def _land(work, total: torch.Tensor) -> torch.Tensor:
        if work is not None:
            work.wait()
        return total

    # --- public API ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        return self.forward(tokens, self.new_context(tokens.shape[0], tokens.shape[1]))

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor | list[int], max_new_tokens: int, *,
                 graph: bool | None = None) -> torch.Tensor:
        """Greedy continuation with a KV cache: ``[B, max_new_tokens]`` new ids (CPU), the same on every rank.

        ``graph`` (default: on CUDA) decodes with one CUDA graph replay per token (``static_decode``), the
        collectives inside the graph; otherwise every step is eager Python.
        """
        prompt = torch.as_tensor(prompt_ids, dtype=torch.long)
        prompt = (prompt[None] if prompt.dim() == 1 else prompt).to(self.device)
        if graph is None:
            graph = self.device.type == "cuda"
        if graph and max_new_tokens > 0:
            from phase6_tensor_parallel.static_decode import graph_generate

            return graph_generate(self, prompt, max_new_tokens)
        ctx = self.new_context(prompt.shape[0], prompt.shape[1] + max_new_tokens)
        logits = self.forward(prompt, ctx)
        out = []
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            # The logits are bit-identical on every rank (all-gathered); the broadcast makes that a guarantee.
            out.append(self.group.broadcast(nxt).cpu())
            if step + 1 < max_new_tokens:
                logits = self.forward(nxt, ctx)
        return torch.cat(out, dim=1) if out else torch.empty(prompt.shape[0], 0, dtype=torch.long)
