"""CUDA graphs of the decode-only step, one per batch-size bucket (GPU only).

A decode step of a small model is a few hundred short kernels (TinyLlama: 22 layers × ~40 PyTorch ops);
launching them from Python costs more host time than the GPU spends running them (``NOTES.md``). A graph
replays the whole step with one launch. Graphs need static shapes, so a batch of ``n`` decodes runs in
the smallest bucket ``B >= n`` (``runner.graph_sizes_for``: up to ``max_num_seqs``, so a full batch never
falls back to eager): rows past ``n`` are padding (slot -1: no cache write; context length 0: zeros out),
and the block-table width is the model's maximum context, a host constant (``max_context_len``).

Each bucket owns one static int32 buffer laid out like ``step_inputs.HostStep``: a replay is one
host->device copy into it and the replay. The graph also writes every row's greedy token into the
runner's ``last_tokens`` and reads tokens the host has not seen yet from there (``src``), so consecutive
decode steps chain on the device. Each bucket first runs eagerly (Phase 3's Triton kernels compile on
their first call), then is captured.
"""

from __future__ import annotations

import torch

from module0_profiling.timing import capture_cuda_graph
from phase4_scheduler.step_inputs import DeviceStep, HostStep


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
        template = HostStep.graph_template(batch, r.max_blocks_per_seq)
        buffer = torch.zeros(template.size, dtype=torch.int32, device=r.device)
        for name in ("src", "slots"):  # padding everywhere until the first load
            start, n = template.offsets[name]
            buffer[start:start + n] = -1
        static = DeviceStep(template, buffer, block_size=r.block_size)
        out = {}

        def step() -> None:
            logits = r.forward(static)
            r.last_tokens[:batch].copy_(logits.argmax(dim=-1))
            out["logits"] = logits

        # The capture's runs write last_tokens[:batch]; a bucket captured lazily mid-run must not lose the
        # previous step's tokens, which this step's rows may still have to read (src).
        saved = r.last_tokens.clone()
        for _ in range(2):  # eager first: Triton compiles (and may tune) outside any capture
            step()
        torch.cuda.synchronize()
        graph = capture_cuda_graph(step, warmup=1)
        r.last_tokens.copy_(saved)
        return graph, buffer, out

    def warmup(self) -> None:
        """Capture every bucket now (a server does this before taking requests)."""
        with torch.inference_mode():
            for b in self.batch_sizes:
                if b not in self._graphs:
                    self._graphs[b] = self._capture(b)

    def replay(self, host: HostStep, bucket: int) -> torch.Tensor:
        """Load ``host`` (laid out for ``bucket``) and replay; the logits of the real rows (valid until
        the next replay of this bucket). Greedy tokens are in ``runner.last_tokens[:n]``."""
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(bucket)
        graph, buffer, out = self._graphs[bucket]
        staged = host.staged(self.runner.device)
        buffer.copy_(staged, non_blocking=True)
        graph.replay()
        return out["logits"][: host.num_decode_tokens]
