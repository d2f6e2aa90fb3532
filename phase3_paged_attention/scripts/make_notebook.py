"""Write phase3_paged_attention/notebook.ipynb (the lesson's source of truth is this script)."""

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
""")
code(r"""
from module0_profiling.notebook_env import import_phases_as_packages
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import torch  # importing the phase's kernels turns on TRITON_INTERPRET=1 when there is no GPU
from phase3_paged_attention import load_impl, allocate_kv_cache, slot_mapping_for
from phase3_paged_attention.workloads import decode_inputs
reference, framework, solution = load_impl("reference"), load_impl("framework"), load_impl("solution")
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
print("device:", DEVICE)
""")
md(r"""
## 1. The paged cache

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
## 2. Run the framework: correct, and slow by construction

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
## 3. Online softmax, with numbers

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
## 4. Why GQA sharing cuts bytes

TinyLlama has 32 q heads and 4 kv heads: 8 q heads read the same K/V. A program per q head (the
framework) loads each K/V tile 8 times (L2 absorbs some, not all); a program per kv head that stacks
its 8 q rows into the M dimension of one `tl.dot` (the solution; padded to 16 rows, the tensor-core
minimum) loads it once. Bytes per decode step at batch 64, context 4096:
""")
code(r"""
batch, ctx, hq, hkv, dim, elem = 64, 4096, 32, 4, 64, 2
unique = 2 * batch * ctx * hkv * dim * elem                       # K and V, each byte once
per_q_head = 2 * batch * ctx * hq * dim * elem                    # each q head re-reads its kv head
score_row = 3 * batch * hq * ctx * 4                              # framework: write s, read s/write p, read p (fp32)
baseline = unique * 3                                             # gather: read + write copy, then SDPA reads it
for name, b in [("solution (unique K/V)", unique), ("per-q-head loads", per_q_head),
                ("framework score-row traffic", score_row), ("PyTorch gather + SDPA", baseline)]:
    print(f"{name:30s} {b / 1e6:8.0f} MB  ({b / unique:.1f}× unique)")
""")
md(r"""
## 5. The roofline position

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
## 6. The block-size sweep

A tile of `BLOCK_N` tokens spans `BLOCK_N / block_size` pages: each page costs a block-table lookup and
starts a new contiguous run of `block_size × kv_heads × head_dim × 2` bytes (2 KB for a 16-token page at
TinyLlama's shapes, one head's slice being 128 B per token). Small pages mean more lookups and shorter runs;
large pages waste memory at the tail of every sequence (phase 1's fragmentation). On a GPU the next cell
measures it; on a CPU it prints the counts.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase3_paged_attention.bench import decode_bytes, time_decode
for block_size in (16, 32, 64, 128):
    if GPU:
        d = decode_inputs([4096] * 64, block_size=block_size, dtype=torch.bfloat16, device="cuda", seed=block_size,
                          spare_blocks=0, num_q_heads=32, num_kv_heads=4, head_dim=64)
        t = time_decode(solution, [d])
        print(f"block {block_size:3d}: {decode_bytes(64, 4096, dict(num_q_heads=32, num_kv_heads=4, head_dim=64)) / t / 1e9:.0f} GB/s")
    else:
        print(f"block {block_size:3d}: {128 // block_size} pages per 128-token tile, "
              f"{block_size * 64 * 2} B contiguous per kv head per page")
""")
md(r"""
## 7. Profile and check

`make check-phase3` runs `bench.py` (framework, solution, PyTorch baseline, dense SDPA and — when it imports —
FlashInfer, in one process)
and writes `reports/phase3_paged_attention/<device>.md`. On a CPU only P3.1 (correctness, interpreter,
tiny shapes) is measured and the GPU targets print SKIP with the reason.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.check import run_check
code_, outcomes, _ = run_check("phase3_paged_attention", impl="solution", size=None if GPU else "small", write=False)
""")
md(r"""
## Your turn

Copy `framework.py` to `mine.py`, rewrite its decode kernel (online softmax first, then one program per kv
head, then split-KV), and run `make check-phase3 IMPL=phase3_paged_attention.mine`. The tests take the same
switch: `pytest phase3_paged_attention/tests` runs every kernel against the SDPA reference.
""")

nb.write(Path(__file__).resolve().parents[1])
