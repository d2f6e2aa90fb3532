"""A one-shot all-reduce for the decode step's small messages, over buffers the ranks map through CUDA IPC.

A 1.1 B model's TP decode step all-reduces a few KB twice per layer; NCCL pays ~10 µs of latency (α) for each,
whatever the size, which is most of the step at TP = 2 (the phase's α-β model). Here each rank owns one buffer
and one flag area allocated with ``cudaMalloc`` (an IPC handle maps a whole allocation, so no caching
allocator in between), exchanges their IPC handles once over the process group, and maps its peers'. A call
copies the input into the rank's own buffer and runs one kernel (``kernels/oneshot_allreduce.cu``): a flag
barrier, every rank's slice read and summed in fp32 in rank order, a second barrier. Both the copy and the
kernel go on torch's current stream, so a decode CUDA graph can capture them.

Limits: CUDA only (CuPy for NVRTC and the IPC calls), bf16 or fp32, messages up to ``max_bytes`` and a multiple
of 16 bytes — a group ``attach``ed to it sends anything else to NCCL. The ranks must be able to map
each other's memory: peers over NVLink/PCIe P2P, or processes sharing one GPU (how the tests check it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from module0_profiling import cudac
from phase6_tensor_parallel.dist_env import TPGroup

SOURCE = Path(__file__).parent / "kernels" / "oneshot_allreduce.cu"
MAX_RANKS, MAX_BLOCKS, THREADS = 8, 36, 512  # as in the .cu file (Signal's shape)
SIGNAL_BYTES = 4 * MAX_BLOCKS * (2 * MAX_RANKS + 1)
DEFAULT_MAX_BYTES = 512 * 1024  # one-shot reads world × bytes per rank: past ~0.5 MB a ring (NCCL) wins
KERNELS = {torch.bfloat16: "oneshot_allreduce_bf16", torch.float32: "oneshot_allreduce_f32"}


def blocks_for(num_vecs: int) -> int:
    """Blocks of ``THREADS`` threads for ``num_vecs`` 16-byte vectors (every rank computes the same count)."""
    return max(1, min(MAX_BLOCKS, -(-num_vecs // THREADS)))


class OneShotAllReduce:
    """``ar(x)`` sums ``x`` over the group's ranks in place and returns it (``TPGroup.all_reduce``'s contract).
    ``attach`` returns the group with it: its ``all_reduce`` then routes what ``fits`` here, the rest to NCCL."""

    def __init__(self, group: TPGroup, device: torch.device | str, max_bytes: int = DEFAULT_MAX_BYTES):
        import cupy
        import torch.distributed as dist

        if not 2 <= group.world <= MAX_RANKS:
            raise ValueError(f"the one-shot all-reduce takes 2..{MAX_RANKS} ranks, got {group.world}")
        if max_bytes <= 0 or max_bytes % 16:
            raise ValueError(f"max_bytes must be a positive multiple of 16, got {max_bytes}")
        self.group, self.max_bytes = group, max_bytes
        self.device = torch.device(device)
        rt = self._rt = cupy.cuda.runtime
        with cupy.cuda.Device(self.device.index or 0):
            self._own = (rt.malloc(max_bytes), rt.malloc(SIGNAL_BYTES))
            rt.memset(self._own[1], 0, SIGNAL_BYTES)  # epochs start at 0 on every rank
            rt.deviceSynchronize()
            handles = [None] * group.world
            dist.all_gather_object(handles, tuple(rt.ipcGetMemHandle(p) for p in self._own))
            self._mapped = []
            ptrs = []
            for r, pair in enumerate(handles):
                if r == group.rank:
                    ptrs.append(self._own)
                    continue
                peer = tuple(rt.ipcOpenMemHandle(h) for h in pair)
                self._mapped += peer
                ptrs.append(peer)
        self.data_ptrs = torch.tensor([p[0] for p in ptrs], dtype=torch.int64, device=self.device)
        self.signal_ptrs = torch.tensor([p[1] for p in ptrs], dtype=torch.int64, device=self.device)
        self.kernels = cudac.load_kernels(SOURCE, list(KERNELS.values()))
        dist.barrier()  # every rank has mapped every buffer before anyone runs the kernel

    def fits(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        return (x.dtype in KERNELS and x.is_contiguous() and x.device == self.device and 0 < nbytes <= self.max_bytes
                and nbytes % 16 == 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fits(x):
            raise ValueError(f"the one-shot all-reduce takes contiguous bf16/fp32 tensors on {self.device} of 16..."
                             f"{self.max_bytes} bytes in multiples of 16, got {x.dtype} {tuple(x.shape)} on {x.device}")
        nbytes = x.numel() * x.element_size()
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._rt.memcpyAsync(self._own[0], x.data_ptr(), nbytes, self._rt.memcpyDeviceToDevice, stream)
        num_vecs = nbytes // 16
        cudac.launch(self.kernels[KERNELS[x.dtype]], (blocks_for(num_vecs),), (THREADS,),
                     (np.uint64(self.data_ptrs.data_ptr()), np.uint64(self.signal_ptrs.data_ptr()),
                      np.int32(self.group.rank), np.int32(self.group.world), np.uint64(x.data_ptr()), np.int64(num_vecs)))
        return x

    def attach(self) -> TPGroup:
        return dataclasses.replace(self.group, oneshot=self)

    def close(self) -> None:
        """Unmap the peers' buffers and free this rank's (after a barrier: nobody reads them any more)."""
        import torch.distributed as dist

        torch.cuda.synchronize(self.device)
        dist.barrier()
        for p in self._mapped:
            self._rt.ipcCloseMemHandle(p)
        for p in self._own:
            self._rt.free(p)
        self._mapped, self._own = [], ()
