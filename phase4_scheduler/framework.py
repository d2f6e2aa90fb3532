"""Framework scheduler: first-come first-served *static* batching.

A batch of up to ``max_num_seqs`` requests is admitted only when the previous batch has completely
finished, with KV blocks reserved for every request's prompt + ``max_tokens`` up front. Each step
prefills the whole batch's prompts at once, then decodes until the last request of the batch ends.

What is slow, and why: a batch runs as long as its longest request, so a slot whose request ended
early idles while new requests wait (the GPU computes fewer and fewer rows per step); a short
request that arrives behind long ones waits for all of them; and reserving ``max_tokens`` of KV per
request caps the batch size by what requests *might* generate rather than what they do. The
token budget is ignored (whole prompts at once), which makes steps uneven. It never preempts and is
correct: every request finishes with the tokens the model produces.
"""

from __future__ import annotations

from phase4_scheduler.plan import SchedulerBase, SchedulerConfig, StepPlan
from phase4_scheduler.request import Status


class Scheduler(SchedulerBase):
    name = "framework"

    def __init__(self, config: SchedulerConfig, block_manager):
        super().__init__(config, block_manager)

    def schedule(self) -> StepPlan:
        self.step_count += 1
        plan = StepPlan(self.step_count)
        if not self.running:
            self._admit_batch()
        for r in self.running:
            if r.num_pending:  # 0: its last token is still on its way back (an overlapped engine)
                plan.chunks.append(self._chunk(r, r.num_pending))
        return plan

    def _admit_batch(self) -> None:
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            r = self.waiting[0]
            if not self.blocks.can_allocate(r.max_total_tokens):
                break
            self.waiting.popleft()
            # Reserve the whole request: no step ever needs a new block, so nothing is preempted.
            self.blocks.allocate(r.request_id, r.max_total_tokens)
            r.status = Status.RUNNING
            self.running.append(r)


def build(config: SchedulerConfig, block_manager) -> Scheduler:
    return Scheduler(config, block_manager)
