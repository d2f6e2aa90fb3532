"""Write phase4_scheduler/notebook.ipynb (the lesson's source of truth is this script).

Tasks first: the notebook opens with what to build in ``mine.py`` (a scheduler: continuous batching, chunked
prefill, preemption, SJF with aging) and the targets that check it, then teaches static vs continuous
batching, the waiting-queue order, preemption, the server and prefill/decode disaggregation, each with a
"your turn" cell on the learner's scheduler (the framework until ``mine.py`` exists), and ends with the worked
answer (``solution.py``). Everything runs on a CPU with the bundled kjv-llama-18m in about half a minute;
the GPU targets are left to ``make check-phase4``'s report.
Run: ``.venv/bin/python phase4_scheduler/scripts/make_notebook.py``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 4 — continuous batching, a paged model runner, an OpenAI-compatible server

Phase 0 generated for one fixed batch; phase 1 gave us a block manager; phase 3 gave us attention over
paged KV. This lesson puts them together into a *serving* engine and asks the question a server lives
by: **which tokens should the model compute this step?** The notebook runs on a CPU with the bundled
kjv-llama-18m; the GPU targets (throughput against HF, GPU busy, latencies, disaggregation) are measured by
`make check-phase4` on a GPU.

## 1. Your tasks

Start your scheduler from the framework (static batching):

```
cp phase4_scheduler/framework.py phase4_scheduler/mine.py
```

Keep the contract of [`__init__.py`](__init__.py): `build(config: SchedulerConfig, block_manager) -> Scheduler`,
whose `schedule()` returns a `StepPlan` — the span `[start, start + n)` of each request the model computes this
step, with its block table. The framework admits a batch only when the previous one has finished, reserves
`prompt + max_tokens` of KV per request up front and prefills whole prompts at once, ignoring the token budget.
Make it:

1. **Continuous batching** (Orca): plan every step afresh; a finished request's seat is taken by a waiting one
   the next step.
2. **KV on demand** (vLLM): allocate a request's prompt at admission, then one slot per decode
   (`block_manager.can_append` / `step`), so the batch is bounded by tokens generated, not by `max_tokens`.
3. **A token budget with chunked prefill** (Sarathi-Serve): decodes first (one token each), then prompt chunks
   cut to what is left of `max_num_batched_tokens`.
4. **Preemption by recompute** when the pool runs dry: free a victim's blocks (lowest class, then the latest
   admitted), put it back at the head of the queue with `num_computed = 0`. Optional: swap
   (`SchedulerConfig(preemption="swap")`).
5. **Waiting-queue order**: priority class, then shortest job first on `max_tokens`, with *aging* — a request
   waiting `max_wait_steps` goes ahead of every younger one, and admission stops at the first request that does
   not fit.

The targets (the next cell prints them from `checks.py`, so they are the ones the check applies):

- **P4.1** offline throughput on a mixed 10 / 200-token workload against the phase's own static batching (the
  framework), same requests and seats; HF transformers' `generate_batch` is reported beside it (GPU).
- **P4.2** GPU busy under saturating load (GPU).
- **P4.3** TTFT at light load and the inter-token time at 32 streams, through the HTTP server (GPU).
- **P4.4** SJF against FCFS on the short requests' mean latency in engine steps, and the long job's wait with
  aging: bounded (steps, so the same on every machine).
- **P4.5** a 10× overload of a live server: every accepted request completes, the rest get 429, the KV is free after.
- **P4.6, P4.7** prefill/decode disaggregation (`disagg/`, section 6): the KV transfer's bandwidth against the copy
  bandwidth, and the decode side's TPOT p99 against the colocated engine's (GPU). They measure the phase's
  `disagg/` package on the solution's scheduler, whatever `IMPL` names.
- **P4.8** prefix caching (`--enable-prefix-caching`): a shared-prefix workload with and without the cache,
  greedy tokens identical, hit rate reported.
- **P4.9, P4.10** the offline run against its roofline (per step, max(bytes / copy bandwidth, FLOPs / matmul peak),
  summed over the steps) and the host's share of a step at 256 requests (GPU).
- **P4.11, P4.12** online serving through the HTTP server (`online_bench`: two Poisson rates where some clients hang
  up, then a burst): the default flags against the best scheduler setting tried, and against the same engine
  offline — does the host path (HTTP, SSE, tokenizing) keep up with the GPU? (GPU)

**Hints.** Subclass `plan.SchedulerBase` as the framework does: it keeps the queues and does the end of a step
(`update` = `advance` + `apply`), `finish` and `abort`; you write `schedule`. `Request.num_pending` is what a request
still has to compute before it can sample (1 for a decode, the rest of the prompt for a prefill, prompt + output
after a recompute, 0 while its last token is in flight); `self._chunk(r, n)` makes its chunk. The block manager
(phase 1's, `policy="refuse"`): `can_allocate(n)`, `allocate(id, n)`, `can_append(ids)`, `step(ids)`, `free(id)`,
`block_table(id)`. The engine overlaps steps (step N is planned before step N−1's tokens are read back):
`num_pending` already counts the token in flight.

**Commands.**

| what | command | where |
|---|---|---|
| all targets and the report | `make check-phase4 IMPL=phase4_scheduler.mine` | a GPU |
| the CPU part (P4.1, P4.4, P4.5 measured; the GPU targets print SKIP with the reason) | `make check-phase4 IMPL=phase4_scheduler.mine SIZE=small` | any machine, under a minute |
| the phase's tests (the scheduler contract on your module) | `make test-phase4 IMPL=phase4_scheduler.mine` | any machine |
| the server on your scheduler | `python -m phase4_scheduler serve --model kjv-llama-18m --port 8000` | any machine |

The check writes a report: `reports/phase4_scheduler/<device>.md` for the solution on a GPU,
`<device>.phase4_scheduler.mine.<size>.md` beside it for your module; it asks the questions of section 7.
""")
code(r"""
from module0_profiling.notebook_env import import_phases_as_packages, your_module
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import random
import matplotlib.pyplot as plt

from phase0_prototype import load_model
from phase4_scheduler import Request, SchedulerConfig, load_impl
from phase4_scheduler.blocks import make_block_manager
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.bench import latency_in_steps
from phase4_scheduler.loadgen import Workload, run_offline

YOURS, HAVE_MINE = your_module("phase4_scheduler")  # the framework until mine.py exists
model = load_model("kjv-llama-18m", dtype="fp32")  # the bundled model, on the CPU
tok = model.tokenizer
""")
md(r"""
**Your turn (the contract).** Your scheduler driven without a model: the token a step samples for output `i` of
request `r` is a function of `(r, i)`, as a model's would be, so a request recomputed after preemption must end
with the same tokens. Twelve random requests (prompts of 1–20 tokens, 1–16 new tokens) arrive over four steps
into a pool too small for four full-length requests at once (4 seats, a budget of 16 tokens, 16 blocks of 4). Checked every step: the budget, the seats,
chunks that start at `num_computed` within the request's blocks; at the end: the right tokens and every block free.
""")
code(r"""
def drive(impl, draw=0, seqs=4, budget=16, num_blocks=16, block_size=4, show=0):
    rng = random.Random(draw)
    sched = load_impl(impl).build(SchedulerConfig(seqs, budget), make_block_manager(num_blocks, block_size))
    work = sorted(((rng.randrange(4), Request(list(range(5, 5 + rng.randint(1, 20))), rng.randint(1, 16)))
                   for _ in range(12)), key=lambda x: x[0])
    token = lambda r, i: 3 + (r.request_id * 31 + i * 7) % 50  # noqa: E731
    requests, step, over_budget, preempted = [r for _, r in work], 0, 0, 0
    name = {r.request_id: f"r{i}" for i, r in enumerate(requests)}
    while work or sched.has_unfinished():
        while work and work[0][0] <= step:
            sched.add(work.pop(0)[1])
        plan = sched.schedule()
        assert len(sched.running) <= seqs, "more running requests than seats"
        for c in plan.chunks:
            assert c.start == c.request.num_computed and len(c.block_table) * block_size >= c.end
        over_budget += plan.num_batched_tokens > budget
        preempted += len(plan.preempted)
        if step < show:
            print(f"step {step:2d}: " + ", ".join(f"{name[c.request.request_id]}:{'decode' if c.is_decode else c.num_tokens}"
                                                 for c in plan.chunks)
                  + "".join(f" | preempted {name[r.request_id]}" for r in plan.preempted))
        sched.update(plan, {c.request.request_id: token(c.request, len(c.request.output_ids)) for c in plan.chunks if c.sample})
        step += 1
        assert step < 2000, "no progress"
    right = all(r.output_ids == [token(r, i) for i in range(r.max_tokens)] for r in requests)
    bm = sched.blocks
    return (f"{step:3d} steps, steps over the budget {over_budget:3d}, preemptions {preempted:2d}, tokens right: {right}, "
            f"KV free after: {bm.num_free_gpu_blocks == bm.num_gpu_blocks}")

for impl in dict.fromkeys((YOURS, "solution")):
    print(f"{impl:22s}", drive(impl))
""")

md(r"""
## 2. Static vs continuous batching: one trace per scheduler

**Static batching** (our `framework`): take a batch, run it until its longest request ends, then take the
next. Rows whose request finished compute nothing; a request arriving behind the batch waits for all of it.

**Iteration-level scheduling** (Orca, Yu et al., OSDI 2022): decide the batch again *every step*. A finished
request leaves at once and a waiting one takes its row the next step. Orca's second idea, *selective
batching*, is why this works for a transformer: the projections and the MLP treat the step's tokens as one
flat `[tokens, hidden]` matrix no matter which request they belong to, and only attention needs the grouping.
Our runner packs every scheduled token of every request on one axis (no padding) for that reason.

**Paged KV and preemption** (vLLM, Kwon et al., SOSP 2023): memory is handed out block by block as requests
grow, so the batch is limited by tokens actually generated, not by `max_tokens`. When the pool runs dry a
running request is *preempted*: its blocks are freed and it is later recomputed from its prompt + output.

**Chunked prefill** (Sarathi-Serve, Agrawal et al., OSDI 2024): a per-step token budget; decodes go first (one
token each), then prompt pieces fill what is left, so a long prompt never stalls everyone's next token.

We run the same 12 requests (half 10 new tokens, half 60) through the schedulers with 4 seats and a budget of
32 tokens per step, and record what each step computed: decode tokens, prefill tokens, and preemptions.
**Your turn:** your scheduler is traced beside the framework and the solution.
""")
code(r"""
workload = Workload(num_requests=12, short_tokens=10, long_tokens=60, prompt_words=30)

def trace(impl):
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32), impl,
                                                  block_size=16))
    requests = [engine.make_request(tok.encode(p), n, ignore_eos=True) for _, n, p in workload.requests()]
    steps = []
    engine.generate(requests, on_step=lambda e: steps.append(
        (e.last_step.plan.num_decodes, e.last_step.plan.num_prefill_tokens, len(e.last_step.plan.preempted))))
    return steps

impls = {"static (framework)": "framework", "continuous (solution)": "solution"}
if YOURS not in impls.values():
    impls[f"yours ({YOURS})"] = YOURS
traces = {name: trace(impl) for name, impl in impls.items()}
busy = lambda steps: sum(d for d, _, _ in steps) / len(steps)  # noqa: E731
for name, steps in traces.items():
    print(f"{name:34s} {len(steps):4d} steps, mean decode rows per step {busy(steps):.2f} (of 4 seats)")
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
fig, axes = plt.subplots(len(traces), 1, figsize=(10, 2.5 * len(traces)), sharex=True)
for ax, (name, steps) in zip(axes, traces.items()):
    x = range(len(steps))
    decodes = [d for d, _, _ in steps]
    prefill = [p for _, p, _ in steps]
    ax.bar(x, decodes, width=1.0, label="decode tokens", color="tab:blue")
    ax.bar(x, prefill, width=1.0, bottom=decodes, label="prefill tokens", color="tab:orange")
    ax.set_ylabel("tokens / step")
    ax.set_title(name)
axes[0].legend()
axes[-1].set_xlabel("step")
plt.tight_layout()
""")
md(r"""
Read the plots. In the static one, the first step of each batch is one large prefill (every prompt
at once, over the budget), then the decode bar *shrinks* as short requests end: their seats idle until the
longest request of the batch finishes. In the continuous one the decode bar stays at the number of seats
while requests remain, and prefill arrives in budget-sized chunks *beside* decodes — a new request starts
the step after a seat frees.

## 3. Which request goes next: priority, SJF, aging

The waiting queue is ordered by priority class, then by requested length (shortest job first: a 10-token
request should not wait behind a 200-token one), then by arrival. SJF alone can starve a long request
while short ones keep arriving, so a request that has waited `max_wait_steps` steps goes ahead of every
younger one (*aging*), and admission stops at the first request that does not fit instead of skipping
it — so nothing overtakes an aged request and its wait is bounded. Below, one long job arrives with two
short ones while a new short job arrives every step, and there are 2 seats (the solution's scheduler).
""")
code(r"""
def long_job_wait(max_wait, impl="solution"):
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(2, 32, "sjf", max_wait), impl, block_size=16))
    long_job = engine.make_request(tok.encode("In the beginning"), 40, ignore_eos=True)
    first = [long_job] + [engine.make_request(tok.encode("And"), 3, ignore_eos=True) for _ in range(2)]
    stream = [engine.make_request(tok.encode("And God said"), 3, ignore_eos=True) for _ in range(60)]
    engine.generate(first, on_step=lambda e: stream and e.add(stream.pop(0)))
    return long_job.first_scheduled_step - long_job.arrival_step

print("long job waited", long_job_wait(None), "steps without aging,", long_job_wait(16), "steps with max_wait_steps=16")
""")
md(r"""
**Your turn (P4.4, in small).** The check's two halves on your scheduler: the mean latency of the short requests
under FCFS and under SJF in engine steps (8 requests, half 10 and half 40 tokens, 2 seats; the check runs 16
requests of 10 and 60 tokens on 4 seats and asks for ≥ 2×), and the long job's wait with `max_wait_steps=16` against the check's
bound (the age limit + one short job in the seat + admission = 21 steps). Static batching ignores the policy.
""")
code(r"""
small = Workload(8, short_tokens=10, long_tokens=40)
short = {policy: latency_in_steps(BatchingEngine(model, BatchingConfig(SchedulerConfig(2, 128, policy, None), YOURS)),
                                  small)["short_mean_steps"] for policy in ("fcfs", "sjf")}
wait = long_job_wait(16, YOURS)
print(f"{YOURS}: short requests {short['fcfs'] / short['sjf']:.2f}× faster under SJF than FCFS; "
      f"long job's wait with aging {wait} steps (bound 21: {'within' if wait <= 21 else 'over'})")
""")

md(r"""
## 4. Preemption by recompute

With a pool too small for every running request, the scheduler frees the lowest-priority, most recently
admitted request and puts it back at the head of the queue; when it returns, the same rule that prefills a
prompt recomputes its prompt *and* the tokens it had generated. Its greedy tokens do not change.

The other way out is a host pool (`SchedulerConfig(preemption="swap")`, `BatchingConfig(swap_space=...)`,
`--preemption swap`): the victim's KV blocks are copied to pinned host memory and back when it returns, so it pays
about twice its KV bytes over PCIe instead of recomputing its prefill; when the pool is full the scheduler falls
back to recompute. **Your turn:** four identical requests of 30 greedy tokens in a pool of 10 blocks of 8 tokens,
on the solution and on your scheduler.
""")
code(r"""
def squeeze(impl):
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(4, 64), impl, num_blocks=10, block_size=8))
    reqs = [engine.make_request(tok.encode("And the LORD spake unto Moses, saying"), 30, ignore_eos=True) for _ in range(4)]
    preempted = []
    engine.generate(reqs, on_step=lambda e: preempted.extend(r.request_id for r in e.last_step.plan.preempted))
    print(f"{impl:22s} preemptions: {len(preempted)} | all four answers identical: "
          f"{len({tuple(r.output_ids) for r in reqs}) == 1} | KV blocks free at the end: "
          f"{engine.blocks.num_free_gpu_blocks} of {engine.blocks.num_gpu_blocks}")

for impl in dict.fromkeys(("solution", YOURS)):
    squeeze(impl)
""")

md(r"""
## 5. The server

`python -m phase4_scheduler serve --model kjv-llama-18m --port 8000` starts the OpenAI-compatible server: the
engine loop runs in a background thread and the FastAPI event loop talks to it through an inbox. Any OpenAI
client works; here the official one against a server on a free local port.
""")
code(r"""
import openai
from phase4_scheduler.loadgen import run_http
from phase4_scheduler.serve import ServerThread, build_app

app, loop = build_app("kjv-llama-18m", scheduler=SchedulerConfig(8, 64))
with ServerThread(app) as server:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    stream = client.completions.create(model="kjv-llama-18m", prompt="In the beginning", max_tokens=16,
                                       temperature=0, stream=True)
    print("".join(chunk.choices[0].text for chunk in stream))
""")
md(r"""
**Your turn (P4.5).** The check's overload on your scheduler: 2 seats and a queue of 2, then 40 requests at once
(10× what fits). A request the queue cannot take is refused with HTTP 429 at once; every accepted one must
complete, and every KV block must be free afterwards.
""")
code(r"""
app, loop = build_app("kjv-llama-18m", scheduler_impl=YOURS, scheduler=SchedulerConfig(2, 128), max_queue=2)
with ServerThread(app) as server:
    over = await run_http(server.url, "kjv-llama-18m", Workload(40, 10, 20))  # (the notebook runs an event loop)
lost = over["requests"] - over["completed"] - over["rejected"]
blocks = loop.engine.blocks
print(f"{YOURS}: {over['completed']} completed, {over['rejected']} refused with 429, {lost} lost; "
      f"KV free after: {blocks.num_free_gpu_blocks == blocks.num_gpu_blocks}")
""")

md(r"""
## 6. Prefill/decode disaggregation

Under a prefill-heavy load the colocated engine's decode steps carry prompt chunks (chunked prefill), so
every running request's time per output token (TPOT) grows with the prompts arriving beside it, and TTFT
and TPOT cannot be tuned apart. DistServe and Splitwise split the two phases into separate instances:
a **prefill worker** runs the prompt and samples the first token, keeps the prompt's KV blocks
(`Request.keep_kv`) until it has exported them, and sends them with the first token straight to a
**decode worker**, which admits the request with its prompt already computed
(`BatchingEngine.add_prefilled`: `num_computed = len(prompt)`, the first token in `output_ids`), imports
the KV into the blocks its own scheduler allocated, and decodes. A router (vLLM's disaggregated-prefill
proxy) sends each request to prefill, hears its first token, and collects the rest from decode.

The price: the KV crosses between instances (a gather into a buffer, shared memory on CPU or a CUDA IPC
handle on a GPU, and a scatter: `disagg/kv_transfer.py`), and each instance holds its own weights. Greedy
tokens do not change. **Your turn:** each worker is a `BatchingEngine`, so the cell runs your scheduler on both
sides and compares with one colocated engine on your scheduler: a decode worker admits a request whose whole
prompt is computed, so its first chunk is one decode.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase4_scheduler.disagg import bench
from phase4_scheduler.disagg.router import DisaggregatedEngine, generate_colocated

config = BatchingConfig(SchedulerConfig(8, 64), YOURS, block_size=16, num_blocks=256)
prompts = [tok.encode(t) for t in ("In the beginning God created", "And the LORD spake unto Moses, saying",
                                   "Blessed are the meek: for they")]
colocated = generate_colocated(BatchingEngine(model, config), prompts, 16, ignore_eos=True)
with DisaggregatedEngine("kjv-llama-18m", prefill=config, decode=config) as pd:
    split = pd.generate(prompts, 16, ignore_eos=True)
    print("KV blocks (free, total) after the run:", pd.kv_free())
for c, d in zip(colocated, split):
    print(repr(tok.decode(d.output_ids)[:48]), "| same tokens:", c.output_ids == d.output_ids,
          f"| KV moved: {d.kv_bytes / 1024:.0f} KiB in {d.transfer_s * 1e3:.2f} ms")
""")
md(r"""
The bench (P4.6, P4.7) runs a prefill-heavy Poisson load — long prompts, short outputs — through both
engines (the solution's scheduler): TTFT and TPOT percentiles, goodput (requests per second meeting both SLOs,
DistServe's metric), the KV transfer's bandwidth and greedy equality. On this CPU the two workers and the router
share the cores, so the figures show the mechanics; the targets (KV transfer ≥ 50 % of the measured copy
bandwidth, decode TPOT p99 ≤ 0.7× colocated) are for one GPU (`size="full"`).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
m = bench.run("small")
print(bench.table(m, bench.SIZES["small"]))
""")

md(r"""
## 7. Prefix caching: a shared prompt prefilled once

Requests that start the same way — one system prompt and few-shot examples, or the `n` choices of one request —
need the same K/V for that start. With `enable_prefix_caching` (`--enable-prefix-caching`) phase 1's block manager
names every full block by a hash of its tokens chained to the previous block's (vLLM's scheme: a block's K/V depends
on every token before it), keeps blocks nobody references as *evictable* (counted free, evicted least recently
released first), and hands a new request the longest chain of cached blocks of its tokens: its prefill starts after
them. The block holding the prompt's last token is never reused — that token is recomputed so its logits exist, and
no step writes into a block another request reads. Below: 24 requests sharing a 768-token prefix and 12 copies of
one prompt, with and without the cache, on `random:tiny` (P4.8 measures the same at TinyLlama's size on a GPU).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase4_scheduler.prefix_bench import run_prefix_bench

p = run_prefix_bench("small")
print(f"throughput with / without the cache: {p['p4_8_prefix_speedup']:.2f}x | hit rate {p['prefix_hit_rate']:.0%} | "
      f"greedy tokens identical: {bool(p['prefix_greedy_identical'])}")
""")
md(r"""
On this CPU a step costs about the same whatever its size, so the gain is the prefill steps the cache removes; on
a GPU it is the prefill FLOPs as well.

## 8. The offline run against its roofline

How close does a serving run come to the time its steps must take? Per step, the floor is the larger of (every
weight once + the cached K/V read + the new K/V written) / copy bandwidth and the step's FLOPs / matmul peak, both
measured on this machine (module 0); summed over the steps the scheduler ran, it is the run's floor, and floor /
wall time is the fraction of the roofline achieved (P4.9: ≥ 70 % at 256 seats on a GPU, where decode steps sit
left of the ridge and prefill chunks right of it). `step_roofline.StepRecorder` records each step's shape from the
plan.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.hardware import detect_device, measured_peaks
from module0_profiling.roofline import Ceiling
from phase4_scheduler import step_roofline

peaks = measured_peaks(detect_device())
engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(8, 128)))
reqs = [engine.make_request(tok.encode(p), n, ignore_eos=True) for p, n in [("In the beginning", 40),
        ("And God said, Let there be light", 10)] * 4]
r = step_roofline.measure(engine, lambda: engine.generate(reqs), Ceiling("measured", peaks.matmul_tflops,
                          peaks.copy_gbps), 8)
print(step_roofline.table(r, "8 requests, 8 seats", False))
""")

md(r"""
## 9. Check

`make check-phase4 IMPL=phase4_scheduler.mine SIZE=small` (or `python -m module0_profiling.check phase4_scheduler
--impl phase4_scheduler.mine --size small`) measures P4.1 (against static batching), P4.4 (SJF vs FCFS in steps, aging's bound) and P4.5 (10× overload:
429s, nothing lost, KV free) on a CPU in under a minute (run it from a terminal: sections 3 and 5 ran its two
measurements in small) and P4.8 (prefix caching, section 7); the GPU targets P4.2–P4.3
(GPU busy, TTFT/TPOT), P4.6–P4.7 (disaggregation), P4.9–P4.10 (roofline, host share) and P4.11–P4.12 (online
serving) need a CUDA GPU and are SKIP there (the online serving table still shows the CPU's figures).

The report asks you to explain your figures:

1. Static batching reserves `max_tokens` of KV per request and keeps a batch until its longest request ends: how
   many rows per step did each engine compute on average, and how much of the throughput gap does that explain?
2. What happens to TPOT p99 if the token budget is raised to a whole long prompt (Sarathi-Serve's stall-free
   batching argument)?
3. Where are the gaps on the GPU timeline: between steps (scheduling, sampling, reading tokens back) or inside a
   step (decode graphs not used because a prefill chunk is present)?
4. Under 10× overload, how many requests got 429, did every accepted one complete, and was every KV block free
   afterwards? On one GPU, what did time-sharing the SMs do to P4.7's ratio?

## 10. Worked answer: how `solution.py` does it

Read `solution.py` beside this summary. `schedule()` makes one pass over the running requests, then:

- **Decodes first.** A request whose whole context but its last token is cached decodes one token. Their slots
  come from ONE batched `BlockManager.step(ids)`; `_make_room` first asks `can_append(ids)` and, while the pool is
  short, preempts a victim (`_victim`: the lowest class, then the latest admitted) — by recompute (`_preempt`: its
  blocks freed, `num_computed = 0`, back at the head of `waiting`) or by swap when the host pool has room.
- **Prefill chunks** of running requests, in admission order, each cut to the budget left (chunked prefill).
- **No admission after a preemption** (the pool is short: a new prompt would only thrash); swapped requests come
  back (`_swap_in`, class then arrival, keeping the pool's watermark) before anyone new.
- **Admission** in `waiting_key` order — aged or preempted requests first by arrival, then class, then SJF on
  `max_tokens` — allocating the prompt's blocks (`allocate`), and stopping at the first request that does not fit
  (`can_allocate`), so nobody overtakes an aged request.

What makes it cheap per step (its host cost must stay under the GPU step it overlaps; `NOTES.md`): decodes are
kept as columns of the plan (`StepPlan.decode_*`, no object per request per step), block tables are kept from what
the manager returns (`allocate`'s table, `step`'s new blocks) and mirrored as rows of one matrix (`table_rows.py`)
that the runner gathers with one index, and `Request.kv_slots` says who needs a new slot without asking the manager.
The solution's first steps on the model-free workload of section 1:
""")
code(r"""
print(drive("solution", show=16))
""")
md(r"""
Each line lists the step's chunks: decodes first, then prefill chunks (their token counts) up to the 16-token
budget. The shortest jobs are admitted first (SJF), a prompt longer than the budget left is cut into chunks over
several steps, and when the pool runs dry the latest admitted request is preempted: it comes back at the head of
the queue a few steps later and prefills again from position 0. The rest of the phase is the engine around the
scheduler: `runner.py` (batched prefill + decode over phase 3's paged cache; CUDA graphs for decode-only steps on
a GPU), `engine.py` (overlapped steps, stop strings, per-request faults), `server.py` (FastAPI, SSE, 429 when the
queue is full) and `disagg/` (section 6).
""")

nb.write(Path(__file__).resolve().parents[1])
