"""Write phase1_rust_memory/notebook.ipynb (the lesson's source of truth is this script).

Tasks first: the notebook opens with what to build behind ``mine.py`` and the targets that check it, then
teaches paging, the buddy allocator, fork with copy-on-write and the cost of Python bookkeeping, each with
a "your turn" cell on the learner's module (the framework until ``mine.py`` exists), and ends with the
worked answer (the Rust solution). It runs on a CPU in seconds on a 300-request version of the check's
trace; the check's own figures come from ``make check-phase1``.
Run: ``.venv/bin/python phase1_rust_memory/scripts/make_notebook.py``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 1 — a KV-cache memory manager in Rust

Phase 0 kept each sequence's K and V in one contiguous tensor sized for the longest answer it might give.
This lesson replaces that with **paging** (vLLM, Kwon et al. 2023, §4): the cache is cut into fixed
blocks of 16 token slots, a sequence holds a *block table* of block ids, and a new block is taken only
when the last one is full. Then we make the bookkeeping fast by moving it to Rust, and add a **buddy
allocator** so that prompts can still get contiguous runs of blocks.

## 1. Your tasks

Start your module from the framework:

```
cp phase1_rust_memory/framework.py phase1_rust_memory/mine.py
```

`mine.py` is what the check imports. It must export the contract's five names — `BlockManager`,
`BuddyAllocator`, `LifoBlockAllocator`, `StepResult`, `OutOfBlocks` — with the methods `__init__.py`
documents. The framework is the Python reference manager over the Rust LIFO free list
(`rust/src/lifo.rs`): correct, slow, and missing two features. **What you write is Rust, called from
`mine.py`:**

1. **A buddy allocator** — `BuddyAllocator(num_blocks)`: `allocate(n)` returns the first block of a
   contiguous run of `n` (splitting a larger power-of-two run in halves), `free(start, n)` merges a run
   with its buddy while the buddy is free. Section 3 draws it. Prototype it in Python in `mine.py` if you
   like; it must end up in Rust with the manager.
2. **Fork with copy-on-write** — reference counts per block; `fork(parent, child)` shares every block;
   the first append into a shared, partly filled last block takes a new block and reports the
   `(src, dst)` copy to do first (section 4).
3. **The manager in Rust** — P1.1 asks for 10× the Python reference's throughput on the same trace.
   Rewriting the Python does not get there: the framework measures about 1× (section 6 shows why). Move
   the block tables, `step` and the refuse/preempt policies into Rust and call it once per decode step.

The Rust goes into a crate of your own (a pyo3 extension built by maturin, as `rust/` is): copy
`rust/Cargo.toml` and `rust/pyproject.toml` into a new folder, rename the package, the library, the
`module-name` and your `#[pymodule]` function (say `my_kvcache`) so your wheel does not replace the
solution's `titaninfer_kvcache`, and start from the framework's Rust: `lifo.rs`, `limits.rs`, `errors.rs`.
`rust/src/buddy.rs`, `block_manager/` and `python.rs` are the worked answer (section 8). `mine.py` then
imports your module and exports its types under the contract's names.

The targets (the next cell prints them from `checks.py`, so they are the ones the check applies):

- **P1.1** your manager against the Python reference, same 1000-request trace, batched API (one `step`
  per decode step): ops per second.
- **P1.2** KV slots allocated but unused at steady state (block 16): what paging buys.
- **P1.3** 10⁵+ random operations checked from the outside: no block held twice, no leak, all free at
  the end. **P1.3a** the same for contiguous runs of 1–64 (your buddy allocator), **P1.3b** with fork
  and copy-on-write. A module without the feature shows SKIP with its own `NotImplementedError` message.
- **P1.3c** the trace's calls replayed on the Python reference give the same answers, step by step.

**Hints.** P1.3c wants *identical* answers, so your choices must be the reference's: per-order free
lists popped last-in first-out, a prompt's blocks as the longest contiguous runs first, preemption
victims latest-admitted first. `reference_allocators.py` and `reference_block_manager.py` are the
executable specification. The stress runs and the tests catch `phase1_rust_memory.errors.OutOfBlocks`
(with attributes `needed`, `free`, `device`): raise that class — import it into your Rust with pyo3, or
translate your own error in `mine.py`. Validate every argument before changing anything: a failed call
must leave the manager as it was.

**Commands.**

| what | command | where |
|---|---|---|
| all targets and the report | `make check-phase1 IMPL=phase1_rust_memory.mine` | any machine, CPU only (without a GPU `SIZE=small` is the default: ~15 s) |
| the committed report's size | `make check-phase1 IMPL=phase1_rust_memory.mine SIZE=full` | longer stress runs, more timed repeats |
| the contract's semantic tests on your module (without `IMPL`: reference, framework and solution) | `make test-phase1 IMPL=phase1_rust_memory.mine` | any machine |
| build and install your crate | `.venv/bin/maturin build --release -m <crate>/Cargo.toml -o <crate>/dist` then `.venv/bin/python -m pip install --force-reinstall --no-deps <crate>/dist/*.whl` | needs `cargo` |
| your crate's own tests | `cargo test --manifest-path <crate>/Cargo.toml` | keep the core plain Rust (pyo3 behind a feature, as `rust/Cargo.toml`) |

The check writes `reports/phase1_rust_memory/<machine>.md` for the solution at full size and
`<machine>.phase1_rust_memory.mine.<size>.md` beside it for your module; its template asks the
questions of section 8.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.notebook_env import import_phases_as_packages
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import importlib.util
import statistics
import time

import matplotlib.pyplot as plt

from phase1_rust_memory import load_impl, native_available, reference
from phase1_rust_memory.bench import kv_bytes_per_block
from phase1_rust_memory.checks import TARGETS
from phase1_rust_memory.stress import stress_allocator, stress_block_manager
from phase1_rust_memory.trace import TraceSpec, bind, make_requests, replay, simulate

for t in TARGETS:
    print(f"{t.id:6s} {t.threshold:18s} {t.description}")

print("\nRust extension built:", native_available())
HAVE_MINE = importlib.util.find_spec("phase1_rust_memory.mine") is not None
# (the framework needs the extension's LIFO free list: without `make setup`, the reference stands in)
LEARNER = "phase1_rust_memory.mine" if HAVE_MINE else "framework" if native_available() else "reference"
learner = load_impl(LEARNER)
print("your module:", LEARNER if HAVE_MINE else
      f"not there yet: cp phase1_rust_memory/framework.py phase1_rust_memory/mine.py (the cells below use {LEARNER})")


def missing(fn):
    # None when fn() works, else the module's own NotImplementedError message (as the check reports it)
    try:
        fn()
    except NotImplementedError as e:
        return str(e)


def fork_probe(m):
    m.allocate(0, 1)
    m.fork(0, 1)

NO_BUDDY, NO_FORK = missing(lambda: learner.BuddyAllocator(8)), missing(lambda: fork_probe(learner.BlockManager(8, 4)))
ALLOCATOR = "lifo" if NO_BUDDY else "buddy"  # the check gives a module without a buddy allocator its LIFO
""")

md(r"""
## 2. Contiguous vs paged: how much of the KV memory holds tokens?

A 1000-request trace of mixed lengths (prompts 16–1024 tokens, outputs 16–2048, Poisson
arrivals) served by a small continuous-batching loop over a pool of 8192 blocks. Here we take the
first 300 requests to keep the notebook quick, served by the Python reference. At steady state we
compare the slots a **contiguous** allocator would reserve (prompt limit + output limit = 3072 tokens
per sequence, because it cannot know the answer's length in advance) with the slots **paging** has
allocated.
""")
code(r"""
spec = TraceSpec(num_requests=300)
requests = make_requests(spec)
sim = simulate(reference.BlockManager(spec.num_gpu_blocks, spec.block_size, policy="preempt"), spec, requests)
s = sim.samples
stored = sum(x["stored_tokens"] for x in s)
paged = sum(x["allocated_slots"] for x in s)
contiguous = sum(x["contiguous_reserved_slots"] for x in s)
print(f"steps {len(sim.steps)}, tokens appended {sim.num_tokens_appended}, preemptions {sim.preemptions}")
print(f"running sequences at steady state: {statistics.mean(x['num_running'] for x in s):.0f}")
print(f"paged:      {100 * (1 - stored / paged):.2f} % of allocated slots unused")
print(f"contiguous: {100 * (1 - stored / contiguous):.1f} % of reserved slots unused")
gib = kv_bytes_per_block(16) / 16 / 2**30
print(f"per running sequence, TinyLlama bf16: paged {paged / len(s) / statistics.mean(x['num_running'] for x in s) * gib * 1024:.0f} MiB"
      f" vs contiguous {3072 * gib * 1024:.0f} MiB")
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(["contiguous (reserve 3072)", "paged (block 16)"], [contiguous / len(s), paged / len(s)], color="#bbb", label="reserved / allocated")
ax.barh(["contiguous (reserve 3072)", "paged (block 16)"], [stored / len(s)] * 2, color="#2a7", label="holding tokens")
ax.set_xlabel("KV token slots at steady state (mean over samples)")
ax.legend(loc="lower right")
plt.tight_layout()
plt.show()
""")
md(r"""
The contiguous allocator wastes well over half of its memory on slots that will never — or not yet —
hold a token; paging wastes only the unfilled tail of each sequence's last block: on average half a
block, 8 slots of a ~1000-token sequence. That difference is the vLLM paper's argument: the freed
memory becomes more sequences in the batch, and batch size is what decode throughput is made of.

**Your turn (P1.2 and P1.3c).** Your manager serves the same requests, as in the check: its steady-state
waste, then its recorded calls replayed on the Python reference, which must give the same answers.
""")
code(r"""
def learner_manager():
    return learner.BlockManager(spec.num_gpu_blocks, spec.block_size, policy="preempt", allocator=ALLOCATOR)


def reference_manager():
    return reference.BlockManager(spec.num_gpu_blocks, spec.block_size, policy="preempt", allocator=ALLOCATOR)


mine_sim = simulate(learner_manager(), spec, requests)
unused = sum(x["unused_slots"] for x in mine_sim.samples) / sum(x["allocated_slots"] for x in mine_sim.samples)
print(f"{LEARNER} (allocator={ALLOCATOR}): {100 * unused:.2f} % of allocated slots unused (P1.2 needs < 5 %)")

check, answers, differing = reference_manager(), iter(mine_sim.step_results), 0
try:
    for i, ops in enumerate(mine_sim.steps):
        for name, args in ops:
            out = getattr(check, name)(*args)
            if name == "step":
                differing += (out.slots, out.new_blocks, out.copies, out.preempted) != tuple(next(answers))
    print(f"steps whose answers differ from the reference: {differing} of {len(mine_sim.steps)} (P1.3c needs 0)")
except Exception as e:  # noqa: BLE001 — a diverged replay shows the first call the reference refused
    print(f"the reference refused step {i}'s {name}{args!r}: {e} — your answers diverged earlier")
""")

md(r"""
## 3. The buddy allocator, drawn

A LIFO free list (the lesson's starting skeleton) hands out single blocks; after some churn a prompt's
blocks are scattered. The buddy allocator keeps free memory as aligned power-of-two runs: `allocate(n)`
splits a larger run in halves until it has the right order, `free` merges a run with its *buddy*
(`start XOR size`) while the buddy is free. Below, 16 blocks of the Python reference (the same answers as
the Rust one): each row is the state after one call.
""")
code(r"""
a = reference.BuddyAllocator(16)
calls = [("allocate", "A", 3), ("allocate", "B", 1), ("allocate", "C", 4), ("free", "A"), ("allocate", "D", 2),
         ("free", "C"), ("free", "B"), ("free", "D")]
runs, rows, labels, owners, expected = {}, [], [], [-1] * 16, []
for i, (op, name, *n) in enumerate(calls):
    if op == "allocate":
        start = a.allocate(n[0])
        runs[name] = (start, n[0])
        owners[start:start + n[0]] = [i] * n[0]
        labels.append(f"{name} = allocate({n[0]}) -> {start}")
    else:
        start, k = runs.pop(name)
        a.free(start, k)
        owners[start:start + k] = [-1] * k
        labels.append(f"free {name} ({start}, {k})")
    rows.append(list(owners))
    expected.append((start, a.free_blocks_per_order()))
    print(f"{labels[-1]:24} free runs per order {a.free_blocks_per_order()}  largest free run {a.largest_free_run()}")
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(7, 3.2))
palette = plt.get_cmap("tab10")
for r, own in enumerate(rows):
    for b, o in enumerate(own):
        ax.add_patch(plt.Rectangle((b, -r), 0.95, 0.9, color="#eee" if o < 0 else palette(o % 10)))
ax.set_xlim(0, 16); ax.set_ylim(-len(rows) + 0.9, 1)
ax.set_yticks([-r + 0.45 for r in range(len(rows))], labels)
ax.set_xticks(range(16))
ax.set_xlabel("block id (grey = free)")
plt.tight_layout()
plt.show()
""")
md(r"""
Watch the free-run counts: `allocate(3)` split 16 → 8 + 4 + (4 taken, its last block given back);
the final `free` merges everything back into one run of 16 — the invariant the Rust proptests check
after every random sequence.

**Your turn (P1.3a).** Your `BuddyAllocator` on the same eight calls (same starts, same free runs per
order), then 20,000 random `allocate(1–64)` / `free` calls checked from the outside, as the check does at
50,000 and more.
""")
code(r"""
if NO_BUDDY:
    print(f"{LEARNER}: {NO_BUDDY}")
else:
    b, runs_mine, got = learner.BuddyAllocator(16), {}, []
    for op, name, *n in calls:
        if op == "allocate":
            start = b.allocate(n[0])
            runs_mine[name] = (start, n[0])
        else:
            start, k = runs_mine.pop(name)
            b.free(start, k)
        got.append((start, b.free_blocks_per_order()))
    print("same answers as the reference on the eight calls:", got == expected)
    rep = stress_allocator(learner.BuddyAllocator, 20_000, seed=3, max_run=64)
    print(f"{rep.ops} random ops: {len(rep.violations)} violations, {rep.refused} refused (P1.3a needs 0 violations)",
          *rep.violations[:3], sep="\n  ")
""")

md(r"""
## 4. Sharing blocks: fork and copy-on-write

Parallel sampling and shared prompt prefixes give several sequences the same first tokens. `fork`
gives the child the parent's block table and adds one to each block's reference count; nothing is
copied. The first append into a shared, partly filled last block must not write into the other
sequence's copy: the manager takes a new block and returns the `(src, dst)` copy the model runner does
before the model writes (full blocks stay shared for good).
""")
code(r"""
m = reference.BlockManager(16, 4, watermark=0.0)
m.allocate(1, 6)  # 2 blocks of 4 slots: one full, one with 2 tokens
m.fork(1, 2)
print("after fork:  tables", m.block_table(1), m.block_table(2), " ref counts", [m.ref_count(b) for b in m.block_table(1)])
res = m.step([1, 2])
print("step([1, 2]):", res)
print("after step:  tables", m.block_table(1), m.block_table(2),
      " ref counts", [m.ref_count(b) for b in m.block_table(1)], [m.ref_count(b) for b in m.block_table(2)])
""")
md(r"""
Sequence 1 wrote first: its last block was shared, so it got block 2 and the copy `(1, 2)`; sequence 2
then held block 1 alone and wrote into it in place. Slot = block × 4 + offset: 10 and 6.

**Your turn (P1.3b).** 5,000 random calls with forks (and swaps) checked from the outside: reference
counts against the tables, each copy's source and destination, no block held twice.
""")
code(r"""
if NO_FORK:
    print(f"{LEARNER}: {NO_FORK}")
else:
    rep = stress_block_manager(learner.BlockManager, 5_000, seed=4, fork=True)
    print(f"{rep.ops} random ops, {rep.forks} forks, {rep.copies} copies: {len(rep.violations)} violations "
          "(P1.3b needs 0)", *rep.violations[:3], sep="\n  ")
""")

md(r"""
## 5. Prefix caching: blocks named by their tokens

`fork` shares blocks the caller knows are equal. *Automatic* prefix caching finds them: with
`prefix_caching=True` every full block gets a 64-bit hash of its tokens chained to the previous block's hash (a
block's K/V depends on every token before it, not only its own), registered by `cache_full_blocks` once its K/V is
computed. `allocate_cached(seq, tokens)` reuses the longest chain of registered blocks of `tokens` (one more
reference each) and allocates the rest; it never reuses the block holding the last token, whose logits the
scheduler needs. A cached block whose last reference goes is not freed: it stays *evictable* — counted among the
free blocks, evicted least recently released first when the allocator is empty. Phase 4 turns it on with
`--enable-prefix-caching` (its P4.8).
""")
code(r"""
m = reference.BlockManager(8, 4, watermark=0.0, prefix_caching=True)
prompt = list(range(100, 110))  # 10 tokens: two full blocks of 4, then 2 tokens
table, cached = m.allocate_cached(1, prompt)
m.cache_full_blocks(1, prompt)  # (after the step that computed its K/V)
m.free(1)
print("first request: table", table, "cached tokens", cached, "| after free:", m.num_free_gpu_blocks, "free,",
      m.stats()["evictable_blocks"], "of them evictable")
table2, cached2 = m.allocate_cached(2, prompt + [7, 8])
print("same prompt + 2 tokens: table", table2, "cached tokens", cached2, "(its first two blocks are the first's)")
m.free(2)
table3, cached3 = m.allocate_cached(3, list(range(200, 229)))  # 8 blocks, the whole pool: evicts the cached ones
s = m.stats()
print("a different prompt of 29 tokens: cached", cached3, "| evictions", s["evictions"], "| hit rate",
      f"{s['prefix_hit_rate']:.0%}", "| invariants:", m.check_invariants() or "ok")
""")

md(r"""
## 6. What P1.1 measures, and where Python's time goes

The check records every call of the trace (the `can_allocate` / `allocate` / `step` / `free` of each
decode step) and replays the same calls on the Python reference and on your module; P1.1 is the ratio of
the two replays' ops per second (an op: one token slot appended or one allocate / free / can_allocate
call). Here is the reference under `cProfile`, on the first quarter of this notebook's trace:
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
import cProfile
import pstats

profiler = cProfile.Profile()
bound = bind(reference_manager(), sim.steps[: len(sim.steps) // 4], "batched")
profiler.enable()
replay(bound)
profiler.disable()
stats = pstats.Stats(profiler).stats
total = sum(v[2] for v in stats.values())
print(f"{'function':48} {'calls':>7} {'own time':>9} {'share':>6}")
for (file, line, name), (_, calls_, own, _, _) in sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:6]:
    where = f"{file.rsplit('/', 1)[-1]}:{line}({name})" if file != "~" else name
    print(f"{where:48} {calls_:7d} {own * 1e3:6.1f} ms {100 * own / total:5.1f} %")
""")
md(r"""
The time sits in `_append_one`, `_check_group` and `_blocks_needed` — a dict lookup and a few attribute
reads per sequence per step, each a dozen bytecodes on boxed integers. In Rust the same work is a hash
probe and a pop from an array; what remains is the cost of crossing into the extension and converting
the id list, paid once per step in the batched API and once per token in the per-call one — which is
why the batched API is the one phase 4's scheduler uses.

**Your turn (P1.1).** Your module against the reference on the same recorded calls, batched API (one
replay each here; the check takes the median of several on the full trace).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
def timed(make_manager, api="batched"):
    bound = bind(make_manager(), sim.steps, api)
    t0 = time.perf_counter()
    per_step = replay(bound)
    return time.perf_counter() - t0, per_step

ref_t, ref_steps = timed(reference_manager)
mine_t, mine_steps = timed(learner_manager)
print(f"Python reference {sim.work_items / ref_t / 1e6:.2f} M ops/s, {LEARNER} {sim.work_items / mine_t / 1e6:.2f} M ops/s: "
      f"{ref_t / mine_t:.1f}× (P1.1 needs ≥ 10×)")
""")

md(r"""
## 7. How vLLM's block manager differs from ours

- **One allocator, no buddy.** vLLM (v0 `BlockSpaceManager`, v1 `KVCacheManager`/`BlockPool`) keeps
  free blocks in a plain free queue: every block is the same size, the attention kernel reads through
  the block table, so contiguity buys it nothing. Our buddy allocator is for the cases where contiguity
  does pay: prompt blocks written by one prefill kernel, CPU swap buffers copied in one DMA, and
  variable-size allocations.
- **Prefix caching.** Both hash full blocks by their tokens chained to the previous block's hash and keep
  unreferenced cached blocks evictable in LRU order (section 5). vLLM v1's free queue holds free and cached blocks
  alike; ours evicts only when the allocator itself is empty, so a cached block outlives plain free ones.
- **Preemption.** vLLM v1 preempts by recompute only (swap was removed); v0 swapped sequence groups
  with several sequences and recomputed single ones. We expose both: `policy="preempt"` recomputes
  (victims freed, most recently admitted first, as vLLM), `swap_out`/`swap_in` are the caller's choice.
- **Where it runs.** vLLM's manager is Python, fast enough because it works per request with cached
  per-request state and batches its bookkeeping; ours does the same work per step in Rust behind one
  call per step, and the Python reference shows what the naive per-token version costs.

## 8. Worked answer: how `solution.py` does it

`solution.py` only re-exports the types of the Rust extension `titaninfer_kvcache`, built from `rust/`
by `make setup`. Read `rust/src` beside this summary.

- **A plain-Rust core** (`lifo.rs`, `buddy.rs`, `pool.rs`, `block_manager/`) with no Python types, so
  `cargo test` runs its property tests (`rust/tests/invariants.rs`: no block owned twice, free + used =
  total after every operation, everything merged back at the end) without an interpreter. The pyo3
  bindings (`python.rs`) sit behind the `python` feature that maturin turns on: thin wrappers that
  check each integer argument's range, map the core's errors to `OutOfBlocks`, `KeyError` and
  `ValueError`, and turn a Rust panic into a `RuntimeError` that poisons the object (never a crash).
- **`BuddyAllocator`** (`buddy.rs`): one free list per order, intrusive doubly linked lists threaded
  through per-block arrays, so unlinking the buddy during a merge is O(1) with no heap allocation;
  `allocate(n)` splits down to order ⌈log₂ n⌉ and gives the unused tail back (as Linux's
  `alloc_pages_exact`); both walk at most `max_order` levels: O(log n).
- **`BlockManager`** (`block_manager/`): block tables in a map keyed by sequence id with a small
  multiplicative hash (`fxhash.rs`: ids come from our own scheduler, so SipHash's flooding resistance
  buys nothing), prompts as the longest contiguous runs available, reference counts with copy-on-write,
  refuse or preempt on exhaustion, swap bookkeeping, and `step` — the whole batch's slots in one call.
  Every method validates before it changes anything.

The same calls as section 6, on the solution:
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
if not native_available():
    print("the Rust extension is not built: run `make setup` (needs cargo)")
else:
    solution = load_impl("solution")
    rust_t, rust_steps = timed(lambda: solution.BlockManager(spec.num_gpu_blocks, spec.block_size, policy="preempt"))
    print(f"Python reference {sim.work_items / ref_t / 1e6:.2f} M ops/s, Rust solution {sim.work_items / rust_t / 1e6:.2f} M ops/s: "
          f"{ref_t / rust_t:.1f}×")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([1e6 * x for x in ref_steps], bins=60, alpha=0.6, label="Python reference", log=True)
    ax.hist([1e6 * x for x in rust_steps], bins=60, alpha=0.6, label="Rust", log=True)
    ax.set_xlabel("scheduler time per decode step (µs)"); ax.legend(); plt.tight_layout(); plt.show()
""")
md(r"""
**What the committed report measured** (`make check-phase1 SIZE=full` on a 2-core AMD EPYC CI machine,
2026-11-23, `reports/phase1_rust_memory/cpu-amd-epyc-2c.md`): the batched API at 9.35 M ops/s against the
reference's 0.55 M (16.95×, P1.1), the per-call API at 9.69×; 0.6 % of allocated slots unused (P1.2);
0 violations in 400,000 stress operations (P1.3). The per-token crossing into the extension costs ~0.1 µs,
the batched `step` ~40–50 ns per sequence (`NOTES.md`). Further gains would come from not crossing per
step at all (the scheduler in Rust) or from passing ids as a buffer.

Your report asks you to explain your figures: the CPU cost of one decode step against a 20 ms
inter-token budget (P4.3), why the batched API gains more from Rust than the per-call one (count the
crossings per step), which profiled functions are bookkeeping and which are real work, and what
fragmentation and bookkeeping bytes per block mean against the 352 KiB of KV a TinyLlama block holds.
""")

nb.write(Path(__file__).resolve().parents[1])
