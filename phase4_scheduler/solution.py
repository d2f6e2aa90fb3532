"""Solution scheduler: iteration-level continuous batching (Orca) over paged KV blocks (vLLM).

Every step is planned afresh within a token budget (``max_num_batched_tokens``):

1. **Decodes first**: one token for each running request whose context is cached, their slots from ONE
   batched ``BlockManager.step``; when the pool is short, a victim (lowest class, then latest admitted)
   is preempted by recompute or by swap (``_preempt``).
2. **Prefill chunks** of running requests, in admission order, each cut to the budget left (chunked
   prefill: a long prompt never stalls the decodes).
3. **Swap-in** of swapped requests (class, then arrival) while the pool keeps its watermark: nobody new
   is admitted while one is still swapped out.
4. **Admission** in policy order (class, then SJF on ``max_tokens``), with *aging*: a request waiting
   ``max_wait_steps`` (or preempted) goes ahead of every younger one. Admission stops at the first
   request that does not fit, so nobody jumps an aged request: its wait is bounded.
5. **Prefix caching** (a manager built with ``prefix_caching=True``): admission reuses the cached full
   blocks of the request's tokens and starts its prefill after them; a prefill chunk's full blocks are
   registered as it is scheduled (a request admitted later in the same step shares them: ``n`` > 1), a
   decode's once its tokens are on the host (``_cache_computed``).

Limit: the model runner's step, not the scheduler. Freed rows are refilled the next step (GPU busy,
P4.2) and prefill arrives in budget-sized chunks (inter-token latency, P4.3). The host cost per step,
O(running + waiting · log waiting), must stay below the GPU step it overlaps (``NOTES.md``).
"""

from __future__ import annotations

from itertools import chain
from operator import attrgetter

from phase4_scheduler.plan import ScheduledChunk, SchedulerBase, SchedulerConfig, StepPlan
from phase4_scheduler.request import Request, Status
from phase4_scheduler.table_rows import BlockTableRows

_num_computed, _kv_table, _kv_seat = attrgetter("num_computed"), attrgetter("kv_table"), attrgetter("kv_seat")
_request_id = attrgetter("request_id")


def _swap_in_key(r: Request) -> tuple:
    return (r.priority, r.arrival_step, r.request_id)


class Scheduler(SchedulerBase):
    name = "solution"

    def __init__(self, config: SchedulerConfig, block_manager):
        super().__init__(config, block_manager)
        # Block tables of running requests, kept up to date from what the manager returns (allocate's
        # table, step's new blocks) instead of asking for every request's table every step.
        self._tables: dict[int, list[int]] = {}
        # The same tables as rows of one matrix (a seat per running request): what the runner reads.
        self.table_rows = BlockTableRows(max(config.max_num_seqs, 1))
        # Prefix caching: full blocks of each running request registered with the manager so far.
        self._prefix = bool(getattr(block_manager, "prefix_caching", False))
        self._hashed: dict[int, int] = {}

    def _chunk(self, request: Request, num_tokens: int, is_decode: bool | None = None) -> ScheduledChunk:
        table = self._tables.get(request.request_id)
        if table is None:
            table = self._tables[request.request_id] = list(self.blocks.block_table(request.request_id))
        if request.first_scheduled_step < 0:
            request.first_scheduled_step = self.step_count
        if is_decode is None:
            is_decode = request.is_decoding
        return ScheduledChunk(request, request.num_computed, num_tokens, table, is_decode)

    def finish(self, request: Request, reason: str) -> None:
        if self._prefix and request.status is Status.RUNNING:
            self._register(request)  # its output's blocks too: a follow-up turn may reuse them
        self._release(request)
        super().finish(request, reason)

    def advance(self, plan: StepPlan) -> None:
        super().advance(plan)
        if self._prefix:
            self._cache_computed(plan)

    def _cache_computed(self, plan: StepPlan) -> None:
        """Register the full blocks this launched step completed (their K/V is written before any later
        step reads it: steps run in order on the device). A block whose last token was sampled by a step
        not read back yet waits until that token is on the host (a later step registers it)."""
        running = Status.RUNNING
        for r in chain(plan.decode_requests, (c.request for c in plan.explicit_chunks)):
            if r.status is running:  # (not aborted since the plan was made)
                self._register(r)

    def _register(self, r: Request, computed: int | None = None) -> None:
        """Register ``r``'s full blocks up to ``computed`` tokens (default: ``num_computed``) whose tokens are
        on the host. A prefill chunk's blocks are registered when it is scheduled, so a request admitted later
        in the SAME step can share them: the runner writes every scheduled token's K/V into the cache before
        any attention of the layer reads it (``runner.attend``), and the step is launched right after."""
        bs = self.blocks.block_size
        known = len(r.prompt_ids) + len(r.output_ids)
        full = min(r.num_computed if computed is None else computed, known) // bs
        if full > self._hashed.get(r.request_id, 0):
            self.blocks.cache_full_blocks(r.request_id, (r.prompt_ids + r.output_ids)[:full * bs])
            self._hashed[r.request_id] = full

    def _release(self, r: Request, keep_slots: bool = False) -> None:
        """Forget ``r``'s table (finished or preempted): its seat is free for the next admission.
        ``keep_slots``: swapped out — the manager keeps its token count, so ``kv_slots`` stays true."""
        self._tables.pop(r.request_id, None)
        if not keep_slots:
            self._hashed.pop(r.request_id, None)
        if r.kv_seat >= 0:
            self.table_rows.remove(r.kv_seat)
        r.kv_table, r.kv_seat = None, -1
        if not keep_slots:
            r.kv_slots = 0

    # ------------------------------------------------------------------ ordering
    def is_aged(self, r: Request) -> bool:
        limit = self.config.max_wait_steps
        return r.num_preemptions > 0 or (limit is not None and self.step_count - r.arrival_step >= limit)

    def waiting_key(self, r: Request) -> tuple:
        if self.is_aged(r):
            return (0, 0, 0, r.arrival_step, r.request_id)
        policy = self.config.policy
        if policy == "fcfs":
            return (1, 0, 0, r.arrival_step, r.request_id)
        length = r.max_tokens if policy == "sjf" else 0
        return (1, r.priority, length, r.arrival_step, r.request_id)

    def _victim(self) -> Request:
        """The request preempted first: the lowest class (largest ``priority``), then the latest admitted."""
        top = max(r.priority for r in self.running)
        return next(r for r in reversed(self.running) if r.priority == top)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> StepPlan:
        self.step_count += 1
        plan = StepPlan(self.step_count)
        budget = self.config.max_num_batched_tokens

        # One pass over the running requests (``Request.num_pending`` inlined): this loop runs for every
        # running request, every step. A decode (its whole context cached but the last token) goes into
        # the plan's columns (no object per request: ``StepPlan``); a request with more to compute gets a
        # prefill chunk after them. Who needs a new KV slot is known from ``Request.kv_slots``, without a
        # call into the manager per request; block tables are kept from what the manager returns, as
        # lists and as rows of one matrix (``table_rows``) the runner gathers in one index.
        decodes, reserved, landed, prefills = [], [], [], []
        for r in self.running:
            flying = r.num_in_flight
            done = len(r.output_ids) + flying
            if done >= r.max_tokens:
                continue  # its last token is in flight: nothing left to compute
            computed = r.num_computed
            p = len(r.prompt_ids) + done - computed
            if p == 1:
                decodes.append(r)
                if r.kv_slots > computed:
                    reserved.append(r)  # ``allocate`` reserved its position's slot (see ``_make_room``)
                if not flying:
                    landed.append(r)  # its last token is on the host (not sampled by a step still in flight)
            elif p > 1:
                prefills.append((r, p))
        if decodes:
            need = decodes if not reserved else [r for r in decodes if r.kv_slots <= r.num_computed]
            decodes = self._make_room(decodes, need, plan)
            plan.decode_requests = decodes
            plan.decode_starts = list(map(_num_computed, decodes))
            plan.decode_tables = list(map(_kv_table, decodes))
            plan.decode_seats = list(map(_kv_seat, decodes))
            plan.table_rows = self.table_rows
            if landed:
                running = Status.RUNNING
                plan.decode_landed = landed = [r for r in landed if r.status is running]
                # the last prompt token (a chunked prefill's 1-token remainder): not a decode
                plan.decode_tails = [r for r in landed if not r.output_ids]
            budget -= len(decodes)

        running = Status.RUNNING
        for r, p in prefills:
            if budget > 0 and r.status is running:  # (not preempted just now)
                n = min(p, budget)
                plan.explicit_chunks.append(self._chunk(r, n))
                if self._prefix:
                    self._register(r, r.num_computed + n)
                budget -= n

        # A step that had to preempt admits nobody: the pool is short, a new prompt would only thrash.
        # Swapped requests come back before anyone new is admitted.
        if plan.preempted:
            return plan
        if self.swapped:
            budget = self._swap_in(plan, budget)
            if self.swapped:
                return plan
        # Keys do not change within a step, so one sort gives the admission order.
        if not self.waiting or budget <= 0 or len(self.running) >= self.config.max_num_seqs:
            return plan
        for r in sorted(self.waiting, key=self.waiting_key):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            if r.num_pending == 0:
                continue  # preempted while its last token was in flight: it finishes when that token lands
            if not self.blocks.can_allocate(r.num_tokens):
                break  # head-of-line: nobody overtakes the best (possibly aged) request
            self.waiting.remove(r)
            self._admit(r)
            n = min(r.num_pending, budget)
            plan.explicit_chunks.append(self._chunk(r, n))
            if self._prefix:
                self._register(r, r.num_computed + n)  # before the next admission: it may share them
            budget -= n
        return plan

    def _admit(self, r: Request) -> None:
        """Blocks for ``r``'s tokens. With prefix caching, a request computing from scratch (not one
        prefilled elsewhere: its K/V is loaded into private blocks) reuses the cached chain of its tokens
        and starts after it; the manager never reuses the block of the last token, whose logits are
        needed (so a request with a token still in flight, unknown to the host, allocates plainly)."""
        rid = r.request_id
        if self._prefix and r.num_computed == 0 and not r.num_in_flight:
            table, cached = self.blocks.allocate_cached(rid, r.prompt_ids + r.output_ids)
            r.num_computed = cached
            self._hashed[rid] = cached // self.blocks.block_size
        else:
            table = self.blocks.allocate(rid, r.num_tokens)
        table = self._tables[rid] = r.kv_table = list(table)
        r.kv_seat = self.table_rows.add(table)
        r.kv_slots = r.num_tokens
        r.status = Status.RUNNING
        self.running.append(r)

    def _make_room(self, decodes: list[Request], need: list[Request], plan: StepPlan) -> list[Request]:
        """One new slot for each decode that needs one, preempting by recompute until they fit.

        A decode computes position ``num_computed`` and needs a slot for it unless ``allocate`` already
        reserved it: the manager's token count is ``max(kv_slots, num_computed)`` at every ``schedule``
        (``kv_slots``: what ``allocate`` reserved; every decode since then took exactly its position's
        slot), so who needs one (``need``, found by ``schedule``) is known without asking the manager."""
        while True:
            ids = list(map(_request_id, need))
            if self.blocks.can_append(ids):
                break
            victim = self._victim()
            self._preempt(victim, plan)
            plan.preempted.append(victim)
            decodes = [r for r in decodes if r is not victim]
            need = [r for r in need if r is not victim]
        if ids:
            new_blocks = self.blocks.step(ids).new_blocks
            if new_blocks:
                by_id, seats, blocks = self.by_id, [], []
                for rid, block in new_blocks:
                    r = by_id[rid]
                    r.kv_table.append(block)
                    seats.append(r.kv_seat)
                    blocks.append(block)
                self.table_rows.append_many(seats, blocks)
        return decodes

    def _preempt(self, r: Request, plan: StepPlan) -> None:
        """Recompute (default): ``r`` loses its blocks and waits again with ``num_computed = 0``. Swap
        (``SchedulerConfig.preemption = "swap"``): its blocks move to the manager's CPU pool (the runner
        copies them) and it keeps its progress; recompute when that pool is full. Swap trades FLOPs for
        PCIe: 2 × the victim's KV bytes over the bus instead of re-prefilling its ``n`` cached tokens; it
        pays when ``n`` is long or the GPU is busy, and costs pinned host memory."""
        self.running.remove(r)
        r.num_preemptions += 1
        if self.config.preemption == "swap" and len(r.kv_table) <= self.blocks.num_free_cpu_blocks:
            # (a table's blocks are distinct; blocks shared through the prefix cache stay on the GPU for
            # their other readers, and the victim's copies come back as private blocks)
            plan.swap_out = [*plan.swap_out, *self.blocks.swap_out([r.request_id])]
            self._release(r, keep_slots=True)
            r.status = Status.SWAPPED
            self.swapped.append(r)
            return
        self._release(r)
        self.blocks.free(r.request_id)
        r.num_computed = 0
        r.status = Status.WAITING
        self.waiting.appendleft(r)

    def _swap_in(self, plan: StepPlan, budget: int) -> int:
        """Swap requests back in (priority class, then arrival) and schedule their next chunk, while the
        pool keeps its watermark after their blocks and the decode slot they take; the budget left.
        In order: nobody overtakes the first swapped request that does not fit."""
        blocks, bs, limit = self.blocks, self.blocks.block_size, self.config.max_num_seqs
        for r in sorted(self.swapped, key=_swap_in_key):
            if budget <= 0 or len(self.running) >= limit:
                break
            p = r.num_pending
            if p == 0:
                continue  # its last token is in flight: it finishes where it is (its CPU blocks freed then)
            rid, computed = r.request_id, r.num_computed
            held = max(r.kv_slots, computed)  # the manager's token count (see ``_make_room``)
            slot = p == 1 and r.kv_slots <= computed  # a decode whose position has no slot yet
            need = -(-held // bs) + (slot and held % bs == 0)
            if not blocks.can_swap_in([rid]) or blocks.num_free_gpu_blocks - need < blocks.watermark_blocks:
                break
            copies = blocks.swap_in([rid])
            self.swapped.remove(r)
            table = self._tables[rid] = r.kv_table = list(blocks.block_table(rid))
            if slot:
                table.extend(b for _, b in blocks.step([rid]).new_blocks)
            r.kv_seat = self.table_rows.add(table)
            r.status = Status.RUNNING
            self.running.append(r)
            plan.swap_in = [*plan.swap_in, *copies]
            plan.swapped_in = [*plan.swapped_in, r]
            n = min(p, budget)
            plan.explicit_chunks.append(self._chunk(r, n))
            budget -= n
        return budget


def build(config: SchedulerConfig, block_manager) -> Scheduler:
    return Scheduler(config, block_manager)
