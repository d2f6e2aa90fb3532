"""CUDA graphs of the decode-only step, one per batch-size bucket (GPU only).

A decode step of a small model is a few hundred short kernels; launching them from Python costs more
than running them. A graph replays the whole step with one launch. Graphs need static shapes, so a
batch of ``n`` decodes runs in the smallest bucket ``B >= n``: rows past ``n`` are padding with slot
-1 (the cache write skips them) and context length 0 (the decode kernel returns zeros for them), and
the block-table width is fixed at the model's maximum context, passed as a host constant
(``max_context_len``) so the kernel never reads a length back to the host.

Phase 3's Triton decode kernel is autotuned on its first call with a new shape: those tuning runs
(and their host syncs) cannot happen inside a capture, so each bucket first runs eagerly on the
same static buffers, then is captured.
"""

from __future__ import annotations

import torch

from module0_profiling.timing import capture_cuda_graph


class _StaticInputs:
    """The fields ``PagedModelRunner.forward`` reads, as fixed buffers of one bucket."""

    def __init__(self, batch: int, max_blocks: int, block_size: int, device: torch.device):
        as_long = dict(dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, **as_long)
        self.positions = torch.zeros(batch, **as_long)
        self.slots = torch.full((batch,), -1, **as_long)
        self.sample_rows = torch.arange(batch, **as_long)
        self.block_tables = torch.zeros(batch, max_blocks, dtype=torch.int32, device=device)
        self.context_lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.max_context = max_blocks * block_size
        self.num_decode_tokens, self.num_fresh_tokens, self.later = batch, 0, []

    def load(self, inputs) -> None:
        n = inputs.tokens.shape[0]
        self.tokens[:n].copy_(inputs.tokens)
        self.positions[:n].copy_(inputs.positions)
        self.slots.fill_(-1)
        self.slots[:n].copy_(inputs.slots)
        self.block_tables.zero_()
        self.block_tables[:n, : inputs.block_tables.shape[1]].copy_(inputs.block_tables)
        self.context_lens.zero_()
        self.context_lens[:n].copy_(inputs.context_lens)


class DecodeGraphs:
    def __init__(self, runner, batch_sizes: tuple[int, ...]):
        self.runner, self.batch_sizes = runner, tuple(sorted(batch_sizes))
        self._graphs: dict[int, tuple] = {}

    def fits(self, batch: int) -> bool:
        return batch <= self.batch_sizes[-1]

    def bucket(self, batch: int) -> int:
        return next(b for b in self.batch_sizes if b >= batch)

    def _capture(self, batch: int):
        r = self.runner
        static = _StaticInputs(batch, r.max_blocks_per_seq, r.block_size, r.device)
        out = {}
        for _ in range(2):  # eager first: phase 3's autotuner benchmarks (and syncs) outside any capture
            out["logits"] = r.forward(static)
        torch.cuda.synchronize()
        graph = capture_cuda_graph(lambda: out.__setitem__("logits", r.forward(static)), warmup=1)
        return graph, static, out

    def warmup(self) -> None:
        """Capture every bucket now (a server does this before taking requests)."""
        with torch.inference_mode():
            for b in self.batch_sizes:
                if b not in self._graphs:
                    self._graphs[b] = self._capture(b)

    def run(self, inputs) -> torch.Tensor:
        n = inputs.tokens.shape[0]
        b = self.bucket(n)
        if b not in self._graphs:
            self._graphs[b] = self._capture(b)
        graph, static, out = self._graphs[b]
        static.load(inputs)
        graph.replay()
        return out["logits"][:n].clone()
