"""Random paged-attention inputs: the tests', the bench's and the notebook's single source of shapes.

Block tables are random permutations of the block pool (pages of a sequence are scattered, as they are
after an allocator has run for a while), every slot of the pool holds random data (so reading a slot
past a sequence's end changes the answer and a masking bug cannot hide), and table entries past a
sequence's last page point at other random blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeInputs:
    q: torch.Tensor  # [batch, num_q_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [batch, max_blocks] int32
    context_lens: torch.Tensor  # [batch] int32
    max_context_len: int

    def args(self) -> tuple:
        return self.q, self.k_cache, self.v_cache, self.block_tables, self.context_lens

    def contiguous_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V as dense [batch, kv_heads, max_context_len, head_dim] (for the dense peer)."""
        from phase3_paged_attention.reference import gather_kv

        return (gather_kv(self.k_cache, self.block_tables, self.max_context_len).contiguous(),
                gather_kv(self.v_cache, self.block_tables, self.max_context_len).contiguous())


@dataclass
class PrefillInputs:
    q: torch.Tensor  # [tokens, num_q_heads, head_dim]
    k: torch.Tensor  # [tokens, num_kv_heads, head_dim]
    v: torch.Tensor
    cu_seqlens: torch.Tensor  # [batch + 1] int32
    max_seqlen: int
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor  # [tokens] int64


def _block_tables(lengths: list[int], block_size: int, spare_blocks: int, generator: torch.Generator,
                  device: str) -> tuple[torch.Tensor, int]:
    pages = [-(-n // block_size) for n in lengths]
    num_blocks = sum(pages) + spare_blocks
    perm = torch.randperm(num_blocks, generator=generator)
    max_pages = max(max(pages, default=1), 1) + 1  # one extra column: never read
    tables = torch.randint(0, num_blocks, (len(lengths), max_pages), generator=generator)
    used = 0
    for i, n in enumerate(pages):
        tables[i, :n] = perm[used:used + n]
        used += n
    return tables.to(torch.int32).to(device), num_blocks


def decode_inputs(lengths: list[int], block_size: int = 16, num_q_heads: int = 4, num_kv_heads: int = 2,
                  head_dim: int = 32, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
                  spare_blocks: int = 3) -> DecodeInputs:
    g = torch.Generator().manual_seed(seed)
    tables, num_blocks = _block_tables(lengths, block_size, spare_blocks, g, device)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    on_device = torch.Generator(device=device).manual_seed(seed)  # GB-sized caches: draw them where they live
    k_cache = torch.randn(shape, generator=on_device, device=device, dtype=dtype)
    v_cache = torch.randn(shape, generator=on_device, device=device, dtype=dtype)
    q = torch.randn(len(lengths), num_q_heads, head_dim, generator=on_device, device=device, dtype=dtype)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    return DecodeInputs(q, k_cache, v_cache, tables, lens, max(lengths, default=0))


def prefill_inputs(lengths: list[int], block_size: int = 16, num_q_heads: int = 4, num_kv_heads: int = 2,
                   head_dim: int = 32, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   seed: int = 0) -> PrefillInputs:
    g = torch.Generator().manual_seed(seed)
    on_device = torch.Generator(device=device).manual_seed(seed)
    tokens = sum(lengths)
    q = torch.randn(tokens, num_q_heads, head_dim, generator=on_device, device=device, dtype=dtype)
    k = torch.randn(tokens, num_kv_heads, head_dim, generator=on_device, device=device, dtype=dtype)
    v = torch.randn(tokens, num_kv_heads, head_dim, generator=on_device, device=device, dtype=dtype)
    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
    tables, num_blocks = _block_tables(lengths, block_size, 2, g, "cpu")
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths, dtype=torch.int64))
    positions = torch.cat([torch.arange(n) for n in lengths]) if tokens else torch.zeros(0, dtype=torch.int64)
    slots = tables[seq_ids, positions // block_size].long() * block_size + positions % block_size
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=on_device, device=device, dtype=dtype)
    v_cache = torch.randn(shape, generator=on_device, device=device, dtype=dtype)
    return PrefillInputs(q, k, v, cu.to(device), max(lengths, default=0), k_cache, v_cache, slots.to(device))
