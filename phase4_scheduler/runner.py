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
slots the block tables give. Logits are computed only for the rows that sample. On a GPU the layer's
glue (residual add + RMSNorm, RoPE + q/k/v split + cache write, SwiGLU) runs as three fused Triton
kernels (``kernels.fused``: ten launches a layer instead of ~44); on CPU it is phase 0's PyTorch.

``launch(plan, sampler)`` is what the engine calls: it sends the step's inputs with one asynchronous
copy (``step_inputs``), runs the forward pass (a CUDA graph replay for decode-only steps, one per
batch-size bucket: ``decode_graphs``), samples on the device into ``last_tokens`` and starts copying
the tokens back; nothing in it waits for the GPU, so the host can plan the next step meanwhile.
``PendingStep.tokens()`` waits for them. A token the host has not read yet can be the next step's
input: the forward pass takes it from ``last_tokens`` (``src`` rows), so steps chain on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import attrgetter

import numpy as np
import torch
import torch.nn.functional as F

from phase0_prototype.kernels.gemv import MAX_BATCH, fused_gemv
from phase0_prototype.kernels.step import FusedLinear, fused_decode_step
from phase0_prototype.model import Linear, RopeFn, apply_rope, decoder_layer, rms_norm, rope_cache
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights, fuse
from phase3_paged_attention import allocate_kv_cache, default_impl
from phase4_scheduler.blocks import check_kv_memory
from phase4_scheduler.plan import StepPlan
from phase4_scheduler.request import Request
from phase4_scheduler.step_inputs import WIDTH_ALIGN, DeviceStep, HostStep, upload

_request_id = attrgetter("request_id")

DEFAULT_GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)


def graph_sizes_for(max_batch: int) -> tuple[int, ...]:
    """Buckets up to ``max_batch``: powers of two to 32, then every 16 (at most 15 padding rows)."""
    sizes = [b for b in (1, 2, 4, 8, 16, 24, 32) if b < max_batch] + list(range(48, max_batch, 16))
    return tuple(sorted(set(sizes + [max_batch])))


def later_chunk_attention(impl, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pages: torch.Tensor,
                          cu_seqlens: torch.Tensor, start: int) -> torch.Tensor:
    """Queries of positions ``[start, start + n)`` over cached positions ``[0, start + n)``, causal, through
    the contract's varlen prefill kernel (a handful of launches): the request's K/V of positions ``[0, end)`` gathered from its pages (this chunk's rows are already
    written) as one causal sequence, queries for positions ``[0, start)`` zero and their rows dropped.
    ``cu_seqlens``: the device int32 ``[0, end]``. Computes ``end²`` scores for ``n · end`` useful ones:
    nothing beside the step at TinyLlama's context."""
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    end = start + n
    k = k_cache[pages].view(-1, hkv, d)[:end]
    v = v_cache[pages].view(-1, hkv, d)[:end]
    q_full = q.new_zeros(end, hq, d)
    q_full[start:] = q
    return impl.varlen_prefill_attention(q_full, k, v, cu_seqlens, end)[start:]


class RowsById(Mapping):
    """Request id -> row of ``sampled`` (the dict is built on first use: a step of columnar decodes
    finds its rows by seat and never asks)."""

    def __init__(self, sampled: list[Request]):
        self._sampled, self._rows = sampled, None

    def _dict(self) -> dict[int, int]:
        if self._rows is None:
            self._rows = dict(zip(map(_request_id, self._sampled), range(len(self._sampled)), strict=True))
        return self._rows

    def __getitem__(self, request_id: int) -> int:
        return self._dict()[request_id]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._sampled)


class PendingStep:
    """A launched step: which requests sample (in row order) and their tokens once the copy lands."""

    def __init__(self, plan: StepPlan, sampled: list[Request], host_tokens: torch.Tensor | None,
                 event: torch.cuda.Event | None, logprobs: dict | None = None):
        self.plan, self.sampled, self._host, self._event = plan, sampled, host_tokens, event
        self._logprobs = logprobs or {}  # request id -> device (chosen, top) of the rows that asked

    def logprobs(self) -> dict[int, tuple[float, list[tuple[int, float]]]]:
        """Request id -> (the sampled token's logprob, [(token id, logprob)] of the top k): call after
        ``tokens`` (the step has finished then, so these small reads do not wait)."""
        out = {}
        for rid, (chosen, top) in self._logprobs.items():
            pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
            out[rid] = (float(chosen), pairs)
        return out


    def tokens(self) -> list[int]:
        if self._host is None:
            return []
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


class PagedModelRunner:
    """Weights (phase 0's fused layout), a paged KV cache per layer, and the batched forward pass.

    Every projection is ``linear(x, weight)``: ``F.linear`` over the float matrices by default. Another
    implementation of the model's linear layers (phase 5's INT4 ``QuantLinear``) comes in as ``weights``
    whose projection fields hold its objects and ``linear=lambda x, w: w(x)`` — a transform of the one
    model, as gpt-fast's ``quantize``: the scheduler, KV cache and attention do not change. ``rope`` is a
    RoPE kernel (phase 2's) in place of the reference."""

    def __init__(self, model: LoadedModel, num_blocks: int, block_size: int = 16, *, attention=None,
                 cuda_graphs: bool = True, graph_batch_sizes: tuple[int, ...] = DEFAULT_GRAPH_SIZES,
                 max_num_seqs: int = 0, fused: bool | None = None, num_cpu_blocks: int = 0,
                 weights: LlamaWeights | None = None, linear: Linear = F.linear, gemv: FusedLinear | None = fused_gemv,
                 gemv_rows: int = MAX_BATCH, rope: RopeFn | None = None, max_model_len: int | None = None):
        cfg = self.config = model.config
        # The longest context a request may reach: the graphs' block-table width, and the length phase 3's
        # decode kernel splits for (a graph cannot know the step's real longest context).
        self.max_model_len = min(max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.model, self.device, self.dtype = model, model.device, model.dtype
        self.block_size, self.num_blocks = block_size, num_blocks
        self.weights: LlamaWeights = weights if weights is not None else fuse(model.state, cfg)
        self.linear = linear
        # Decode-only steps of up to gemv_rows rows run phase 0's fused step (norm, residual and SwiGLU fused
        # into bandwidth-bound GEMVs: a lone request's step) where the fused kernels run; None: never.
        self.gemv, self.gemv_rows = gemv, gemv_rows if gemv is not None else 0
        # None: the reference RoPE, which the fused kernels apply themselves; a plug-in (phase 2's CUDA
        # kernel) runs between the projection and the cache write, on the plain path.
        self.rope = rope or apply_rope
        # Called with the step's inputs before every forward pass; tensor parallelism's rank 0 sends them
        # to the other ranks' runners there (``shared.tp_workers``).
        self.on_forward: Callable[[DeviceStep], None] | None = None
        self.cos, self.sin = rope_cache(cfg, cfg.max_position_embeddings, self.device)
        self.attention = attention or default_impl(self.device)
        # Triton's fused norm / RoPE+cache / SwiGLU kernels on a GPU (``kernels.fused``); PyTorch on CPU.
        self.fused = (self.device.type == "cuda" and rope is None) if fused is None else fused
        if self.fused and rope is not None:
            raise ValueError("the fused kernels apply the reference RoPE: a RoPE plug-in needs fused=False")
        per_layer = 2 * num_blocks * block_size * cfg.num_key_value_heads * cfg.head_dim * self.dtype.itemsize
        check_kv_memory(per_layer * cfg.num_hidden_layers, self.device, f"a KV cache of {num_blocks} blocks")
        self.kv = [allocate_kv_cache(num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim, self.dtype,
                                     self.device) for _ in range(cfg.num_hidden_layers)]
        for k, v in self.kv:  # never read unwritten memory as NaN in a masked-out lane
            k.zero_()
            v.zero_()
        # The host pool of preemption by swap (``kv_swap``): the plan's block copies run before the forward.
        self.swap_space = None
        if num_cpu_blocks:
            from phase4_scheduler.kv_swap import KVSwapSpace

            self.swap_space = KVSwapSpace(self.kv, num_cpu_blocks)
        # Every step's sampled tokens, row i = the i-th sampling request of the step: read back by the
        # host, and read by the next step's forward for tokens the host has not seen yet (``src``).
        rows = max(max(graph_batch_sizes), max_num_seqs, 1)
        self.last_tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        # Where the last launch's samples sit in last_tokens: by request id, and by table-row seat (an
        # array, so a step of decodes finds its rows in one gather; -1: no row).
        self.prev_rows: Mapping[int, int] = {}
        self.prev_seat_rows = np.full(max(max_num_seqs, 1), -1, dtype=np.int64)
        self._seat_rows_valid = False
        self.graphs = None
        if cuda_graphs and self.device.type == "cuda":
            from phase4_scheduler.decode_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, graph_batch_sizes)

    def _seat_rows(self) -> np.ndarray | None:
        return self.prev_seat_rows if self._seat_rows_valid else None

    @property
    def max_blocks_per_seq(self) -> int:
        """Block-table width of a graph bucket: the longest context, rounded to ``WIDTH_ALIGN``."""
        blocks = -(-self.max_model_len // self.block_size)
        return -(-blocks // WIDTH_ALIGN) * WIDTH_ALIGN

    # ------------------------------------------------------------------ one step
    def _host_step(self, plan: StepPlan) -> tuple[HostStep, int | None]:
        """The packed inputs, laid out for a graph bucket when the step can replay one."""
        g = self.graphs
        if g is not None and self._graph_eligible(plan):
            # decode-only, every row samples: a graph bucket's layout
            bucket = g.bucket(len(plan.decode_requests) + len(plan.explicit_chunks))
            return HostStep(plan, self.block_size, self.prev_rows, pad_to=bucket, width=self.max_blocks_per_seq,
                            prev_seat_rows=self._seat_rows()), bucket
        return HostStep(plan, self.block_size, self.prev_rows, prev_seat_rows=self._seat_rows()), None

    def _graph_eligible(self, plan: StepPlan) -> bool:
        """Decode-only, every row samples, at most the largest bucket's rows."""
        if not self.graphs.fits(len(plan.decode_requests) + len(plan.explicit_chunks)) or 0 in plan.decode_starts:
            return False
        return all(c.num_tokens == 1 and c.start > 0 and c.sample for c in plan.explicit_chunks)

    @torch.inference_mode()
    def launch(self, plan: StepPlan, sampler) -> PendingStep:
        """Run ``plan`` and sample on the device without waiting; ``PendingStep.tokens()`` reads them."""
        if plan.swap_out or plan.swap_in:
            self.swap(plan)
        if plan.empty:
            return PendingStep(plan, [], None, None)
        host, bucket = self._host_step(plan)
        ns = len(host.sampled)
        if self.last_tokens.shape[0] < ns:  # more sampling rows than max_num_seqs said
            if self.graphs is not None and self.graphs._graphs:
                raise RuntimeError(f"{ns} sampling rows exceed the {self.last_tokens.shape[0]} the captured graphs "
                                   "were built for: pass max_num_seqs to PagedModelRunner")
            grown = torch.zeros(ns, dtype=torch.long, device=self.device)
            grown[: self.last_tokens.shape[0]] = self.last_tokens
            self.last_tokens = grown
        if bucket is not None:
            logits = self.graphs.replay(host, bucket)  # writes greedy tokens into last_tokens[:bucket]
        else:
            inputs = upload(host, self.device, block_size=self.block_size)
            logits = self.forward(inputs)
            if ns:
                torch.argmax(logits, dim=-1, out=self.last_tokens[:ns])
        sampler.sample_rows(host.sampled, logits, self.last_tokens)
        pending = PendingStep(plan, host.sampled, *self._read_back(ns), logprobs=sampler.take_logprobs())
        self.prev_rows = RowsById(host.sampled)
        seats = host.sampled_seats
        self._seat_rows_valid = seats is not None  # else the next step looks its rows up by request id
        if seats is not None and len(seats):
            if int(seats.max()) >= len(self.prev_seat_rows):
                grown = np.full(2 * int(seats.max()) + 1, -1, dtype=np.int64)
                grown[: len(self.prev_seat_rows)] = self.prev_seat_rows
                self.prev_seat_rows = grown
            self.prev_seat_rows[seats] = np.arange(ns)
        return pending

    def swap(self, plan: StepPlan) -> None:
        """The step's swap copies (GPU -> CPU pool, then CPU pool -> GPU), queued before its forward."""
        if self.swap_space is None:
            raise RuntimeError("the plan swaps KV blocks but the runner has no CPU pool: pass num_cpu_blocks")
        self.swap_space.apply(plan.swap_out, plan.swap_in)

    def _read_back(self, n: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if self.device.type != "cuda":
            return self.last_tokens[:n].clone(), None
        out = torch.empty(n, dtype=torch.long, pin_memory=True)
        out.copy_(self.last_tokens[:n], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return out, event

    # ------------------------------------------------------------------ the forward pass
    def input_tokens(self, inputs: DeviceStep) -> torch.Tensor:
        """Token ids of the rows; those still on the device come from the previous step's samples."""
        if not inputs.resolve_pending:
            return inputs.tokens
        src = inputs.src
        return torch.where(src >= 0, self.last_tokens[src.clamp(min=0)], inputs.tokens)

    def forward(self, inputs: DeviceStep) -> torch.Tensor:
        """Logits (fp32) of the sampling rows (all rows when ``inputs.sample_rows`` is None)."""
        if self.on_forward is not None:
            self.on_forward(inputs)
        x = self.weights.embed_tokens[self.input_tokens(inputs)]
        decode_kwargs = self._decode_kwargs(inputs)
        if self.fused and inputs.num_decode_tokens == x.shape[0] <= self.gemv_rows:
            return self._forward_decode_gemv(x, inputs, decode_kwargs)
        if self.fused:
            return self._forward_fused(x, inputs, decode_kwargs)
        for i in range(self.config.num_hidden_layers):
            x = self.layer(i, x, inputs, decode_kwargs)
        if inputs.sample_rows is not None:
            x = x[inputs.sample_rows]
        h = rms_norm(x, self.weights.norm, self.config.rms_norm_eps)
        return self.linear(h, self.weights.lm_head).float()

    def _forward_fused(self, x: torch.Tensor, inputs: DeviceStep, decode_kwargs: dict) -> torch.Tensor:
        """The same layers with ``kernels.fused``: ten kernels a layer instead of ~44 (see there)."""
        from phase4_scheduler.kernels.fused import add_rms_norm, rope_qkv_cache, silu_mul

        cfg, eps = self.config, self.config.rms_norm_eps
        n, hq, hkv, d = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        delta = None  # the previous layer's MLP output, added to x by the next norm
        for i, w in enumerate(self.weights.layers):
            h = add_rms_norm(x, delta, w.input_norm, eps)
            k_cache, v_cache = self.kv[i]
            q, k, v = rope_qkv_cache(self.linear(h, w.qkv_proj), inputs.positions, self.cos, self.sin, hq, hkv, d,
                                     inputs.slots, k_cache, v_cache)
            attn = self.attend(i, q, k, v, inputs, decode_kwargs, write_cache=False)
            h = add_rms_norm(x, self.linear(attn.view(n, hq * d), w.o_proj), w.post_norm, eps)
            delta = self.linear(silu_mul(self.linear(h, w.gate_up_proj)), w.down_proj)
        if inputs.sample_rows is None:
            h = add_rms_norm(x, delta, self.weights.norm, eps)
        else:
            h = add_rms_norm((x + delta)[inputs.sample_rows], None, self.weights.norm, eps)
        return self.linear(h, self.weights.lm_head).float()

    def _forward_decode_gemv(self, x: torch.Tensor, inputs: DeviceStep, decode_kwargs: dict) -> torch.Tensor:
        """A decode-only step of few rows: phase 0's ``fused_decode_step`` (every projection one GEMV streaming
        its weight, norm and residual fused) with RoPE + cache write + paged attention as its ``attend``."""
        from phase4_scheduler.kernels.fused import rope_qkv_cache

        cfg = self.config
        n, hq, hkv, d = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

        def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = self.kv[i]
            q, k, v = rope_qkv_cache(qkv, inputs.positions, self.cos, self.sin, hq, hkv, d, inputs.slots, k_cache,
                                     v_cache)
            return self.attend(i, q, k, v, inputs, decode_kwargs, write_cache=False).view(n, hq * d)

        logits = fused_decode_step(self.weights, x, cfg.rms_norm_eps, attend, self.gemv)
        return (logits if inputs.sample_rows is None else logits[inputs.sample_rows]).float()

    def _decode_kwargs(self, inputs: DeviceStep) -> dict:
        """The attention implementation's fixed decode launch for this step (``decode_launch`` of phase 3's
        contract, when it has one): a step never tunes."""
        launch = getattr(self.attention, "decode_launch", None)
        if not inputs.num_decode_tokens or self.device.type != "cuda" or launch is None:
            return {}
        return launch(inputs.block_tables.shape[0], self.config.num_key_value_heads, inputs.max_context, self.device)

    def layer(self, i: int, x: torch.Tensor, inputs: DeviceStep, decode_kwargs: dict | None = None) -> torch.Tensor:
        """Phase 0's ``decoder_layer`` over the packed rows (one "batch" of ``n`` tokens) and the paged cache."""
        def attend(i, q, k, v):
            n = q.shape[1]
            out = self.attend(i, q[0].contiguous(), k[0].contiguous(), v[0].contiguous(), inputs, decode_kwargs or {})
            return out.view(1, n, -1)

        return decoder_layer(self.config, i, self.weights.layers[i], x[None], inputs.positions[None], self.cos,
                             self.sin, attend, linear=self.linear, rope=self.rope)[0]

    def attend(self, i: int, q, k, v, inputs: DeviceStep, decode_kwargs: dict, write_cache: bool = True) -> torch.Tensor:
        k_cache, v_cache = self.kv[i]
        impl = self.attention
        if write_cache:
            impl.write_kv_cache(k, v, k_cache, v_cache, inputs.slots)
        out = torch.empty_like(q)
        nd, nf = inputs.num_decode_tokens, inputs.num_fresh_tokens
        if nd:
            rows = inputs.block_tables.shape[0]  # a graph bucket runs its padding rows too (length 0)
            impl.paged_decode_attention(q[:rows], k_cache, v_cache, inputs.block_tables, inputs.context_lens,
                                        max_context_len=inputs.max_context, out=out[:rows], **decode_kwargs)
        if nf:
            sl = slice(nd, nd + nf)
            impl.varlen_prefill_attention(q[sl], k[sl], v[sl], inputs.cu_seqlens, inputs.max_fresh, out=out[sl])
        for row, n_rows, start, pages, cu in inputs.later:
            out[row:row + n_rows] = later_chunk_attention(impl, q[row:row + n_rows], k_cache, v_cache, pages, cu, start)
        return out
