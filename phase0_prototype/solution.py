"""The fast engine: static KV cache, fused projections, a decode step of hand-written Triton kernels replayed
as one CUDA graph.

At batch 1 a decode step reads every weight once for 2 FLOPs per weight: its limit is *bytes per token /
copy bandwidth* (MBU, gpt-fast's "achieved GB/s"). Four things stand between eager PyTorch and that limit:

1. **Recomputation** — the KV cache: K and V of past positions are written once into a preallocated
   ``[layers, 2, batch, kv_heads, max_seq_len, head_dim]`` tensor, so a step processes one token.
2. **Launch overhead** — q/k/v and gate/up are fused into one matrix each (``weights.fuse``) and the whole
   step is captured once in a CUDA graph (static shapes: the kernels mask the cache slots not yet written).
3. **Bandwidth per kernel** — cuBLAS and inductor's reductions stream these small projections well below
   copy bandwidth, so inside the graph the step is six Triton kernels per layer (``kernels/step.py``); a model
   or batch they do not take falls back to ``torch.compile`` of the PyTorch step (``decode_step``).
4. **Host work per token** — the graph ends in ``kernels/greedy.py`` (argmax, EOS, feedback, position), so a
   greedy token is one replay; the host reads tokens every ``sync_every`` and launches the next step first.

Eager (CPU, ``compile=False``) runs the PyTorch step. Plug-in points: ``rope_fn`` (phase 2's RoPE; with the
Triton step it runs between the projection and the attention kernel) and ``self.weights`` (the fused
layout). Figures: ``reports/phase0_prototype/``; variants compared on the way: ``dev/`` and ``NOTES.md``.
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
from phase0_prototype.model import RopeFn, apply_rope, decoder_layer, repeat_kv, rms_norm, rope_cache
from phase0_prototype.sampling import GREEDY, SamplingParams, sample
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights, fuse


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of a fresh prompt over itself: q ``[B,T,Hq,D]``, k/v ``[B,T,Hkv,D]`` ->
    ``[B,T,Hq·D]``."""
    B, T, Hq, D = q.shape
    groups = Hq // k.shape[2]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(k.transpose(1, 2), groups),
                                         repeat_kv(v.transpose(1, 2), groups), is_causal=True)
    return out.transpose(1, 2).reshape(B, T, Hq * D)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    """One query per sequence over its cached keys: q ``[B,Hq,D]``, caches ``[B,Hkv,S,D]``, ``lengths [B]``
    (valid positions, the current one included) -> ``[B, Hq·D]``.

    Static shapes for the CUDA graph: all S cache slots are scored and the unwritten ones masked, so the
    graph never changes; the query heads of a group share one K/V read (GQA) through the reshape.
    """
    B, Hq, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    qg = q.view(B, Hkv, Hq // Hkv, D)
    scores = torch.matmul(qg, k_cache.transpose(-1, -2)).float() * (D ** -0.5)  # [B, Hkv, G, S]
    valid = torch.arange(S, device=q.device)[None, :] < lengths[:, None]  # [B, S]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1).to(v_cache.dtype)
    return torch.matmul(probs, v_cache).reshape(B, Hq * D)


def gemv_reduction(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` for a handful of rows, as a reduction inductor compiles (fp32 accumulation):
    one bandwidth-bound kernel per projection with the casts and residual add fused in, where cuBLAS would
    run a GEMM tuned for larger M. Only inside torch.compile: eagerly it materialises an fp32 weight."""
    return (x.unsqueeze(-2).float() * weight.float()).sum(-1).to(x.dtype)


class DecodeGraph:
    """One captured decode step and the static buffers it reads and writes (per batch size).

    The graph runs the step on ``token_in`` at ``position_in`` (``logits`` is its output), then
    ``kernels.greedy.greedy_tail``: argmax, EOS (``eos``, ``finished``, ``pad``), ``token_in`` ← the token,
    ``position_in`` += 1, ``history[b, position] = token``. Replaying it again is the next greedy step.
    Sampled decoding overwrites the token from the host after each replay.
    """

    EOS_SLOTS = 8

    def __init__(self, token_in, position_in, finished, eos, pad, history):
        self.token_in, self.position_in, self.finished = token_in, position_in, finished
        self.eos, self.pad = eos, pad
        self.history = history  # [batch, max_seq_len]: the token at each position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    @classmethod
    def allocate(cls, batch: int, max_seq_len: int, device: torch.device) -> DecodeGraph:
        def longs(*shape):
            return torch.zeros(*shape, dtype=torch.long, device=device)

        return cls(longs(batch), longs(batch), torch.zeros(batch, dtype=torch.uint8, device=device),
                   torch.full((cls.EOS_SLOTS,), -1, dtype=torch.long, device=device), longs(batch),
                   longs(batch, max_seq_len))

    def start(self, first: torch.Tensor, position: int, eos_ids, host_eos: EosState) -> None:
        """Load a generation's state: its first token at ``position``, the EOS ids the graph applies (none
        when the host samples or EOS is ignored), and the finished flags and padding of ``host_eos``."""
        ids = list(eos_ids)
        if len(ids) > self.EOS_SLOTS:
            from phase0_prototype.errors import ModelError

            raise ModelError(f"{len(ids)} EOS ids; the decode graph holds at most {self.EOS_SLOTS}")
        self.token_in.copy_(first)
        self.position_in.fill_(position)
        self.eos.fill_(-1)
        if ids:
            self.eos[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.finished.copy_(host_eos.finished)
        self.pad.copy_(host_eos.pad)


class SolutionEngine:
    """``Engine`` contract (see ``phase0_prototype``) over a static KV cache.

    Hooks for subclasses (phase 5's INT4 engine, ``dev/``): ``_layer``/``_logits`` (the PyTorch forward),
    ``_triton_for`` (which batches run the Triton step) and ``_step_for`` (the step a graph captures).
    """

    name = "solution"
    reduction_rows = 4  # up to this batch the compiled PyTorch step writes x·Wᵀ as ``gemv_reduction``

    def __init__(self, model: LoadedModel, *, max_batch_size: int = 1, max_seq_len: int | None = None,
                 compile: bool = True, rope_fn: RopeFn | None = None, sync_every: int = 16,
                 weights: LlamaWeights | None = None):
        """``weights``: the model's layers already in the fused layout, possibly with other projection objects
        (phase 5's INT4); by default ``fuse(model.state)``."""
        cfg = self.config = model.config
        self.model, self.device, self.dtype = model, model.device, model.dtype
        self.max_seq_len = min(max_seq_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.max_batch_size, self.sync_every = max_batch_size, sync_every
        self.weights: LlamaWeights = weights if weights is not None else fuse(model.state, cfg)
        self.cos, self.sin = rope_cache(cfg, self.max_seq_len, self.device)
        self.rope_fn = rope_fn or apply_rope
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, max_batch_size, cfg.num_key_value_heads,
                                    self.max_seq_len, cfg.head_dim, dtype=self.dtype, device=self.device)
        self.kv_slots_per_request = self.max_seq_len  # a static cache: the whole context, reserved
        self.use_graphs = compile and self.device.type == "cuda"
        self.mode = "torch.compile + CUDA graph" if self.use_graphs else "eager"
        self._graphs: dict[int, DecodeGraph] = {}  # batch size -> its captured decode step
        # Without a plug-in the attention kernel applies the reference RoPE itself, and Dynamo traces the
        # whole PyTorch step; an external kernel (CuPy) would be a graph break.
        self.fused_rope = self._fullgraph = rope_fn is None
        # At a sync point, launch the next step before the host reads the chunk: the GPU computes meanwhile.
        self.lookahead = self.device.type == "cuda"
        if self._triton_for(max_batch_size):
            self.mode = "Triton kernels + CUDA graph" if self.use_graphs else "Triton kernels, eager"

    # ------------------------------------------------------------------ the two forward passes
    def _layer(self, i: int, x: torch.Tensor, positions: torch.Tensor, attend,
               linear=F.linear) -> torch.Tensor:
        return decoder_layer(self.config, i, self.weights.layers[i], x, positions, self.cos, self.sin, attend,
                             linear=linear, rope=self.rope_fn)

    def _logits(self, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
        return linear(rms_norm(x, self.weights.norm, self.config.rms_norm_eps), self.weights.lm_head)

    def prefill(self, tokens: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Run fresh prompts ``[B, T]``, fill cache positions [0, T); logits of the last (or every)
        position."""
        B, T = tokens.shape
        positions = torch.arange(T, device=tokens.device).expand(B, T)

        def attend(i, q, k, v):
            self.kv_cache[i, 0, :B, :, :T] = k.transpose(1, 2)
            self.kv_cache[i, 1, :B, :, :T] = v.transpose(1, 2)
            return prefill_attention(q, k, v)

        x = self.weights.embed_tokens[tokens]
        for i in range(self.config.num_hidden_layers):
            x = self._layer(i, x, positions, attend)
        return self._logits(x if all_logits else x[:, -1]).float()

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per sequence: ``tokens [B]`` at ``positions [B]`` -> logits ``[B, vocab]``.

        Static shapes and no host reads, so it compiles with ``fullgraph`` and captures in a CUDA graph.
        """
        B = tokens.shape[0]
        rows = torch.arange(B, device=tokens.device)
        cache = self.kv_cache[:, :, :B]

        def attend(i, q, k, v):
            cache[i, 0, rows, :, positions] = k[:, 0]  # [B, Hkv, D] into slot `position` of each row
            cache[i, 1, rows, :, positions] = v[:, 0]
            return decode_attention(q[:, 0], cache[i, 0], cache[i, 1], positions + 1)[:, None]

        reduction = B <= self.reduction_rows and torch.compiler.is_compiling()
        linear = gemv_reduction if reduction else F.linear
        x = self.weights.embed_tokens[tokens][:, None]  # [B, 1, hidden]
        for i in range(self.config.num_hidden_layers):
            x = self._layer(i, x, positions[:, None], attend, linear)
        return self._logits(x[:, 0], linear)

    # ------------------------------------------------------------------ which decode step
    def _triton_for(self, batch: int) -> bool:
        """Whether a decode step of ``batch`` sequences runs the Triton kernels: inside CUDA graphs, when the
        model and batch suit them (else the graph captures the compiled PyTorch step)."""
        if not self.use_graphs:
            return False
        from phase0_prototype.kernels.step import unsupported_reason

        return unsupported_reason(self.config, batch, self.weights) is None

    def _step_for(self, batch: int):
        """The eager decode step function for ``batch`` sequences (what the CUDA graph captures)."""
        if self._triton_for(batch):
            from phase0_prototype.kernels.step import triton_decode_step

            return lambda tokens, positions: triton_decode_step(self, tokens, positions)
        return self.decode_step

    # ------------------------------------------------------------------ CUDA graph of the decode step
    def _graph_for(self, batch: int) -> DecodeGraph:
        if batch not in self._graphs:
            from module0_profiling.timing import capture_cuda_graph

            step = self._step_for(batch)
            if step == self.decode_step:  # the PyTorch step is compiled; the Triton one is already kernels
                step = torch.compile(self.decode_step, fullgraph=self._fullgraph, dynamic=False)
            g = DecodeGraph.allocate(batch, self.max_seq_len, self.device)
            body = self._decode_body(g, step)
            saved = self.kv_cache.clone()  # warm-up steps write slots 0-3; keep the cache as it was
            side = torch.cuda.Stream()  # compile + autotune (the tail kernel too) outside the capture
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    body()  # advances position_in / history: harmless, every generate loads its own state
            torch.cuda.current_stream().wait_stream(side)
            # cuBLAS keeps a workspace per stream outside any graph pool. A graph that captured kernels using
            # it breaks when someone frees it (torch.compile's cudagraph trees clear the workspaces; the
            # next empty_cache returns the memory): clear first so the capture allocates its own workspace
            # in the graph's private pool, and again after so eager code never shares that memory.
            _clear_cublas_workspaces()
            g.graph = capture_cuda_graph(body, warmup=0)
            _clear_cublas_workspaces()
            self.kv_cache.copy_(saved)
            del saved
            self._graphs[batch] = g
        return self._graphs[batch]

    @staticmethod
    def _decode_body(g: DecodeGraph, step):
        """What the graph captures: the step, then the greedy tail on its logits (``DecodeGraph``)."""
        from phase0_prototype.kernels.greedy import greedy_tail

        def body() -> None:
            g.logits = step(g.token_in, g.position_in)
            greedy_tail(g.logits, g.token_in, g.position_in, g.finished, g.eos, g.pad, g.history)

        return body

    def warmup(self, batch: int = 1) -> None:
        """Compile and capture ahead of time (the first ``generate`` would otherwise pay for it)."""
        if self.use_graphs:
            with torch.inference_mode():
                self._graph_for(batch)

    # ------------------------------------------------------------------ the Engine contract
    @torch.inference_mode()
    def forward_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = as_batch(tokens, self.device)
        check_context(tokens.shape[1], 1, self.max_seq_len + 1)  # the prompt alone must fit
        self._check_batch(tokens.shape[0])
        return self.prefill(tokens, all_logits=True)

    def _check_batch(self, batch: int) -> None:
        if batch > self.max_batch_size:
            from phase0_prototype.errors import ModelError

            raise ModelError(f"batch of {batch} exceeds max_batch_size={self.max_batch_size} of this engine")

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, sampling: SamplingParams = GREEDY, *,
                 on_tokens: TokenCallback | None = None, stop_on_eos: bool = True,
                 eos_ids: tuple[int, ...] | None = None) -> GenerationOutput:
        tokens = as_batch(prompt_ids, self.device)
        B, T = tokens.shape
        check_context(T, max_new_tokens, self.max_seq_len, "this engine's KV cache")
        self._check_batch(B)
        eos_ids = self.model.tokenizer.eos_ids if eos_ids is None else eos_ids
        eos = EosState(B, eos_ids if stop_on_eos else (), self.device)
        generator = sampling.generator(self.device)
        next_tokens = eos.update(sample(self.prefill(tokens), sampling, generator))
        if self.use_graphs:
            # The graph's buffers are the live state. Its last kernel (``kernels.greedy``) takes the argmax,
            # applies EOS, feeds the token back into token_in, advances position_in and records the token in
            # ``history`` — so a greedy token costs one replay and nothing else. Sampling overwrites the
            # argmax's choice from the host (and then the graph's EOS list is empty: the host tracks EOS).
            g = self._graph_for(B)
            in_graph = sampling.greedy  # the graph's own kernel picks, applies EOS and records
            g.start(next_tokens, T, eos_ids if stop_on_eos and in_graph else (), eos)
            out = g.history[:, T:T + max_new_tokens]  # out[:, i] is the token at position T + i
            out[:, 0] = next_tokens
            finished = g.finished if in_graph else eos.finished

            def advance() -> None:
                g.graph.replay()
                if not in_graph:
                    tok = sample(g.logits, sampling, generator)
                    g.token_in.copy_(eos.update(tok) if stop_on_eos else tok)
                    out[:, i] = g.token_in
        else:
            out = torch.empty(B, max_new_tokens, dtype=torch.long, device=self.device)
            out[:, 0] = next_tokens
            finished = eos.finished
            step = self._step_for(B)
            position = torch.full((B,), T, dtype=torch.long, device=self.device)

            def advance() -> None:
                nonlocal next_tokens
                next_tokens = eos.update(sample(step(next_tokens, position), sampling, generator))
                position.add_(1)
                out[:, i] = next_tokens

        look = on_tokens is not None or stop_on_eos  # the host reads the tokens at each sync point
        emitted = 0 if look else max_new_tokens  # (no reader: no sync point until the end)
        for i in range(1, max_new_tokens + 1):
            launched = False
            # Hand a chunk to the host after the first token (time to first token) and every sync_every.
            if look and (i == max_new_tokens or i == 1 or i % self.sync_every == 0):
                chunk = out[:, emitted:i].to("cpu", non_blocking=True)  # pinned: ready when `copied` is
                done = finished.all().to("cpu", non_blocking=True) if stop_on_eos else None
                copied = torch.cuda.Event() if self.device.type == "cuda" else None
                if copied is not None:
                    copied.record()
                if self.lookahead and i < max_new_tokens:
                    # Launch the next step before looking: the GPU computes it while the host turns this
                    # chunk into text (or finds EOS, and the extra step is discarded).
                    advance()
                    launched = True
                if copied is not None:
                    copied.synchronize()
                emitted = i
                if on_tokens is not None and on_tokens(chunk):
                    break  # the caller has what it needs (a stop string matched, its reader left)
                if done is not None and bool(done):
                    break
            if i == max_new_tokens:
                break
            if not launched:
                advance()
        return finish(out[:, :emitted], eos_ids, stop_on_eos)


def _clear_cublas_workspaces() -> None:
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def build(model: LoadedModel, **options) -> SolutionEngine:
    return SolutionEngine(model, **options)
