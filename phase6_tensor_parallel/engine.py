"""The tensor-parallel Llama engine both implementations share: embedding, layers, lm_head, KV cache, greedy loop.

What differs between ``framework`` and ``solution`` is the decoder layer (how its linears are split and what
they communicate) and whether the engine overlaps the layer's all-reduces with the other half batch's compute.
Every rank runs this same program on its shard; the vocab-parallel embedding and the gathered lm_head make
the activations entering and the logits leaving the stack identical on every rank.

A layer object provides ``n_q_local``/``n_kv_local`` (the heads this rank attends with, for its KV cache) and
``forward(x, ctx)``; an overlappable layer also provides ``attn_partial(x, ctx)`` and ``mlp_partial(x, ctx)``:
the row-parallel partial sums whose all-reduce the engine starts asynchronously. ``ctx.kernels`` says
whether the norms and the one-token attention run as Triton kernels (``ops``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from phase0_prototype.model import apply_rope, repeat_kv, rope_cache
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import fuse
from phase6_tensor_parallel.dist_env import TPGroup
from phase6_tensor_parallel.layers import ParallelLMHead, VocabParallelEmbedding
from phase6_tensor_parallel.ops import choose_kernels, rms_norm


@dataclass
class AttnContext:
    """Where this forward's tokens sit: the KV cache, the batch rows being computed, the first position."""

    cache_k: list  # per layer [B, Hkv_local, S, D]
    cache_v: list
    start: int
    cos: torch.Tensor
    sin: torch.Tensor
    rows: slice = field(default_factory=lambda: slice(None))
    layer: int = 0
    pos: torch.Tensor | None = None  # static mode (CUDA graphs): the first position as a device scalar
    positions: torch.Tensor | None = None  # static one-token step: ``pos`` per batch row (kernels want [B])
    kernels: bool = False  # the norms and the one-token static attention as Triton kernels (``ops``)

    def at(self, layer: int, rows: slice | None = None) -> "AttnContext":
        return replace(self, layer=layer, rows=self.rows if rows is None else rows)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """q ``[b, T, Hq, D]``, k/v ``[b, T, Hkv, D]`` (RoPE not yet applied) -> ``[b, T, Hq·D]``.

    Writes k/v at positions ``[start, start+T)`` of the cache rows ``ctx.rows`` and attends causally over
    everything cached so far. With ``ctx.pos`` set the positions come from that device tensor instead
    (``static_attention``: fixed shapes, no host values, what a CUDA graph can replay).
    """
    if ctx.pos is not None:
        return static_attention(q, k, v, ctx)
    b, t, hq, d = q.shape
    positions = torch.arange(ctx.start, ctx.start + t, device=q.device).expand(b, t)
    q, k = apply_rope(q, k, ctx.cos, ctx.sin, positions)
    end = ctx.start + t
    ck, cv = ctx.cache_k[ctx.layer], ctx.cache_v[ctx.layer]
    ck[ctx.rows, :, ctx.start:end] = k.transpose(1, 2)
    cv[ctx.rows, :, ctx.start:end] = v.transpose(1, 2)
    keys, values = ck[ctx.rows, :, :end], cv[ctx.rows, :, :end]
    groups = hq // keys.shape[1]
    # Query i (absolute position start+i) sees keys at positions <= start+i.
    mask = torch.arange(end, device=q.device)[None, :] <= positions[0][:, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(keys, groups), repeat_kv(values, groups),
                                         attn_mask=mask)
    return out.transpose(1, 2).reshape(b, t, hq * d)


def static_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """``cached_attention`` with every shape fixed: positions ``pos + [0, T)`` read from the device.

    The k/v rows are written with ``index_copy_`` at those positions and attention runs over the WHOLE cache
    length with a mask (positions > the query's are −∞), so nothing depends on a host-side length. The q heads
    that share a kv head are stacked along the query axis (``[b, Hkv, G·T, D]``): no ``repeat_kv`` copy of the
    cache, which at batch 256 would move 8× the cache bytes.
    """
    b, t, hq, d = q.shape
    ck, cv = ctx.cache_k[ctx.layer][ctx.rows], ctx.cache_v[ctx.layer][ctx.rows]
    hkv, length = ck.shape[1], ck.shape[2]
    groups = hq // hkv
    positions = ctx.pos + torch.arange(t, device=q.device)
    q, k = apply_rope(q, k, ctx.cos, ctx.sin, positions.expand(b, t))
    ck.index_copy_(2, positions, k.transpose(1, 2).to(ck.dtype))
    cv.index_copy_(2, positions, v.transpose(1, 2).to(cv.dtype))
    # Query (g, i) is row g·T + i: it sees keys at positions <= pos + i.
    mask = (torch.arange(length, device=q.device)[None, :] <= positions[:, None]).repeat(groups, 1)
    qg = q.view(b, t, hkv, groups, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, groups * t, d)
    out = F.scaled_dot_product_attention(qg, ck, cv, attn_mask=mask)
    return out.view(b, hkv, groups, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, hq * d)


def qkv_attention(qkv: torch.Tensor, n_q: int, n_kv: int, ctx: AttnContext) -> torch.Tensor:
    """Attention from the fused projection ``qkv [b, T, (n_q + 2·n_kv)·D]`` (q heads, then k, then v).

    A one-token static step on a GPU runs phase 0's ``rope_cache_attention`` (RoPE, cache write, split
    attention and merge in two kernels, positions read from the device); otherwise ``cached_attention``.
    """
    b, t, width = qkv.shape
    d = width // (n_q + 2 * n_kv)
    if ctx.pos is not None and t == 1 and ctx.kernels:
        from phase0_prototype.kernels.decode_attention import rope_cache_attention

        if ctx.positions is None:
            ctx.positions = ctx.pos.expand(b).contiguous()  # one slot per sequence, all at one position
        positions = ctx.positions if ctx.positions.shape[0] == b else ctx.positions[ctx.rows]
        out = rope_cache_attention(qkv.reshape(b, width), ctx.cache_k[ctx.layer][ctx.rows],
                                   ctx.cache_v[ctx.layer][ctx.rows], ctx.cos, ctx.sin, positions, n_q)
        return out.view(b, 1, n_q * d)
    q, k, v = qkv.split([n_q * d, n_kv * d, n_kv * d], dim=-1)
    return cached_attention(q.view(b, t, n_q, d), k.view(b, t, n_kv, d), v.view(b, t, n_kv, d), ctx)


class TPEngine:
    """One rank's share of a Llama model. ``layer_cls(weights, config, group)`` builds each decoder layer.

    ``kernels``: run the decode step's norms and attention as Triton kernels (default: on CUDA; True on a
    CPU needs ``TRITON_INTERPRET=1``, False on a GPU runs the PyTorch versions)."""

    def __init__(self, model: LoadedModel, group: TPGroup, layer_cls, *, name: str, mode: str,
                 overlap: bool = False, max_seq_len: int | None = None, kernels: bool | None = None):
        config = model.config
        # Overlap needs a collective to hide: at world 1 the half batches would only re-read the weights.
        self.name, self.mode, self.config, self.group = name, mode, config, group
        self.overlap = overlap and group.world > 1
        weights = fuse(model.state, config)
        self.embed = VocabParallelEmbedding(weights.embed_tokens, group)
        self.layers = [layer_cls(lw, config, group) for lw in weights.layers]
        self.norm = weights.norm
        self.lm_head = ParallelLMHead(weights.lm_head, group)
        self.max_seq_len = max_seq_len or config.max_position_embeddings
        self.device, self.dtype = model.device, model.dtype
        self.kernels = choose_kernels(self.device, kernels)
        self.cos, self.sin = rope_cache(config, self.max_seq_len, self.device)

    def new_context(self, batch: int, length: int) -> AttnContext:
        if length > self.max_seq_len:
            raise ValueError(f"{length} positions exceed max_seq_len={self.max_seq_len}: pass a shorter prompt "
                             "or fewer new tokens")
        d = self.config.head_dim
        shape = lambda layer: (batch, layer.n_kv_local, length, d)  # noqa: E731
        make = lambda: [torch.zeros(shape(layer), dtype=self.dtype, device=self.device) for layer in self.layers]  # noqa: E731
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
            for i, layer in enumerate(self.layers):
                x = layer.forward(x, ctx.at(i))
        x = rms_norm(x, self.norm, self.config.rms_norm_eps, ctx.kernels)
        if ctx.pos is None:
            ctx.start += tokens.shape[1]
        else:
            ctx.pos.add_(tokens.shape[1])  # on the device: a replayed graph advances by itself
        return self.lm_head(x).float()

    def _layers_overlapped(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """Two half batches in lockstep: while one half's all-reduce is in flight, the other computes.

        Each layer has two row-parallel sums (after o_proj, after down_proj). For each one, in turn per half:
        wait for that half's previous all-reduce, add it to the residual, compute the next partial, start its
        all-reduce without waiting. The arithmetic is the non-overlapped layer's, in the same order.
        """
        half = x.shape[0] // 2
        rows = [slice(0, half), slice(half, x.shape[0])]
        xs = [x[r] for r in rows]
        pending: list = [None, None]
        for i, layer in enumerate(self.layers):
            for segment in ("attn", "mlp"):
                for h in (0, 1):
                    if pending[h] is not None:
                        xs[h] = self._land(xs[h], *pending[h])
                    part = (layer.attn_partial(xs[h], ctx.at(i, rows[h])) if segment == "attn"
                            else layer.mlp_partial(xs[h], ctx))
                    pending[h] = (self.group.all_reduce_async(part), part)
        xs = [self._land(xs[h], *pending[h]) for h in (0, 1)]
        return torch.cat(xs, dim=0)

    @staticmethod
    def _land(x: torch.Tensor, work, partial: torch.Tensor) -> torch.Tensor:
        if work is not None:
            work.wait()
        return x + partial

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
