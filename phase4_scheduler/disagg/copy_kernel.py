"""One Triton launch that copies whole KV blocks between many tensors (every layer's K and V at once).

``kv_transfer`` gathers a request's blocks of 2 · layers caches into a buffer, and scatters them back:
as PyTorch that is 2 · layers ``index_select`` / ``index_copy_`` launches of well under a megabyte each
at TinyLlama's shapes, so a GPU transfer is bound by launches, not bytes. Here the tensors come in as a
table of base addresses (the pattern of Triton's grouped-GEMM tutorial): program ``(i, t)`` copies block
``src_blocks[i]`` of tensor ``src_ptrs[t]`` to block ``dst_blocks[i]`` of ``dst_ptrs[t]``, one launch for
the whole transfer. Limit: the tensors share one dtype and block layout, are contiguous, and live on the
device that runs the kernel (their addresses are read as given).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _copy_blocks_kernel(Ref, SrcPtrs, DstPtrs, SrcBlocks, DstBlocks, block_numel, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    t = tl.program_id(1)
    elem = tl.pointer_type(Ref.dtype.element_ty)
    src = tl.load(SrcPtrs + t).to(elem) + tl.load(SrcBlocks + i) * block_numel
    dst = tl.load(DstPtrs + t).to(elem) + tl.load(DstBlocks + i) * block_numel
    for start in range(0, block_numel, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < block_numel
        tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


def copy_blocks(src: list[torch.Tensor], dst: list[torch.Tensor], src_blocks: list[int], dst_blocks: list[int]) -> None:
    """``dst[t][dst_blocks[i]] = src[t][src_blocks[i]]`` for every tensor ``t`` and block ``i``, one launch.
    Each tensor is ``[blocks, ...]`` contiguous, all of one dtype and block shape, on one device."""
    ref = src[0]
    block_shape, device = ref.shape[1:], ref.device
    for x in (*src, *dst):
        if x.shape[1:] != block_shape or x.dtype != ref.dtype or x.device != device or not x.is_contiguous():
            raise ValueError(f"copy_blocks needs contiguous tensors of blocks {tuple(block_shape)} ({ref.dtype}) on "
                             f"{device}, got {tuple(x.shape)} ({x.dtype}) on {x.device}")
    if len(src) != len(dst) or len(src_blocks) != len(dst_blocks):
        raise ValueError("copy_blocks needs as many destination tensors and blocks as sources")
    if not src_blocks:
        return
    table = torch.tensor([[x.data_ptr() for x in src], [x.data_ptr() for x in dst]], dtype=torch.int64)
    blocks = torch.tensor([src_blocks, dst_blocks], dtype=torch.int64)
    table, blocks = table.to(device, non_blocking=True), blocks.to(device, non_blocking=True)
    numel = ref[0].numel()
    _copy_blocks_kernel[(len(src_blocks), len(src))](ref, table[0], table[1], blocks[0], blocks[1], numel,
                                                     BLOCK=min(triton.next_power_of_2(numel), 4096))
