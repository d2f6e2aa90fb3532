"""The paged model runner: one forward pass over a ragged batch of decodes and prefill chunks.

Every scheduled token of every request is packed along one axis (``[tokens, hidden]``: no padding),
so the projections and the MLP are single matmuls over the whole step — decodes and prefill chunks
share the weight reads, which is why mixing them costs little (Sarathi-Serve's point). Only
attention looks at the grouping:

- decodes (one token after a cached context) -> phase 3's ``paged_decode_attention``;
- fresh prompt chunks (starting at position 0) -> ``varlen_prefill_attention`` over the packed chunks;
- later chunks of a chunked prefill -> the chunk's queries over the cached prefix plus itself,
  gathered from the pages (the contract's varlen kernel has no prefix; this path is PyTorch).

K and V of every scheduled token are written into the paged cache first (``write_kv_cache``), at the
slots the block tables give. Logits are computed only for the rows that sample. On a GPU, steps
made only of decodes replay a CUDA graph captured per batch-size bucket (``decode_graphs``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase0_prototype.model import apply_rope, rms_norm, rope_cache, swiglu
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights, fuse
from phase3_paged_attention import allocate_kv_cache, default_impl
from phase4_scheduler.plan import ScheduledChunk, StepPlan
from phase4_scheduler.request import Request


def prefix_chunk_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: list[int],
                           start: int) -> torch.Tensor:
    """Queries of positions ``[start, start + n)`` over cached positions ``[0, start + n)``, causal."""
    n, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    end = start + n
    pages = torch.tensor(block_table[: -(-end // bs)], device=q.device, dtype=torch.long)
    k = k_cache[pages].reshape(-1, hkv, d)[:end].transpose(0, 1)  # [Hkv, end, D]
    v = v_cache[pages].reshape(-1, hkv, d)[:end].transpose(0, 1)
    groups = hq // hkv
    k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
    mask = torch.arange(end, device=q.device)[None, :] <= torch.arange(start, end, device=q.device)[:, None]
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask)  # [Hq, n, D]
    return o.transpose(0, 1)


class StepInputs:
    """Host-side layout of one step: chunks reordered (decodes, fresh prefills, later chunks)."""

    def __init__(self, plan: StepPlan, block_size: int, device: torch.device):
        chunks = plan.chunks
        self.decodes = [c for c in chunks if c.num_tokens == 1 and c.start > 0]
        rest = [c for c in chunks if not (c.num_tokens == 1 and c.start > 0)]
        self.fresh = [c for c in rest if c.start == 0]
        self.later = [c for c in rest if c.start > 0]
        self.ordered: list[ScheduledChunk] = self.decodes + self.fresh + self.later
        tokens, positions, slots, last_rows = [], [], [], []
        for c in self.ordered:
            tokens += c.token_ids
            for p in range(c.start, c.end):
                positions.append(p)
                slots.append(c.block_table[p // block_size] * block_size + p % block_size)
            if c.sample:
                last_rows.append(len(tokens) - 1)
        as_long = dict(dtype=torch.long, device=device)
        self.tokens, self.positions = torch.tensor(tokens, **as_long), torch.tensor(positions, **as_long)
        self.slots, self.sample_rows = torch.tensor(slots, **as_long), torch.tensor(last_rows, **as_long)
        self.sampled: list[Request] = [c.request for c in self.ordered if c.sample]
        nd = len(self.decodes)
        if nd:
            width = max(len(c.block_table) for c in self.decodes)
            self.block_tables = torch.tensor([c.block_table + [0] * (width - len(c.block_table)) for c in self.decodes],
                                             dtype=torch.int32, device=device)
            self.context_lens = torch.tensor([c.end for c in self.decodes], dtype=torch.int32, device=device)
            self.max_context = max(c.end for c in self.decodes)
        lens = [c.num_tokens for c in self.fresh]
        self.cu_seqlens = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist() if lens else []),
                                       dtype=torch.int32, device=device)
        self.max_fresh = max(lens, default=0)
        self.num_decode_tokens = nd
        self.num_fresh_tokens = sum(lens)


class PagedModelRunner:
    """Weights (phase 0's fused layout), a paged KV cache per layer, and the batched forward pass."""

    def __init__(self, model: LoadedModel, num_blocks: int, block_size: int = 16, *, attention=None,
                 cuda_graphs: bool = True, graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)):
        cfg = self.config = model.config
        self.model, self.device, self.dtype = model, model.device, model.dtype
        self.block_size, self.num_blocks = block_size, num_blocks
        self.weights: LlamaWeights = fuse(model.state, cfg)
        self.cos, self.sin = rope_cache(cfg, cfg.max_position_embeddings, self.device)
        self.attention = attention or default_impl(self.device)
        self.kv = [allocate_kv_cache(num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim, self.dtype,
                                     self.device) for _ in range(cfg.num_hidden_layers)]
        for k, v in self.kv:  # never read unwritten memory as NaN in a masked-out lane
            k.zero_()
            v.zero_()
        self.graphs = None
        if cuda_graphs and self.device.type == "cuda":
            from phase4_scheduler.decode_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, graph_batch_sizes)

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.config.max_position_embeddings // self.block_size)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> tuple[list[Request], torch.Tensor]:
        """Run ``plan``: the requests that sample, in order, and their logits ``[n, vocab]`` (fp32)."""
        if plan.empty:
            return [], torch.empty(0, self.config.vocab_size, device=self.device)
        inputs = StepInputs(plan, self.block_size, self.device)
        if self.graphs is not None and not inputs.fresh and not inputs.later and self.graphs.fits(len(inputs.decodes)):
            return inputs.sampled, self.graphs.run(inputs)
        return inputs.sampled, self.forward(inputs)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        x = self.weights.embed_tokens[inputs.tokens]
        for i in range(self.config.num_hidden_layers):
            x = self.layer(i, x, inputs)
        h = rms_norm(x[inputs.sample_rows], self.weights.norm, self.config.rms_norm_eps)
        return F.linear(h, self.weights.lm_head).float()

    def layer(self, i: int, x: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        cfg, w = self.config, self.weights.layers[i]
        n, hq, hkv, d = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h = rms_norm(x, w.input_norm, cfg.rms_norm_eps)
        q, k, v = F.linear(h, w.qkv_proj).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q, k = apply_rope(q.view(1, n, hq, d), k.view(1, n, hkv, d), self.cos, self.sin, inputs.positions[None])
        q, k, v = q[0].contiguous(), k[0].contiguous(), v.reshape(n, hkv, d).contiguous()
        attn = self.attend(i, q, k, v, inputs)
        x = x + F.linear(attn.view(n, hq * d), w.o_proj)
        h = rms_norm(x, w.post_norm, cfg.rms_norm_eps)
        gate, up = F.linear(h, w.gate_up_proj).chunk(2, dim=-1)
        return x + F.linear(swiglu(gate, up), w.down_proj)

    def attend(self, i: int, q, k, v, inputs: StepInputs) -> torch.Tensor:
        k_cache, v_cache = self.kv[i]
        impl = self.attention
        impl.write_kv_cache(k, v, k_cache, v_cache, inputs.slots)
        out = torch.empty_like(q)
        nd, nf = inputs.num_decode_tokens, inputs.num_fresh_tokens
        if nd:
            impl.paged_decode_attention(q[:nd], k_cache, v_cache, inputs.block_tables, inputs.context_lens,
                                        max_context_len=inputs.max_context, out=out[:nd])
        if nf:
            sl = slice(nd, nd + nf)
            impl.varlen_prefill_attention(q[sl], k[sl], v[sl], inputs.cu_seqlens, inputs.max_fresh, out=out[sl])
        row = nd + nf
        for c in inputs.later:
            out[row:row + c.num_tokens] = prefix_chunk_attention(q[row:row + c.num_tokens], k_cache, v_cache,
                                                                 c.block_table, c.start)
            row += c.num_tokens
        return out
