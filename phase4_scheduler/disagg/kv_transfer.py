"""Moving one request's prompt K/V from a prefill instance's paged cache into a decode instance's.

The two instances have their own block managers, so the same tokens sit in different blocks on each
side. ``export_kv`` gathers the request's blocks of every layer into one contiguous buffer
(``[layers, 2 (K, V), blocks, block_size, kv_heads, head_dim]``); the buffer crosses the process
boundary through a ``multiprocessing`` pipe, where torch's reductions share it instead of copying it:
a CPU tensor as shared memory (a file descriptor), a CUDA tensor as a CUDA IPC handle (the receiver
maps the sender's device memory; torch keeps it alive on the sending side until the receiver lets it
go). ``import_kv`` scatters the buffer into the blocks the decode side's scheduler allocated.

Each copy is one Triton launch on a GPU for every layer's K and V (``copy_kernel``: 2 · layers small
PyTorch ops would be launch-bound). Limit: the KV crosses memory twice (gather, scatter) where a
one-sided read of the remote blocks (NIXL, RDMA) copies it once; both instances must share the cache's
block size, dtype and shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.multiprocessing  # noqa: F401 - registers the pipe reductions that share tensors (shm / CUDA IPC)


@dataclass
class KVPayload:
    """A request's prompt K/V, whole blocks, and the measured time of the copy that made it."""

    kv: torch.Tensor  # [layers, 2, blocks, block_size, kv_heads, head_dim]
    num_tokens: int
    export_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class CopyTimer:
    """Device time of the copies issued inside it: CUDA events on a GPU (excludes the queued forward pass
    it waits behind), the host clock on CPU. ``seconds`` is set on exit, which waits for the copies."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def __enter__(self) -> "CopyTimer":
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()  # the buffer is complete before anyone maps it
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0


def _blocks(block_table: list[int], num_tokens: int, block_size: int) -> list[int]:
    n = -(-num_tokens // block_size)
    if len(block_table) < n:
        raise ValueError(f"{num_tokens} tokens need {n} blocks of {block_size}, the block table has {len(block_table)}")
    return block_table[:n]


def _copy(src: list[torch.Tensor], dst: list[torch.Tensor], src_blocks: list[int], dst_blocks: list[int]) -> None:
    """``dst[t][dst_blocks] = src[t][src_blocks]`` for every tensor: one Triton launch on a GPU (``copy_kernel``),
    an ``index_copy_`` per tensor on CPU."""
    if src[0].device.type == "cuda":
        from phase4_scheduler.disagg.copy_kernel import copy_blocks

        copy_blocks(src, dst, src_blocks, dst_blocks)
        return
    si, di = torch.tensor(src_blocks), torch.tensor(dst_blocks)
    for s, d in zip(src, dst, strict=True):
        d.index_copy_(0, di, s.index_select(0, si))


def _caches(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [cache for caches in kv for cache in caches]


def _slices(buf: torch.Tensor) -> list[torch.Tensor]:
    return [buf[layer, side] for layer in range(buf.shape[0]) for side in range(2)]


@torch.inference_mode()
def export_kv(kv: list[tuple[torch.Tensor, torch.Tensor]], block_table: list[int], num_tokens: int) -> KVPayload:
    """The first ``num_tokens`` positions' K/V (whole blocks) of a request whose blocks are ``block_table``,
    gathered from the per-layer paged caches ``kv`` into one buffer (shared memory on CPU)."""
    k0 = kv[0][0]
    blocks = _blocks(block_table, num_tokens, k0.shape[1])
    out = torch.empty((len(kv), 2, len(blocks), *k0.shape[1:]), dtype=k0.dtype, device=k0.device)
    if out.device.type == "cpu":
        out.share_memory_()  # gathered straight into shared memory: the pipe then passes a descriptor
    with CopyTimer(k0.device) as timer:
        _copy(_caches(kv), _slices(out), blocks, list(range(len(blocks))))
    return KVPayload(out, num_tokens, timer.seconds)


@torch.inference_mode()
def import_kv(kv: list[tuple[torch.Tensor, torch.Tensor]], block_table: list[int], payload: KVPayload) -> float:
    """Scatter ``payload`` into the blocks ``block_table`` of the paged caches ``kv``; the copy's seconds."""
    k0, buf = kv[0][0], payload.kv
    if buf.shape[0] != len(kv) or buf.shape[3:] != k0.shape[1:] or buf.dtype != k0.dtype:
        raise ValueError(f"a KV payload of shape {tuple(buf.shape)} ({buf.dtype}) does not fit {len(kv)} layers of "
                         f"blocks {tuple(k0.shape[1:])} ({k0.dtype}): both instances need the same model, dtype "
                         "and block size")
    blocks = _blocks(block_table, payload.num_tokens, k0.shape[1])
    if len(blocks) != buf.shape[2]:
        raise ValueError(f"the payload has {buf.shape[2]} blocks for {payload.num_tokens} tokens, expected {len(blocks)}")
    with CopyTimer(k0.device) as timer:
        src = buf.to(k0.device, non_blocking=True)  # no copy when it is already there (CUDA IPC, same device)
        _copy(_slices(src), _caches(kv), list(range(len(blocks))), blocks)
    return timer.seconds
