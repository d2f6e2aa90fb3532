"""Pure-Python reference of the block manager: ``rust/src/block_manager/`` line for line.

Same answers as the Rust ``BlockManager`` (block ids, slots, copy pairs, victims, statistics, error
types and messages), which the differential test checks on random operation sequences. It is the
baseline of P1.1: per generated token it runs a dict lookup, a few attribute reads, an allocator
call and a list append, all on boxed Python integers. Integer arguments are checked against
``limits`` first, in order, as the Rust binding extracts them. Prefix caching (``prefix_caching=True``)
is the ``PrefixCaching`` half in ``reference_prefix_cache.py`` (``block_manager/prefix.rs``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from . import limits as lim
from .errors import out_of_blocks
from .reference_allocators import BuddyAllocator, LifoBlockAllocator, check_range
from .reference_prefix_cache import PrefixCache, PrefixCaching

ALLOCATORS = {"lifo": LifoBlockAllocator, "buddy": BuddyAllocator}
POLICIES = ("refuse", "preempt")


@dataclass(frozen=True)
class StepResult:
    """What one batched step did (see ``BlockManager.step``)."""

    slots: list[int] = field(default_factory=list)
    new_blocks: list[tuple[int, int]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    preempted: list[int] = field(default_factory=list)


class _Sequence:
    __slots__ = ("table", "num_tokens", "on_gpu", "admitted", "hashes")

    def __init__(self, table: list[int], num_tokens: int, admitted: int):
        self.table, self.num_tokens, self.on_gpu, self.admitted = table, num_tokens, True, admitted
        self.hashes: list[int] = []  # prefix caching: chained hashes of its leading full blocks


class BlockManager(PrefixCaching):
    """Sequence -> block table over a GPU pool and a CPU pool (see the phase contract)."""

    _new_seq = _Sequence

    def __init__(
        self,
        num_gpu_blocks: int,
        block_size: int = 16,
        *,
        num_cpu_blocks: int = 0,
        watermark: float = 0.01,
        policy: str = "refuse",
        allocator: str = "buddy",
        prefix_caching: bool = False,
    ):
        num_gpu_blocks = lim.NUM_GPU_BLOCKS.check(num_gpu_blocks)
        block_size = lim.BLOCK_SIZE.check(block_size)
        num_cpu_blocks = lim.NUM_CPU_BLOCKS.check(num_cpu_blocks)
        if policy not in POLICIES:
            raise ValueError(f"policy must be 'refuse' or 'preempt', got '{policy}'")
        if allocator not in ALLOCATORS:
            raise ValueError(f"allocator must be 'buddy' or 'lifo', got '{allocator}'")
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be a fraction in [0, 1), got {watermark}")
        self.block_size = block_size
        self.watermark_blocks = math.floor(watermark * num_gpu_blocks)
        self._policy = policy
        self._gpu = self._make_allocator(allocator, num_gpu_blocks)
        self._cpu = self._make_allocator(allocator, num_cpu_blocks)
        self._gpu_refs = [0] * num_gpu_blocks
        self._cpu_refs = [0] * num_cpu_blocks
        self._seqs: dict[int, _Sequence] = {}
        self._running: dict[int, int] = {}  # admission number -> seq id; the last is the victim
        self._next_admission = 0
        self._cow_copies = self._preemptions = self._swapped_out = self._swapped_in = 0
        self._prefix = PrefixCache(num_gpu_blocks) if prefix_caching else None

    def _make_allocator(self, name: str, num_blocks: int):
        return ALLOCATORS[name](num_blocks)

    @property
    def num_gpu_blocks(self) -> int:
        return self._gpu.num_blocks

    @property
    def num_cpu_blocks(self) -> int:
        return self._cpu.num_blocks

    @property
    def num_free_cpu_blocks(self) -> int:
        return self._cpu.num_free_blocks

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _seq(self, seq_id: int) -> _Sequence:
        seq = self._seqs.get(seq_id)
        if seq is None:
            raise KeyError(f"unknown sequence id {seq_id}")
        return seq

    def _gpu_seq(self, seq_id: int) -> _Sequence:
        seq = self._seq(seq_id)
        if not seq.on_gpu:
            raise ValueError(f"sequence {seq_id} is swapped out to cpu: swap_in it first")
        return seq

    def _check_new_id(self, seq_id: int) -> None:
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id} already exists: free it before reusing its id")

    def _check_group(self, seq_ids, swapped: bool) -> list[int]:
        """The ids as a checked list: known, on the GPU (or on the CPU when ``swapped``), each once."""
        seq_ids = lim.check_ids(seq_ids)
        seen = set()
        for sid in seq_ids:
            seq = self._seq(sid)
            if swapped and seq.on_gpu:
                raise ValueError(f"sequence {sid} is not swapped out")
            if not swapped and not seq.on_gpu:
                raise ValueError(f"sequence {sid} is swapped out to cpu: swap_in it first")
            if sid in seen:
                raise ValueError(f"sequence {sid} appears twice in one call")
            seen.add(sid)
        return seq_ids

    def _admit(self, seq_id: int) -> int:
        n = self._next_admission
        self._next_admission += 1
        self._running[n] = seq_id
        return n

    def can_allocate(self, num_tokens: int) -> bool:
        num_tokens = lim.NUM_TOKENS.check(num_tokens)
        return self.num_free_gpu_blocks - self._blocks_for(num_tokens) >= self.watermark_blocks

    def allocate(self, seq_id: int, num_tokens: int) -> list[int]:
        seq_id, num_tokens = lim.SEQ_ID.check(seq_id), lim.NUM_TOKENS.check(num_tokens)
        self._check_new_id(seq_id)
        needed = self._blocks_for(num_tokens)
        free = self.num_free_gpu_blocks
        if needed > free:
            raise out_of_blocks(needed, free, "gpu")
        table = self._take_runs(needed)
        self._seqs[seq_id] = _Sequence(table, num_tokens, self._admit(seq_id))
        return list(table)

    def _take_runs(self, needed: int) -> list[int]:
        """``needed`` blocks as the longest contiguous runs (evicting cached blocks first if short)."""
        if self._prefix is not None:
            self._evict_for(needed)
        table: list[int] = []
        remaining = needed
        while remaining > 0:
            run = min(remaining, self._gpu.largest_free_run())
            start = self._gpu.allocate(run)
            for b in range(start, start + run):
                self._gpu_refs[b] = 1
                table.append(b)
            remaining -= run
        return table

    def _blocks_needed(self, seq_ids: list[int]) -> int:
        copying: dict[int, int] = {}
        needed = 0
        for sid in seq_ids:
            seq = self._seqs[sid]
            if seq.num_tokens == len(seq.table) * self.block_size:
                needed += 1
            else:
                last = seq.table[-1]
                pending = copying.get(last, 0)
                if self._gpu_refs[last] - pending > 1:
                    copying[last] = pending + 1
                    needed += 1
        return needed

    def _append_one(self, seq_id: int) -> tuple[int, int | None, tuple[int, int] | None]:
        bs = self.block_size
        seq = self._seqs[seq_id]
        t = seq.num_tokens
        new_block = copy = None
        if t == len(seq.table) * bs:
            b = self._take_block()
            self._gpu_refs[b] = 1
            seq.table.append(b)
            new_block = b
        else:
            last = seq.table[-1]
            if self._gpu_refs[last] > 1:  # copy-on-write of a shared, partly filled block
                dst = self._take_block()
                self._gpu_refs[last] -= 1
                self._gpu_refs[dst] = 1
                seq.table[-1] = dst
                new_block, copy = dst, (last, dst)
                self._cow_copies += 1
        seq.num_tokens = t + 1
        return seq.table[-1] * bs + t % bs, new_block, copy

    def append_slot(self, seq_id: int) -> tuple[int, tuple[int, int] | None]:
        seq_id = lim.SEQ_ID.check(seq_id)
        self._gpu_seq(seq_id)
        needed = self._blocks_needed([seq_id])
        free = self.num_free_gpu_blocks
        if needed > free:
            raise out_of_blocks(needed, free, "gpu")
        slot, _, copy = self._append_one(seq_id)
        return slot, copy

    def can_append(self, seq_ids: list[int]) -> bool:
        return self._blocks_needed(self._check_group(seq_ids, swapped=False)) <= self.num_free_gpu_blocks

    def step(self, seq_ids: list[int]) -> StepResult:
        live = self._check_group(seq_ids, swapped=False)
        out = StepResult()
        while True:
            needed = self._blocks_needed(live)
            free = self.num_free_gpu_blocks
            if needed <= free:
                break
            if self._policy != "preempt" or not self._running:
                raise out_of_blocks(needed, free, "gpu")
            victim = next(reversed(self._running.values()))
            self._free_seq(victim)
            self._preemptions += 1
            out.preempted.append(victim)
            live = [s for s in live if s != victim]
        for sid in live:
            slot, new_block, copy = self._append_one(sid)
            out.slots.append(slot)
            if new_block is not None:
                out.new_blocks.append((sid, new_block))
            if copy is not None:
                out.copies.append(copy)
        return out

    def fork(self, parent_id: int, child_id: int) -> None:
        parent_id, child_id = lim.PARENT_ID.check(parent_id), lim.CHILD_ID.check(child_id)
        table = list(self._gpu_seq(parent_id).table)
        self._check_new_id(child_id)
        for b in table:
            self._gpu_refs[b] += 1
        parent = self._seqs[parent_id]
        child = self._seqs[child_id] = _Sequence(table, parent.num_tokens, self._admit(child_id))
        child.hashes = list(parent.hashes)

    def free(self, seq_id: int) -> None:
        seq_id = lim.SEQ_ID.check(seq_id)
        self._seq(seq_id)
        self._free_seq(seq_id)

    def _free_seq(self, seq_id: int) -> None:
        seq = self._seqs.pop(seq_id)
        if seq.on_gpu:
            del self._running[seq.admitted]
            refs, release = self._gpu_refs, self._release_block
        else:
            refs, release = self._cpu_refs, self._cpu.free
        for b in reversed(seq.table):  # last block first: a LIFO pool reissues the table in order
            refs[b] -= 1
            if refs[b] == 0:
                release(b)

    def swap_out(self, seq_ids: list[int]) -> list[tuple[int, int]]:
        moved = self._move_group(self._check_group(seq_ids, swapped=False), to_cpu=True)
        self._swapped_out += len(moved)
        return moved

    def swap_in(self, seq_ids: list[int]) -> list[tuple[int, int]]:
        moved = self._move_group(self._check_group(seq_ids, swapped=True), to_cpu=False)
        self._swapped_in += len(moved)
        return moved

    def can_swap_in(self, seq_ids: list[int]) -> bool:
        return self._distinct_blocks(self._check_group(seq_ids, swapped=True)) <= self.num_free_gpu_blocks

    def _distinct_blocks(self, seq_ids: list[int]) -> int:
        return len({b for sid in seq_ids for b in self._seqs[sid].table})

    def _move_group(self, seq_ids: list[int], to_cpu: bool) -> list[tuple[int, int]]:
        needed = self._distinct_blocks(seq_ids)
        device, free = ("cpu", self._cpu.num_free_blocks) if to_cpu else ("gpu", self.num_free_gpu_blocks)
        if needed > free:
            raise out_of_blocks(needed, free, device)
        mapping: dict[int, int] = {}
        copies: list[tuple[int, int]] = []
        if to_cpu:  # a cached GPU block released here stays evictable: its copy is still a valid prefix
            take, src_refs, dst_refs, release = self._cpu.allocate, self._gpu_refs, self._cpu_refs, self._release_block
        else:
            take, src_refs, dst_refs, release = self._take_block, self._cpu_refs, self._gpu_refs, self._cpu.free
        for sid in seq_ids:
            seq = self._seqs.pop(sid)
            if to_cpu:
                del self._running[seq.admitted]
            else:
                seq.admitted = self._admit(sid)
            for i, src in enumerate(seq.table):
                dst = mapping.get(src)
                if dst is None:
                    dst = take()
                    mapping[src] = dst
                    copies.append((src, dst))
                dst_refs[dst] += 1
                src_refs[src] -= 1
                if src_refs[src] == 0:
                    release(src)
                seq.table[i] = dst
            seq.on_gpu = not to_cpu
            self._seqs[sid] = seq
        return copies

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._seq(lim.SEQ_ID.check(seq_id)).table)

    def num_tokens(self, seq_id: int) -> int:
        return self._seq(lim.SEQ_ID.check(seq_id)).num_tokens

    def __contains__(self, seq_id: int) -> bool:
        return lim.SEQ_ID.check(seq_id) in self._seqs

    def is_swapped(self, seq_id: int) -> bool:
        return not self._seq(lim.SEQ_ID.check(seq_id)).on_gpu

    def seq_ids(self) -> list[int]:
        return sorted(self._seqs)

    def running_seq_ids(self) -> list[int]:
        return list(self._running.values())

    def ref_count(self, block: int) -> int:
        block = lim.BLOCK.check(block)
        check_range(block, 1, len(self._gpu_refs))
        return self._gpu_refs[block]

    def stats(self) -> dict[str, float]:
        bs = self.block_size
        fill: dict[int, int] = {}
        pairs = contiguous = num_swapped = 0
        for seq in self._seqs.values():
            if not seq.on_gpu:
                num_swapped += 1
                continue
            for i, b in enumerate(seq.table):
                fill[b] = max(fill.get(b, 0), min(seq.num_tokens - i * bs, bs))
            pairs += max(len(seq.table) - 1, 0)
            contiguous += sum(1 for a, b in zip(seq.table, seq.table[1:], strict=False) if b == a + 1)
        free, pool_free = self.num_free_gpu_blocks, self._gpu.num_free_blocks  # evictable blocks count as free
        used = self._gpu.num_blocks - free
        stored = sum(fill.values())
        largest = self._gpu.largest_free_run()
        return {
            "num_gpu_blocks": self._gpu.num_blocks,
            "free_gpu_blocks": free,
            "used_gpu_blocks": used,
            "num_cpu_blocks": self._cpu.num_blocks,
            "free_cpu_blocks": self._cpu.num_free_blocks,
            "num_running": len(self._running),
            "num_swapped": num_swapped,
            "shared_blocks": sum(1 for r in self._gpu_refs if r > 1),
            "stored_tokens": stored,
            "allocated_slots": used * bs,
            "unused_slots": used * bs - stored,
            "largest_free_run": largest,
            "external_fragmentation": 0.0 if pool_free == 0 else 1.0 - largest / pool_free,
            "table_contiguity": 1.0 if pairs == 0 else contiguous / pairs,
            "cow_copies": self._cow_copies,
            "preemptions": self._preemptions,
            "swapped_out_blocks": self._swapped_out,
            "swapped_in_blocks": self._swapped_in,
        } | self._prefix_stats()

    def memory_bytes(self) -> int:
        """Bytes of Python objects behind the manager's state (containers and the ints they hold)."""
        seen: set[int] = set()

        def size(obj) -> int:
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            n = sys.getsizeof(obj)
            if isinstance(obj, dict):
                n += sum(size(k) + size(v) for k, v in obj.items())
            elif isinstance(obj, (list, tuple, set)):
                n += sum(size(x) for x in obj)
            elif isinstance(obj, _Sequence):
                n += size(obj.table)
            elif hasattr(obj, "__dict__"):
                n += size(vars(obj))
            return n

        return size(self)

    def check_invariants(self) -> list[str]:
        problems = list(self._gpu.check_invariants()) + list(self._cpu.check_invariants())
        gpu, cpu = [0] * len(self._gpu_refs), [0] * len(self._cpu_refs)
        for sid, seq in self._seqs.items():
            if len(seq.table) != self._blocks_for(seq.num_tokens):
                problems.append(f"sequence {sid}: {len(seq.table)} blocks for {seq.num_tokens} tokens")
            if seq.on_gpu != (self._running.get(seq.admitted) == sid):
                problems.append(f"sequence {sid}: running queue disagrees with its location")
            for b in seq.table:
                (gpu if seq.on_gpu else cpu)[b] += 1
        for name, counted, refs, pool in (("gpu", gpu, self._gpu_refs, self._gpu), ("cpu", cpu, self._cpu_refs, self._cpu)):
            for b, (c, r) in enumerate(zip(counted, refs, strict=True)):
                if c != r:
                    problems.append(f"{name} block {b}: {c} table references, ref count {r}")
                held = r > 0 or (name == "gpu" and self._is_evictable(b))  # evictable: kept allocated
                if pool.is_allocated(b) != held:
                    problems.append(f"{name} block {b}: ref count {r} but allocated={not held}")
        return problems + self._prefix_problems()
