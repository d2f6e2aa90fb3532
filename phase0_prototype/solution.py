"""The fast engine: static KV cache, fused projections, a decode step of hand-written Triton kernels replayed
as one CUDA graph.

At batch 1 a decode step does ~2 GFLOP but must read every weight once (2.1 GB for TinyLlama in bf16):
it is bound by memory bandwidth, and the limit it approaches is *bytes per token / copy bandwidth*
(MBU, gpt-fast's "achieved GB/s"). Four things stand between eager PyTorch and that limit:

1. **Recomputation** — the KV cache: K and V of past positions are written once into a preallocated
   ``[layers, 2, batch, kv_heads, max_seq_len, head_dim]`` tensor, so a step processes one token.
2. **Launch overhead** — ~15 kernels per layer launched from Python take longer than the GPU needs to
   run them. q/k/v and gate/up are fused into one matrix each (``weights.fuse``) and the whole step is
   captured once in a CUDA graph (static shapes: the cache has a fixed length and the kernels mask the
   positions not yet written) and replayed with one launch per token.
3. **Bandwidth per kernel** — cuBLAS and inductor's reductions stream a TinyLlama projection at a fraction
   of copy bandwidth, and small glue kernels (RMSNorm, RoPE, cache write, softmax pieces) each cost a few
   µs. ``decode_kernels="triton"`` (the default on CUDA) runs the step as six Triton kernels per layer
   (``kernels/step.py``): GEMVs with RMSNorm/residual/SwiGLU fused in, and one RoPE + cache-write +
   split attention kernel plus its merge. ``decode_kernels="inductor"`` keeps the earlier path:
   ``torch.compile`` of the PyTorch step (``gemv="reduction"`` writes x·Wᵀ as a reduction inductor fuses).
4. **Host work per token** — nothing reads the device per token, and a greedy token costs one graph replay:
   the graph ends in one small kernel (``kernels/greedy.py``) that takes the argmax, applies EOS, feeds
   the token back into the graph's input, advances the position and records the token (``DecodeGraph``).
   The host looks at the tokens every ``sync_every`` tokens (EOS check, streaming callback), and launches
   the next step before it does, so the GPU computes while the host turns a chunk into text; the CPU runs
   ahead and keeps the GPU fed. Sampled decoding draws from the graph's logits on the host side instead.

Measured on an H100 (random:tinyllama bf16, prompt 512, 128 new tokens, ``scripts/gpu_pdl_variants.py``):
the first Triton step, 1.20 ms/token (58 % MBU, ~2.4× HF's compiled static-cache generate); with
programmatic dependent launch — each kernel requests its first weight slab before waiting for the previous
kernel, so launch and ramp-up overlap the previous tail — and whole-row GEMV tiles, 1.09 ms of graph replay;
with the attention products on tensor cores, 1.06 ms/token = 65 % MBU; with every kernel letting the next
one launch *before* it waits for its own inputs (so the next kernel's programs are resident and streaming
weights while this one finishes: the output projection's weights arrive during the attention), 0.979
ms/token = 70.8 % (graph replay alone 960 µs = 72 %); with tiles per projection and fewer registers per
GEMV program (``gemv.default_config``: more programs resident, waiting with their weights in hand), 0.90–0.92
ms/token = 76–77 % (graph replay 899–917 µs). The inductor step, in a separate run of
``scripts/gpu_triton_decode.py``, 582 tok/s = 40 % (~360 kernels). What is left between 77 % and the roof:
attention + merge still cost ~80 µs per token (the step without them, a diagnostic, takes 823 µs: the
attention's latency leaves the memory idle), and the small GEMVs (qkv, o: 8–10 MB, ~3 µs of reads each) pay
a ramp-up and tail comparable to their reads (62–69 % of copy bandwidth each, against 83–93 % for gate_up
and down; ``scripts/gpu_gemv_ops.py``).

On a CPU (tests) the step runs eagerly in PyTorch; ``decode_kernels="triton"`` runs the Triton kernels
there too under ``TRITON_INTERPRET=1`` (slow; for tests).

Plug-in points for later phases: ``rope_fn`` (any ``model.RopeFn``; phase 2's CUDA RoPE keeps greedy tokens
identical; with the Triton step it runs between the projection and the attention kernel),
``decode_attention``/``prefill_attention`` (phase 3 swaps in paged attention; replacing
``decode_attention`` in this module switches the decode step to the PyTorch/inductor path, which calls it),
and ``self.weights`` (``weights.LlamaWeights``, the documented fused layout).
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
from phase0_prototype.weights import LlamaWeights, fuse


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of a fresh prompt over itself: q ``[B,T,Hq,D]``, k/v ``[B,T,Hkv,D]`` -> ``[B,T,Hq·D]``."""
    B, T, Hq, D = q.shape
    groups = Hq // k.shape[2]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(k.transpose(1, 2), groups),
                                         repeat_kv(v.transpose(1, 2), groups), is_causal=True)
    return out.transpose(1, 2).reshape(B, T, Hq * D)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
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
    """``F.linear(x, weight)`` for a handful of rows, as a reduction inductor compiles (fp32 accumulation).
    Only inside torch.compile: run eagerly it would materialise an fp32 copy of the weight."""
    return (x.unsqueeze(-2).float() * weight.float()).sum(-1).to(x.dtype)


class DecodeGraph:
    """One captured decode step and the static buffers it reads and writes (per batch size).

    The graph runs the step on ``token_in`` at ``position_in`` (``logits`` is its output), then
    ``kernels.greedy.greedy_tail``: argmax, EOS (``eos``, ``finished``, ``pad``), ``token_in`` ← the token,
    ``position_in`` += 1, ``history[b, position] = token``. Replaying it again is the next greedy step.
    """

    EOS_SLOTS = 8

    def __init__(self, token_in, position_in, finished, eos, pad, history):
        self.token_in, self.position_in, self.finished, self.eos, self.pad = token_in, position_in, finished, eos, pad
        self.history = history  # [batch, max_seq_len]: the token at each position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.tail = True  # the greedy tail is captured in the graph (False: the host runs it after each replay)

    @classmethod
    def allocate(cls, batch: int, max_seq_len: int, device: torch.device) -> DecodeGraph:
        def longs(*shape):
            return torch.zeros(*shape, dtype=torch.long, device=device)

        return cls(longs(batch), longs(batch), torch.zeros(batch, dtype=torch.uint8, device=device),
                   torch.full((cls.EOS_SLOTS,), -1, dtype=torch.long, device=device), longs(batch),
                   longs(batch, max_seq_len))

    def start(self, first: torch.Tensor, position: int, eos_ids, host_eos: EosState) -> None:
        """Load a generation's state: its first token at ``position``, the EOS ids the graph applies (none when
        the host samples or EOS is ignored), and the finished flags and padding of ``host_eos``."""
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
    """``Engine`` contract (see ``phase0_prototype``) over a static KV cache."""

    name = "solution"

    def __init__(self, model: LoadedModel, *, max_batch_size: int = 1, max_seq_len: int | None = None,
                 compile: bool = True, rope_fn: RopeFn | None = None, sync_every: int = 16,
                 gemv: str = "reduction", tune: bool = False, decode_kernels: str = "auto",
                 graph_tail: bool = True, lookahead: bool | None = None):
        cfg = self.config = model.config
        self.model, self.device, self.dtype = model, model.device, model.dtype
        self.max_seq_len = min(max_seq_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.max_batch_size, self.sync_every = max_batch_size, sync_every
        self.weights: LlamaWeights = fuse(model.state, cfg)
        self.cos, self.sin = rope_cache(cfg, self.max_seq_len, self.device)
        self.rope_fn = rope_fn or apply_rope
        self.kv_cache = torch.zeros(cfg.num_hidden_layers, 2, max_batch_size, cfg.num_key_value_heads,
                                    self.max_seq_len, cfg.head_dim, dtype=self.dtype, device=self.device)
        self.use_graphs = compile and self.device.type == "cuda"
        self.mode = "torch.compile + CUDA graph" if self.use_graphs else "eager"
        self._graphs: dict[int, DecodeGraph] = {}  # batch size -> its captured decode step
        # Dynamo can trace the reference RoPE; an external kernel (CuPy) would be a graph break.
        self._fullgraph = self.rope_fn is apply_rope
        # gemv="reduction": inside the compiled decode step, x·Wᵀ at batch ≤ 4 is written as a multiply + sum
        # so inductor emits one bandwidth-bound Triton reduction per projection (and fuses the casts and
        # residual adds into it) instead of a cuBLAS GEMM tuned for larger M. tune=True turns on inductor's
        # coordinate-descent tuning of those kernels' block sizes (gpt-fast does the same).
        self.gemv, self.tune = gemv, tune
        # decode_kernels: "triton" = the hand-written step (kernels/step.py), "inductor" = torch.compile of
        # decode_step; "auto" = triton inside CUDA graphs when the model and batch suit it, else inductor.
        if decode_kernels not in ("auto", "triton", "inductor"):
            from phase0_prototype.errors import ModelError

            raise ModelError(f"unknown decode_kernels={decode_kernels!r}: choose auto, triton or inductor")
        self.decode_kernels = decode_kernels
        # graph_tail=False: the greedy tail (argmax, EOS, feedback, position) runs as host-launched PyTorch ops
        # after each replay instead of inside the graph — the A/B of scripts/gpu_pdl_variants.py
        self.graph_tail = graph_tail
        # lookahead: at a sync point, launch the next step before the host reads the chunk (default on CUDA)
        self.lookahead = self.device.type == "cuda" if lookahead is None else lookahead
        self.fused_rope = self.rope_fn is apply_rope  # the attention kernel applies the reference RoPE itself
        if self._triton_for(max_batch_size):
            self.mode = "Triton kernels + CUDA graph" if self.use_graphs else "Triton kernels, eager"

    # ------------------------------------------------------------------ the two forward passes
    def _layer(self, i: int, x: torch.Tensor, positions: torch.Tensor, attend, linear=F.linear) -> torch.Tensor:
        cfg, w = self.config, self.weights.layers[i]
        B, T = x.shape[0], x.shape[1]
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h = rms_norm(x, w.input_norm, cfg.rms_norm_eps)
        q, k, v = linear(h, w.qkv_proj).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q, k = self.rope_fn(q.view(B, T, Hq, D), k.view(B, T, Hkv, D), self.cos, self.sin, positions)
        x = x + linear(attend(i, q, k, v.view(B, T, Hkv, D)), w.o_proj)
        h = rms_norm(x, w.post_norm, cfg.rms_norm_eps)
        gate, up = linear(h, w.gate_up_proj).chunk(2, dim=-1)
        return x + linear(swiglu(gate, up), w.down_proj)

    def _logits(self, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
        return linear(rms_norm(x, self.weights.norm, self.config.rms_norm_eps), self.weights.lm_head)

    def prefill(self, tokens: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Run fresh prompts ``[B, T]``, fill cache positions [0, T); logits of the last (or every) position."""
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

        reduction = self.gemv == "reduction" and B <= 4 and torch.compiler.is_compiling()
        linear = gemv_reduction if reduction else F.linear
        x = self.weights.embed_tokens[tokens][:, None]  # [B, 1, hidden]
        for i in range(self.config.num_hidden_layers):
            x = self._layer(i, x, positions[:, None], attend, linear)
        return self._logits(x[:, 0], linear)

    # ------------------------------------------------------------------ which decode step
    def _triton_for(self, batch: int) -> bool:
        """Whether a decode step of ``batch`` sequences runs the Triton kernels."""
        if self.decode_kernels == "inductor" or (self.decode_kernels == "auto" and not self.use_graphs):
            return False
        if decode_attention is not _reference_decode_attention:  # a plugged-in attention: the PyTorch step calls it
            return False
        from phase0_prototype.kernels.step import unsupported_reason

        reason = unsupported_reason(self.config, batch, self.weights)
        if reason and self.decode_kernels == "triton":
            from phase0_prototype.errors import ModelError

            raise ModelError(f"decode_kernels='triton' cannot run this engine: {reason}; use decode_kernels='inductor'")
        return reason is None

    def _step_for(self, batch: int):
        """The eager decode step function for ``batch`` sequences (what the CUDA graph captures)."""
        if self._triton_for(batch):
            from phase0_prototype.kernels.step import triton_decode_step

            return lambda tokens, positions: triton_decode_step(self, tokens, positions)
        return self.decode_step

    # ------------------------------------------------------------------ CUDA graph of the decode step
    def _graph_for(self, batch: int) -> DecodeGraph:
        if batch not in self._graphs:
            import torch._inductor.config

            from module0_profiling.timing import capture_cuda_graph

            step = self._step_for(batch)
            if step == self.decode_step:  # the PyTorch step is compiled; the Triton one is already kernels
                step = torch.compile(self.decode_step, fullgraph=self._fullgraph, dynamic=False)
            g = DecodeGraph.allocate(batch, self.max_seq_len, self.device)
            g.tail = self.graph_tail
            body = self._decode_body(g, step)
            saved = self.kv_cache.clone()  # warm-up steps write slots 0-3; keep the cache as it was
            side = torch.cuda.Stream()  # compile + autotune (the tail kernel too) outside the capture
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch._inductor.config.patch(coordinate_descent_tuning=self.tune):
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
            if g.tail:
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
            in_graph = sampling.greedy and g.tail  # the graph's own kernel picks, applies EOS and records
            g.start(next_tokens, T, eos_ids if stop_on_eos and in_graph else (), eos)
            out = g.history[:, T:T + max_new_tokens]  # out[:, i] is the token at position T + i
            out[:, 0] = next_tokens
            finished = g.finished if in_graph else eos.finished

            def advance() -> None:
                g.graph.replay()
                if not in_graph:
                    tok = torch.argmax(g.logits, dim=-1) if sampling.greedy else sample(g.logits, sampling, generator)
                    g.token_in.copy_(eos.update(tok) if stop_on_eos else tok)
                    out[:, i] = g.token_in
                    if not g.tail:
                        g.position_in.add_(1)
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
                if on_tokens is not None:
                    on_tokens(chunk)
                emitted = i
                if done is not None and bool(done):
                    break
            if i == max_new_tokens:
                break
            if not launched:
                advance()
        return finish(out[:, :emitted], eos_ids, stop_on_eos)


_reference_decode_attention = decode_attention


def _clear_cublas_workspaces() -> None:
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def build(model: LoadedModel, **options) -> SolutionEngine:
    return SolutionEngine(model, **options)
