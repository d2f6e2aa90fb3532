"""The CPU side of preemption by swap: a host pool of KV blocks and the batched block copies.

``BlockManager.swap_out`` / ``swap_in`` only move block *numbers* between its GPU and CPU pools and
return the ``(src, dst)`` copies to do. ``KVSwapSpace`` does them on the tensors, before the step's
forward pass, all copies of a step batched on the block dimension: a swap-out gathers the blocks of
every layer into one staging tensor (``index_select``), copies it to the host in ONE transfer and
scatters it into the pool (``index_copy_``); a swap-in is the reverse. The pool is one tensor
``[layers, 2 (K, V), num_cpu_blocks, block_size, kv_heads, head_dim]``, pinned on CUDA so the
transfers are asynchronous DMA over PCIe.

On CUDA nothing waits for the GPU at swap-out: the device->host copy is queued behind the steps that
wrote those blocks, and the host scatters it into the pool later (``flush``: before the next swap,
which may read or reuse those pool blocks). A swap-in reads the pool on the host (after ``flush``),
stages it in pinned memory and copies it up, queued before the forward pass that reads it; the
caches are updated in place, so captured CUDA graphs stay valid.
"""

from __future__ import annotations

import torch


class KVSwapSpace:
    """``num_cpu_blocks`` host KV blocks mirroring ``kv`` (the runner's per-layer ``(k, v)`` caches)."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], num_cpu_blocks: int):
        k0 = kv[0][0]
        self.kv, self.device = kv, k0.device
        self.pinned = self.device.type == "cuda"
        self.pool = torch.zeros((len(kv), 2, num_cpu_blocks, *k0.shape[1:]), dtype=k0.dtype, pin_memory=self.pinned)
        self.block_bytes = 2 * len(kv) * k0[0].numel() * k0.element_size()  # one block, K and V, all layers
        self.bytes_out = self.bytes_in = 0  # moved so far (the PCIe traffic swap costs)
        self._pending: tuple | None = None  # (event, pool index, pinned staging) of a swap-out on its way

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()

    def apply(self, swap_out, swap_in) -> None:
        """Do one step's copies: ``swap_out`` ``(gpu, cpu)`` pairs first (the GPU blocks they free may be
        the destinations of ``swap_in``), then ``swap_in`` ``(cpu, gpu)`` pairs."""
        self.flush()  # the previous swap-out lands in the pool before the pool is read or reused
        if swap_out:
            self._out(swap_out)
        if swap_in:
            self.flush()
            self._in(swap_in)

    def flush(self) -> None:
        """Wait for the last swap-out's transfer and scatter it into the pool."""
        if self._pending is not None:
            event, cpu, staged = self._pending
            self._pending = None
            event.synchronize()
            self.pool.index_copy_(2, cpu, staged)

    def _index(self, values: list[int]) -> torch.Tensor:
        """Block numbers as a device index, sent without a synchronous copy."""
        host = torch.tensor(values, dtype=torch.long)
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _out(self, pairs: list[tuple[int, int]]) -> None:
        gpu, cpu = self._index([g for g, _ in pairs]), torch.tensor([c for _, c in pairs], dtype=torch.long)
        staged = torch.empty((len(self.kv), 2, len(pairs), *self.pool.shape[3:]), dtype=self.pool.dtype,
                             device=self.device)
        for layer, (k, v) in enumerate(self.kv):
            torch.index_select(k, 0, gpu, out=staged[layer, 0])
            torch.index_select(v, 0, gpu, out=staged[layer, 1])
        self.bytes_out += len(pairs) * self.block_bytes
        if not self.pinned:
            self.pool.index_copy_(2, cpu, staged)
            return
        host = torch.empty(staged.shape, dtype=staged.dtype, pin_memory=True)
        host.copy_(staged, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending = (event, cpu, host)

    def _in(self, pairs: list[tuple[int, int]]) -> None:
        cpu, gpu = torch.tensor([c for c, _ in pairs], dtype=torch.long), self._index([g for _, g in pairs])
        host = torch.empty((len(self.kv), 2, len(pairs), *self.pool.shape[3:]), dtype=self.pool.dtype,
                           pin_memory=self.pinned)
        torch.index_select(self.pool, 2, cpu, out=host)
        staged = host.to(self.device, non_blocking=True) if self.pinned else host
        for layer, (k, v) in enumerate(self.kv):
            k.index_copy_(0, gpu, staged[layer, 0])
            v.index_copy_(0, gpu, staged[layer, 1])
        self.bytes_in += len(pairs) * self.block_bytes
