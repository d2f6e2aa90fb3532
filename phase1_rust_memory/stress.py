"""P1.3: random operations with invariants checked from the outside after every call.

The checker keeps its own shadow of who holds which block (built only from the manager's answers:
block tables, slots, copies) and flags: a block handed to a sequence while another still holds it
(double allocation), free + held != total (a leak or a phantom block), a slot that is not where the
block table says, a reference count that disagrees with the tables, and, once everything is freed,
any block still out or (buddy) any run not merged back. It never trusts the implementation's own
``check_invariants``; that one is reported separately as a second opinion.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .errors import OutOfBlocks


@dataclass
class StressReport:
    ops: int = 0
    violations: list[str] = field(default_factory=list)
    refused: int = 0  # OutOfBlocks answers (expected under pressure, not violations)
    preempted: int = 0
    forks: int = 0
    copies: int = 0

    def flag(self, msg: str) -> None:
        if len(self.violations) < 1000:
            self.violations.append(msg)


class _Shadow:
    """Block ownership as the manager's answers describe it."""

    def __init__(self, mgr, report: StressReport):
        self.mgr, self.report = mgr, report
        self.tables: dict[int, list[int]] = {}
        self.holders: dict[int, int] = {}  # gpu block -> number of running sequences holding it
        self.swapped: set[int] = set()

    def drop(self, sid: int) -> None:
        if sid in self.swapped:
            self.swapped.discard(sid)
            self.tables.pop(sid)
            return
        for b in self.tables.pop(sid):
            self.holders[b] -= 1
            if not self.holders[b]:
                del self.holders[b]

    def take(self, sid: int, table: list[int], fresh: set[int]) -> None:
        """``sid`` now holds ``table``; blocks in ``fresh`` must have been free until now."""
        for b in fresh:
            if b in self.holders:
                self.report.flag(f"block {b} given to sequence {sid} while {self.holders[b]} sequence(s) hold it")
        self.tables[sid] = table
        for b in table:
            self.holders[b] = self.holders.get(b, 0) + 1

    def refresh(self, sid: int, fresh: set[int]) -> None:
        self.drop(sid)
        self.take(sid, self.mgr.block_table(sid), fresh)

    def check_totals(self) -> None:
        held, free = len(self.holders), self.mgr.num_free_gpu_blocks
        if held + free != self.mgr.num_gpu_blocks:
            self.report.flag(f"{held} blocks held + {free} free != {self.mgr.num_gpu_blocks} total")


def stress_block_manager(manager_cls, num_ops: int = 100_000, *, seed: int = 0, num_gpu_blocks: int = 256,
                         block_size: int = 4, num_cpu_blocks: int = 128, fork: bool = True,
                         swap: bool = True, policy: str = "preempt", allocator: str | None = None) -> StressReport:
    """``num_ops`` random calls on a small pool (so it runs out often) with a shadow check after each."""
    rng = random.Random(seed)
    kwargs = dict(num_cpu_blocks=num_cpu_blocks, watermark=0.0, policy=policy)
    if allocator:
        kwargs["allocator"] = allocator
    mgr = manager_cls(num_gpu_blocks, block_size, **kwargs)
    rep = StressReport()
    sh = _Shadow(mgr, rep)
    next_id = 0
    choices = ["allocate"] * 3 + ["step"] * 4 + ["append"] * 2 + ["free"] * 2
    choices += ["fork"] * 2 if fork else []
    choices += ["swap_out", "swap_in"] if swap else []
    while rep.ops < num_ops:
        op = rng.choice(choices)
        running = [s for s in sh.tables if s not in sh.swapped]
        rep.ops += 1
        try:
            if op == "allocate":
                n = rng.randint(0, 12 * block_size)
                table = mgr.allocate(next_id, n)
                sh.take(next_id, table, set(table))
                next_id += 1
            elif op == "step" and running:
                batch = rng.sample(running, rng.randint(1, min(len(running), 32)))
                before = {s: mgr.num_tokens(s) for s in batch}
                res = mgr.step(batch)
                for v in res.preempted:
                    sh.drop(v)
                live = [s for s in batch if s not in set(res.preempted)]
                new_by_seq = {s: set() for s in live}
                for s, b in res.new_blocks:
                    new_by_seq[s].add(b)
                for s in live:
                    sh.refresh(s, new_by_seq[s])
                for s, slot in zip(live, res.slots, strict=True):
                    t = before[s]
                    if slot != sh.tables[s][t // block_size] * block_size + t % block_size:
                        rep.flag(f"step: slot {slot} of sequence {s} is not where its block table says")
                rep.preempted += len(res.preempted)
                rep.copies += len(res.copies)
            elif op == "append" and running:
                s = rng.choice(running)
                t, old = mgr.num_tokens(s), sh.tables[s]
                slot, copy = mgr.append_slot(s)
                table = mgr.block_table(s)
                fresh = set(table) - set(old)
                sh.drop(s)
                sh.take(s, table, fresh)
                if slot != table[t // block_size] * block_size + t % block_size:
                    rep.flag(f"append_slot: slot {slot} of sequence {s} is not where its block table says")
                if copy is not None and (copy[0] != old[-1] or copy[1] != table[-1]):
                    rep.flag(f"append_slot: copy {copy} is not (old last block, new last block)")
            elif op == "free" and sh.tables:
                s = rng.choice(list(sh.tables))
                mgr.free(s)
                sh.drop(s)
            elif op == "fork" and running:
                parent = rng.choice(running)
                mgr.fork(parent, next_id)
                sh.take(next_id, mgr.block_table(next_id), set())
                if sh.tables[next_id] != sh.tables[parent]:
                    rep.flag(f"fork: child {next_id} does not share its parent's blocks")
                next_id += 1
                rep.forks += 1
            elif op == "swap_out" and running:
                group = rng.sample(running, rng.randint(1, min(len(running), 4)))
                mgr.swap_out(group)
                for s in group:
                    sh.drop(s)
                    sh.tables[s] = mgr.block_table(s)
                    sh.swapped.add(s)
            elif op == "swap_in" and sh.swapped:
                group = rng.sample(sorted(sh.swapped), rng.randint(1, min(len(sh.swapped), 4)))
                held_before = set(sh.holders)
                mgr.swap_in(group)
                for s in group:
                    sh.drop(s)
                    table = mgr.block_table(s)
                    for b in set(table) & held_before:
                        rep.flag(f"swap_in gave block {b} to sequence {s} while others hold it")
                    sh.take(s, table, set())
        except OutOfBlocks:
            rep.refused += 1
        sh.check_totals()
        if rep.ops % 997 == 0:  # reference counts against the shadow, on a sample of blocks
            for b, n in list(sh.holders.items())[:64]:
                if mgr.ref_count(b) != n:
                    rep.flag(f"block {b}: ref count {mgr.ref_count(b)}, {n} sequences hold it")
    _drain(mgr, sh, rep)
    return rep


def _drain(mgr, sh: _Shadow, rep: StressReport) -> None:
    for s in list(sh.tables):
        mgr.free(s)
        sh.drop(s)
    if mgr.num_free_gpu_blocks != mgr.num_gpu_blocks or mgr.num_free_cpu_blocks != mgr.num_cpu_blocks:
        rep.flag(f"after freeing everything: {mgr.num_free_gpu_blocks}/{mgr.num_gpu_blocks} gpu and "
                 f"{mgr.num_free_cpu_blocks}/{mgr.num_cpu_blocks} cpu blocks free")
    stats = mgr.stats()
    if stats["used_gpu_blocks"] or stats["num_running"] or stats["num_swapped"]:
        rep.flag(f"after freeing everything, stats still show use: {stats}")


def stress_allocator(allocator_cls, num_ops: int = 100_000, *, seed: int = 0, num_blocks: int = 1000,
                     max_run: int = 64) -> StressReport:
    """Random ``allocate(n)`` / ``free`` of runs (n = 1 only when ``max_run == 1``): every run must lie
    in range on blocks nobody holds; at the end everything is free and (buddy) merged back."""
    rng = random.Random(seed)
    a = allocator_cls(num_blocks)
    initial_orders = a.free_blocks_per_order()
    rep = StressReport()
    owned = bytearray(num_blocks)
    runs: list[tuple[int, int]] = []
    while rep.ops < num_ops:
        rep.ops += 1
        if runs and rng.random() < 0.45:
            start, n = runs.pop(rng.randrange(len(runs)))
            if rng.random() < 0.3 and n > 1:  # free part of a run: the manager frees block by block
                k = rng.randint(1, n - 1)
                a.free(start + k, n - k)
                owned[start + k:start + n] = bytes(n - k)
                runs.append((start, k))
            else:
                a.free(start, n)
                owned[start:start + n] = bytes(n)
        else:
            n = rng.randint(1, max_run)
            start = a.allocate(n)
            if start is None:
                if a.largest_free_run() >= n:
                    rep.flag(f"allocate({n}) refused while largest_free_run() = {a.largest_free_run()}")
                rep.refused += 1
            elif start < 0 or start + n > num_blocks or any(owned[start:start + n]):
                rep.flag(f"allocate({n}) returned {start}: out of range or overlapping a held run")
            else:
                owned[start:start + n] = b"\x01" * n
                runs.append((start, n))
        if a.num_free_blocks != num_blocks - sum(owned) and len(rep.violations) < 1000:
            rep.flag(f"num_free_blocks {a.num_free_blocks} != {num_blocks - sum(owned)} unheld")
    for start, n in runs:
        a.free(start, n)
    if a.num_free_blocks != num_blocks or a.free_blocks_per_order() != initial_orders:
        rep.flag(f"after freeing everything: {a.num_free_blocks}/{num_blocks} free, runs per order "
                 f"{a.free_blocks_per_order()} != initial {initial_orders} (not merged back)")
    return rep
