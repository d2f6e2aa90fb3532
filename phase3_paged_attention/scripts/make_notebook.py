"""Write phase3_paged_attention/notebook.ipynb (the lesson's source of truth is this script).

Tasks first: the notebook opens with what to build in ``mine.py`` and the targets that check it, then
teaches the paged cache, the online softmax, GQA sharing, the roofline and the page-size trade-off, each
with a "your turn" cell on the learner's module (the framework until ``mine.py`` exists), and ends with the
worked answer (the solution's kernels). On a CPU the Triton kernels run in the interpreter at tiny shapes
(seconds); GPU cells say so, and every GPU figure is left to ``make check-phase3``'s report.
Run: ``.venv/bin/python phase3_paged_attention/scripts/make_notebook.py``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 3 — paged attention in Triton

Run → profile → explain → optimise → check. A decode step attends one new token per sequence to its
whole KV cache; the cache is *paged* (fixed-size blocks, a block table per sequence) so sequences grow
without reserving memory. This notebook runs on a CPU (Triton's interpreter, tiny shapes); on a GPU the
guarded cells time the real kernels at TinyLlama's shapes (32 q / 4 kv heads, head_dim 64, bf16).

## 1. Your tasks

Start your module from the framework (a naive Triton decode kernel and a textbook PyTorch prefill):

```
cp phase3_paged_attention/framework.py phase3_paged_attention/mine.py
```

Keep the contract of [`__init__.py`](__init__.py): `write_kv_cache`, `paged_decode_attention` and
`varlen_prefill_attention` over the paged cache `[num_blocks, block_size, kv_heads, head_dim]`. Then:

1. **Decode with an online softmax**: one pass over the pages, the score row never written to HBM
   (`kernels/decode_naive.py`, the framework's kernel, writes it and reads it back twice).
2. **One program per (sequence, kv head)** serving every q head of its GQA group through one `tl.dot`: each K/V
   tile is loaded once per group, not once per q head.
3. **Tiles that span pages**: BLOCK_N tokens looked up through the block table, larger than one page.
4. **Split-KV (flash-decoding)** when batch × kv_heads programs cannot fill the GPU: partial outputs with their
   log-sum-exp, merged by a combine step.
5. **Prefill the FlashAttention-2 way**: causal, over a ragged batch (`cu_seqlens`), never materialising the S × S
   scores; the framework's prefill is PyTorch with the whole matrix in fp32.

The targets (the next cell prints them from `checks.py`, so they are the ones the check applies):

- **P3.1** decode, and prefill with its cache write, equal the float32 SDPA reference on gathered K/V over a ragged
  batch (lengths 1 to 4097, pages of 16 to 128 tokens; on a CPU: lengths 1, 17, 100, pages of 16 and 32).
- **P3.2** decode at batch 64, context 4096 against the PyTorch paged baseline (gather the pages, then SDPA).
- **P3.3** the same decode's counted bytes (K and V once, q, out) per second against the *measured* copy bandwidth.
- **P3.4** causal prefill at 8 × 2048 against SDPA's flash backend, in TFLOP/s.
- **P3.5** the page-size and batch × context sweeps: never slower than the baseline.
- **P3.6** FlashInfer's batch decode and ragged prefill in the same run; SKIP without FlashInfer.

**Hints.** The reference (`reference.py`) is the oracle; `kernels/launch.py` has `next_pow2`, `sm_count`,
`upcast_dot` (the interpreter needs fp32 dot operands) and `interpreting()`. `tl.dot` wants at least 16 rows: pad the
group's q rows. The decode must read each K/V byte once: that is the whole of P3.3. Split-KV partials merge exactly by
their log-sum-exp (section 4). An engine calls decode every step: optional `decode_launch(...)` returns the keyword
arguments that spare your kernel any tuning mid-step.

**Commands.**

| what | command | where |
|---|---|---|
| all targets and the report | `make check-phase3 IMPL=phase3_paged_attention.mine` | a GPU (P3.6 needs FlashInfer) |
| the CPU part (P3.1 in the interpreter; the GPU targets print SKIP with the reason) | `make check-phase3 IMPL=phase3_paged_attention.mine SIZE=small` | any machine, seconds |
| the phase's tests on your module (without `IMPL`: framework and solution) | `make test-phase3 IMPL=phase3_paged_attention.mine` | any machine |

The check writes a report: `reports/phase3_paged_attention/<device>.md` for the solution on a GPU,
`<device>.phase3_paged_attention.mine.<size>.md` beside it for your module; it asks the questions of section 9.
""")
code(r"""
from module0_profiling.notebook_env import import_phases_as_packages, your_module
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import torch  # importing the phase's kernels turns on TRITON_INTERPRET=1 when there is no GPU
from phase3_paged_attention import load_impl, allocate_kv_cache, slot_mapping_for, tolerance
from phase3_paged_attention.workloads import decode_inputs, prefill_inputs

reference, framework, solution = load_impl("reference"), load_impl("framework"), load_impl("solution")
YOURS, HAVE_MINE = your_module("phase3_paged_attention")
yours = load_impl(YOURS)  # the framework until mine.py exists
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
print("device:", DEVICE)
""")
md(r"""
**Your turn (P3.1).** The check's correctness pass on your module: decode over every page size, prefill with the
cache write, worst |error| / tolerance in bf16 (≤ 1 passes; a row written to a wrong slot counts as infinite). On a
CPU it runs the small shapes in the interpreter.
""")
code(r"""
from phase3_paged_attention.bench import correctness

decode_worst, prefill_worst, rows = correctness(yours, "full" if GPU else "small", DEVICE, torch.bfloat16)
print("| kernel | block size | worst error / tolerance |\n|---|---|---|\n" + "\n".join(rows))
print(f"\n{YOURS}: decode {decode_worst:.2f}, prefill {prefill_worst:.2f} — P3.1 {'passes' if max(decode_worst, prefill_worst) <= 1 else 'fails'}")
""")

md(r"""
## 2. The paged cache

`k_cache[num_blocks, block_size, kv_heads, head_dim]`; token `t` of sequence `b` lives in block
`block_tables[b, t // block_size]` at offset `t % block_size`. Writing a new token means computing its
*slot* `block * block_size + offset` and scattering K/V there.
""")
code(r"""
block_size = 4
k_cache, v_cache = allocate_kv_cache(num_blocks=6, block_size=block_size, num_kv_heads=1, head_dim=2, dtype=torch.float32)
k_cache.zero_(); v_cache.zero_()
block_tables = torch.tensor([[5, 1, 3], [0, 2, 4]], dtype=torch.int32)  # pages scattered in the pool
positions = torch.tensor([0, 1, 2, 3, 4, 5])  # six tokens of sequence 0
slots = slot_mapping_for(block_tables, torch.zeros(6, dtype=torch.long), positions, block_size)
print("slots:", slots.tolist())  # block 5 holds tokens 0-3, block 1 tokens 4-5
k = torch.arange(12, dtype=torch.float32).view(6, 1, 2)
reference.write_kv_cache(k, k, k_cache, v_cache, slots)
print("block 5:", k_cache[5, :, 0].tolist())
print("block 1:", k_cache[1, :, 0].tolist())
""")
md(r"""
FlashInfer (the peer of target P3.6) keeps the same `[pages, page_size, kv_heads, head_dim]` tensors ("NHD") but
lists pages in CSR form: sequence `b` owns `indices[indptr[b]:indptr[b+1]]`, and its last page holds
`last_page_len[b]` tokens. `peers.to_flashinfer_layout` converts a block table; only the first
`ceil(len / block_size)` entries of each row are pages.
""")
code(r"""
from phase3_paged_attention.peers import to_flashinfer_layout
layout = to_flashinfer_layout(block_tables, torch.tensor([6, 3], dtype=torch.int32), block_size)
print("indptr:", layout.indptr.tolist(), " indices:", layout.indices.tolist(), " last_page_len:", layout.last_page_len.tolist())
""")
md(r"""
**Your turn.** Your `write_kv_cache` against the reference's scatter: random rows into shuffled slots of a random
pool, with padding slots (`-1`) that must be skipped. Every other slot must keep its old value.
""")
code(r"""
g = torch.Generator().manual_seed(1)
pool = torch.randn(8, 16, 2, 32, generator=g).to(DEVICE)                    # 8 pages of 16 tokens, 2 kv heads
rows_k, rows_v = (torch.randn(20, 2, 32, generator=g).to(DEVICE) for _ in range(2))
slot_ids = torch.randperm(8 * 16, generator=g)[:20]
slot_ids[[3, 11]] = -1                                                       # padding tokens
slot_ids = slot_ids.to(DEVICE)
ours = [pool.clone(), pool.clone()]
expected = [pool.clone(), pool.clone()]
yours.write_kv_cache(rows_k, rows_v, *ours, slot_ids)
reference.write_kv_cache(rows_k, rows_v, *expected, slot_ids)
print(f"{YOURS}: K cache equal: {torch.equal(ours[0], expected[0])}, V cache equal: {torch.equal(ours[1], expected[1])}")
""")

md(r"""
## 3. Run the framework: correct, and slow by construction

The framework kernel gives each (sequence, q head) its own program, writes the whole score row to
memory, reads it back for the softmax and again for `P·V`. Both Triton versions agree with the PyTorch
reference (gather pages → `scaled_dot_product_attention`):
""")
code(r"""
d = decode_inputs([1, 17, 100], block_size=16, num_q_heads=4, num_kv_heads=2, head_dim=32, device=DEVICE, seed=0)
expected = reference.paged_decode_attention(*d.args(), upcast=True)
for name, impl in (("framework", framework), ("solution", solution)):
    out = impl.paged_decode_attention(*d.args())
    print(f"{name:9s} matches the reference: {torch.allclose(out, expected, atol=1e-4, rtol=1e-4)}")
""")

md(r"""
## 4. Online softmax, with numbers

`softmax(s)·V` needs the max and the sum over *all* scores before any weight is known — so the naive
kernel stores the row. FlashAttention keeps three running values per query instead: the max `m`, the
sum `l = Σ exp(s − m)`, and the un-normalised output `acc = Σ exp(s − m)·v`. When a new tile raises the
max from `m_old` to `m_new`, everything summed so far was scaled by `exp(−m_old)` instead of
`exp(−m_new)`: multiply `l` and `acc` by `α = exp(m_old − m_new)` and carry on. Take scores
`[1, 3, 2, 5]` and one-dimensional values `[10, 20, 30, 40]`, processed in two tiles of two:
""")
code(r"""
import math
s, v = [1.0, 3.0, 2.0, 5.0], [10.0, 20.0, 30.0, 40.0]
m, l, acc = -math.inf, 0.0, 0.0
for tile in ([0, 1], [2, 3]):
    m_new = max([m] + [s[i] for i in tile])
    alpha = math.exp(m - m_new)              # rescale what was summed under the old max
    p = [math.exp(s[i] - m_new) for i in tile]
    l = l * alpha + sum(p)
    acc = acc * alpha + sum(pi * v[i] for pi, i in zip(p, tile))
    print(f"tile {tile}: m {m:>5} → {m_new}, alpha {alpha:.4f}, l {l:.4f}, acc {acc:.4f}")
    m = m_new
online = acc / l
full = sum(math.exp(x - max(s)) * y for x, y in zip(s, v)) / sum(math.exp(x - max(s)) for x in s)
print(f"online {online:.6f}  vs  two-pass softmax {full:.6f}")
""")
md(r"""
The same identity merges *independent* partial results — the basis of split-KV (flash-decoding): each
split keeps `(m_i, l_i, acc_i / l_i)`, and the combine step weighs split `i` by `l_i · exp(m_i − m)`,
i.e. by `exp(lse_i − max lse)` with `lse_i = m_i + log l_i`:
""")
code(r"""
def partial(idx):
    m = max(s[i] for i in idx); l = sum(math.exp(s[i] - m) for i in idx)
    return m + math.log(l), sum(math.exp(s[i] - m) * v[i] for i in idx) / l   # (lse, normalised output)
(lse1, o1), (lse2, o2) = partial([0, 1]), partial([2, 3])
top = max(lse1, lse2)
w1, w2 = math.exp(lse1 - top), math.exp(lse2 - top)
print(f"split outputs {o1:.4f}, {o2:.4f}; weights {w1:.4f}, {w2:.4f}; merged {(w1 * o1 + w2 * o2) / (w1 + w2):.6f}")
""")
md(r"""
**Your turn.** Where an online softmax goes wrong: a sharp softmax (scale 4, so the max moves by large steps from tile
to tile and `α` underflows towards 0), lengths that end mid-page and mid-tile, a sequence of one token and an empty
one (its output must be zeros, not NaN). fp32, so the tolerance is tight.
""")
code(r"""
d = decode_inputs([300, 1, 0, 129], block_size=32, num_q_heads=4, num_kv_heads=2, head_dim=32, device=DEVICE, seed=11)
out = yours.paged_decode_attention(*d.args(), scale=4.0)
expected = reference.paged_decode_attention(*d.args(), scale=4.0, upcast=True)
atol, rtol = tolerance(torch.float32)
print(f"{YOURS}: finite: {bool(torch.isfinite(out).all())}, empty sequence is zero: {bool((out[2] == 0).all())}, "
      f"worst error / tolerance: {((out - expected).abs() / (atol + rtol * expected.abs())).max().item():.3f}")
""")

md(r"""
## 5. Why GQA sharing cuts bytes

TinyLlama has 32 q heads and 4 kv heads: 8 q heads read the same K/V. A program per q head (the
framework) loads each K/V tile 8 times (L2 absorbs some, not all); a program per kv head that stacks
its 8 q rows into the M dimension of one `tl.dot` (padded to 16 rows, the tensor-core minimum) loads
it once. Bytes per decode step at batch 64, context 4096:
""")
code(r"""
batch, ctx, hq, hkv, dim, elem = 64, 4096, 32, 4, 64, 2
unique = 2 * batch * ctx * hkv * dim * elem                       # K and V, each byte once
per_q_head = 2 * batch * ctx * hq * dim * elem                    # each q head re-reads its kv head
score_row = 3 * batch * hq * ctx * 4                              # framework: write s, read s/write p, read p (fp32)
baseline = unique * 3                                             # gather: read + write copy, then SDPA reads it
for name, b in [("one read per kv head (unique K/V)", unique), ("per-q-head loads", per_q_head),
                ("framework score-row traffic", score_row), ("PyTorch gather + SDPA", baseline)]:
    print(f"{name:34s} {b / 1e6:8.0f} MB  ({b / unique:.1f}× unique)")
""")
md(r"""
**Your turn.** Group sizes your kernel must serve: 8 q heads per kv head (TinyLlama's; 8 rows padded to 16 for
`tl.dot`), plain multi-head attention (group 1) and an odd group of 3 with head_dim 24 (not a power of two).
""")
code(r"""
for hq_, hkv_, dim_ in ((8, 1, 64), (4, 4, 16), (6, 2, 24)):
    d = decode_inputs([17, 5, 64], block_size=16, num_q_heads=hq_, num_kv_heads=hkv_, head_dim=dim_, device=DEVICE, seed=hq_)
    out = yours.paged_decode_attention(*d.args(), scale=0.7)
    expected = reference.paged_decode_attention(*d.args(), scale=0.7, upcast=True)
    print(f"{hq_} q / {hkv_} kv heads, head_dim {dim_:2d}: matches the reference: "
          f"{torch.allclose(out, expected, atol=1e-4, rtol=1e-4)}")
""")

md(r"""
## 6. The roofline position

Decode: 4·Hq·D FLOPs per cached token against 2·Hkv·D·2 bytes (bf16 K and V) → intensity Hq / Hkv =
**8 FLOP/byte** here (1 without GQA). An H100's ridge point is ~989 TFLOP/s ÷ 3.35 TB/s ≈ 295 FLOP/byte: decode is deep in the memory-bound
region, so the only figure of merit is bytes/s against the copy bandwidth (target P3.3: ≥ 85 %). Causal prefill
over S tokens does ~S/2 × more work per byte: compute-bound, judged against SDPA's flash kernel (P3.4). Both are
also measured against FlashInfer, the kernels vLLM and SGLang serve with (P3.6: decode ≥ 80 %, prefill ≥ 70 %).
""")
code(r"""
from module0_profiling.roofline import attention_decode_bytes, attention_decode_flops, attention_prefill_flops
flops = attention_decode_flops(64, 32, 64, 4096)
nbytes = attention_decode_bytes(64, 32, 4, 64, 4096)
print(f"decode intensity: {flops / nbytes:.2f} FLOP/byte")
pf = attention_prefill_flops(8, 32, 64, 2048)
pb = 8 * 2048 * (32 + 4 + 4 + 32) * 64 * 2
print(f"prefill 8×2048 intensity: {pf / pb:.0f} FLOP/byte; H100 ridge ≈ {989e12 / 3350e9:.0f} FLOP/byte")
""")
md(r"""
**Your turn (the prefill side).** Your `varlen_prefill_attention` on a ragged batch — an empty sequence among them —
causal and not, with K/V written into the paged cache in the same call (the cache must equal the reference's scatter).
""")
code(r"""
p = prefill_inputs([5, 0, 70], block_size=16, num_q_heads=4, num_kv_heads=2, head_dim=32, device=DEVICE, seed=3)
for causal in (True, False):
    k_c, v_c = p.k_cache.clone(), p.v_cache.clone()
    out = yours.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, causal=causal,
                                         k_cache=k_c, v_cache=v_c, slot_mapping=p.slot_mapping)
    expected = reference.varlen_prefill_attention(p.q, p.k, p.v, p.cu_seqlens, p.max_seqlen, causal=causal, upcast=True)
    k_ref, v_ref = p.k_cache.clone(), p.v_cache.clone()
    reference.write_kv_cache(p.k, p.v, k_ref, v_ref, p.slot_mapping)
    print(f"causal={causal!s:5s}: output matches: {torch.allclose(out, expected, atol=1e-4, rtol=1e-4)}, "
          f"cache written: {torch.equal(k_c, k_ref) and torch.equal(v_c, v_ref)}")
""")

md(r"""
## 7. The block-size sweep

A tile of `BLOCK_N` tokens spans `BLOCK_N / block_size` pages: each page costs a block-table lookup and
starts a new contiguous run of `block_size × kv_heads × head_dim × 2` bytes (2 KB for a 16-token page at
TinyLlama's shapes, one head's slice being 128 B per token). Small pages mean more lookups and shorter runs;
large pages waste memory at the tail of every sequence (phase 1's fragmentation). **Your turn (P3.3, P3.5a in
brief):** on a GPU the next cell measures your module and the solution at every page size; on a CPU it prints the
counts.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase3_paged_attention.bench import decode_bytes, time_decode
for block_size in (16, 32, 64, 128):
    if GPU:
        d = decode_inputs([4096] * 64, block_size=block_size, dtype=torch.bfloat16, device="cuda", seed=block_size,
                          spare_blocks=0, num_q_heads=32, num_kv_heads=4, head_dim=64)
        nbytes = decode_bytes(64, 4096, dict(num_q_heads=32, num_kv_heads=4, head_dim=64))
        rates = ", ".join(f"{name} {nbytes / time_decode(impl, [d]) / 1e9:.0f} GB/s"
                          for name, impl in ((YOURS, yours), ("solution", solution)))
        print(f"block {block_size:3d}: {rates}")
    else:
        print(f"block {block_size:3d}: {128 // block_size} pages per 128-token tile, "
              f"{block_size * 64 * 2} B contiguous per kv head per page")
""")

md(r"""
## 8. Profile and check

`make check-phase3` runs `bench.py` (framework, solution, your module, PyTorch baseline, dense SDPA and — when it
imports — FlashInfer, in one process) and writes `reports/phase3_paged_attention/<device>.md`. On a CPU only P3.1
(correctness, interpreter, tiny shapes) is measured and the GPU targets print SKIP with the reason. **Your turn:** the
check on your module, without writing a report.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.check import run_check
code_, outcomes, _ = run_check("phase3_paged_attention", impl=YOURS, size=None if GPU else "small", write=False)
""")

md(r"""
## 9. Worked answer: how `solution.py` does it

Read `solution.py`, `kernels/decode_flash.py` and `kernels/prefill_flash.py` beside this summary.

- **Decode** (`flash_paged_decode`): one program per (sequence, kv head); the group's q rows (8 for TinyLlama) are
  the M dimension of `tl.dot`, padded to 16. K/V tiles of BLOCK_N tokens are gathered page by page through the block
  table, and the online softmax (running max, sum and accumulator, in base 2 with `exp2`) never writes a score.
- **Split-KV**: when batch × kv_heads programs are too few for the SMs, each sequence's context is cut into ranges
  (`choose_num_splits`: about four programs per SM, at least 256 tokens a split, boundaries on whole tiles); each range
  writes a partial output and its log-sum-exp, and `_combine_splits_kernel` merges them with weights
  `2^(lse_s − max)` — section 4's identity.
- **Tuning without stalls**: the split count is tuned jointly with the tile, warps and stages by the kernel's own small
  tuner (a cached choice costs one dict lookup per call); `decode_launch` hands an engine the heuristic split and a
  fixed tile, so no step ever stops to tune.
- **Prefill** (`flash_varlen_prefill`): FlashAttention-2 — one program per (BLOCK_M query rows, sequence, q head), the
  Q tile in registers, K/V tiles streamed with the online softmax; causal tiles below the diagonal run unmasked,
  only the diagonal tile is masked, tiles above it are never loaded; query tiles are launched longest-first; the
  program of a kv head's first q head also writes its rows of K and V into their slots (the cache write fused).

Split counts the heuristic picks on an H100 (132 SMs; host arithmetic, no GPU needed):
""")
code(r"""
from phase3_paged_attention.kernels.decode_flash import choose_num_splits

print(f"{'batch':>5} {'context':>7} {'programs without splits':>24} {'splits':>6}")
for batch_, context in ((1, 512), (1, 4096), (1, 16384), (8, 4096), (64, 4096), (64, 16384)):
    print(f"{batch_:5d} {context:7d} {batch_ * 4:24d} {choose_num_splits(batch_, 4, context, 132):6d}")
""")
md(r"""
At batch 1, four programs would leave 128 of 132 SMs idle: the context is cut into up to 64 ranges of at least 256
tokens, and the combine costs one small extra launch. At batch 64 there are already 256 programs (4 kv heads each),
about two per SM; the heuristic still asks for 3 splits to reach about four — the tuner times the candidates around
it, and the report's P3.5b table shows the split count it settled on for each shape.

- **Not done**: FP8 K/V, a persistent kernel, CUDA-graph capture (phase 4's engine does it).

The report of `make check-phase3` asks you to explain your figures:

1. How many kernels does one decode step launch (split kernel + combine, or one)? Is the GPU busy between calls, or
   does the host's launch time leave gaps?
2. Is DRAM throughput near its peak for the decode kernel? What fraction of the PyTorch baseline's time is its copy,
   and how many bytes do the framework's q-head re-reads and score row add per token?
3. Where does each version land relative to its roof — decode against bandwidth, prefill against tensor-core throughput?
4. Does a 16-token page cost bandwidth against 128? At batch 1, how much does split-KV recover, and where does launch
   overhead (eager against graph columns) set the floor?
""")

nb.write(Path(__file__).resolve().parents[1])
