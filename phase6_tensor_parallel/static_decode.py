"""The greedy decode step with static shapes, captured once in a CUDA graph with its NCCL collectives inside.

An eager decode step of TinyLlama is hundreds of kernel launches plus 44–88 collectives, each a Python call:
the host, not the GPU, sets the pace — and every collective waits for the slower rank's host (``NOTES.md``).
``StaticDecoder`` fixes every shape (batch, cache length) and keeps every changing value on the device: the
token buffer, the position (``AttnContext.pos``, advanced by the step itself) and the KV cache. One step is
then one ``cudaGraphLaunch`` per rank; NCCL supports capture, so the all-reduces (and the solution's
half-batch overlap, two streams joined by events) are nodes of the same graph.

On a CPU (gloo) the same step runs eagerly: the tests check its arithmetic against the dynamic path.
"""

from __future__ import annotations

import torch

from phase6_tensor_parallel.engine import AttnContext, TPEngine


class StaticDecoder:
    """One greedy decode step for a fixed batch: ``tokens [B, 1]`` in, the next tokens written back to it.

    ``ctx`` is the context a prefill filled (its ``start`` becomes the device position), or a fresh cache of
    ``max_len`` positions. ``capture()`` records the step in a CUDA graph (CUDA only); calling the decoder
    then replays it, else runs the step eagerly.
    """

    def __init__(self, engine: TPEngine, batch: int, *, max_len: int | None = None, ctx: AttnContext | None = None):
        if ctx is None:
            if max_len is None:
                raise ValueError("StaticDecoder needs max_len (cache positions) or a prefilled ctx")
            ctx = engine.new_context(batch, max_len)
        self.engine, self.batch = engine, batch
        self.ctx = ctx
        if self.ctx.pos is None:
            self.ctx.pos = torch.tensor(ctx.start, dtype=torch.long, device=engine.device)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=engine.device)
        self.graph = None

    @property
    def max_len(self) -> int:
        return self.ctx.cache_k[0].shape[2]

    def step(self) -> None:
        """Forward one token per sequence at ``pos``, greedy pick, write it to ``tokens``; ``pos`` += 1."""
        logits = self.engine.forward(self.tokens, self.ctx)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        # The logits are gathered, so every rank picks the same ids; the broadcast makes that a guarantee.
        self.tokens.copy_(self.engine.group.broadcast(nxt))

    def set_position(self, pos: int) -> None:
        if not 0 <= pos < self.max_len:
            raise ValueError(f"position {pos} is outside the cache (0..{self.max_len - 1})")
        self.ctx.pos.fill_(pos)

    def capture(self, warmup: int = 2) -> "StaticDecoder":
        """Record ``step`` in a CUDA graph; the warm-up steps' position and tokens are rolled back."""
        from module0_profiling.timing import capture_cuda_graph

        if self.engine.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device; on CPU call the decoder eagerly")
        pos, tokens = self.ctx.pos.clone(), self.tokens.clone()
        self.graph = capture_cuda_graph(self.step, warmup=warmup)
        # Warm-up steps wrote k/v at pos, pos+1: harmless, a step rewrites its own position before reading it.
        self.ctx.pos.copy_(pos)
        self.tokens.copy_(tokens)
        return self

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()

    def fill_cache_randomly(self, upto: int, seed: int = 0) -> None:
        """Stand-in for a prefill of ``upto`` tokens (timing only: attention costs the same for any values)."""
        g = torch.Generator(device=self.engine.device).manual_seed(seed)
        for cache in self.ctx.cache_k + self.ctx.cache_v:
            cache[:, :, :upto].normal_(generator=g)
        self.set_position(upto)


def graph_generate(engine: TPEngine, prompt: torch.Tensor, max_new_tokens: int, *, capture: bool = True) -> torch.Tensor:
    """Greedy ``[B, max_new_tokens]`` (CPU): eager prefill, then one CUDA graph replay per decoded token.

    ``capture=False`` runs the same static step eagerly (CPU, tests): everything but the capture itself.
    """
    ctx = engine.new_context(prompt.shape[0], prompt.shape[1] + max_new_tokens)
    logits = engine.forward(prompt, ctx)
    decoder = StaticDecoder(engine, prompt.shape[0], ctx=ctx)
    decoder.tokens.copy_(engine.group.broadcast(logits[:, -1].argmax(-1, keepdim=True)))
    out = [decoder.tokens.clone()]
    if max_new_tokens > 1 and capture:
        decoder.capture()
    for _ in range(max_new_tokens - 1):
        decoder()
        out.append(decoder.tokens.clone())
    return torch.cat(out, dim=1).cpu()
