"""Write phase2_rope_cuda/notebook.ipynb (the lesson's source of truth is this script).

Tasks first: the notebook opens with what to build in ``mine.py`` (and its kernel file) and the targets
that check it, then teaches the three kernel versions, each idea with a "your turn" cell on the learner's
module or kernel, and ends with the worked answer (the solution's kernel and launch path). It runs on a
CPU in seconds: the kernels are compile-checked with NVRTC, the GPU cells say so and skip; every GPU
figure is left to ``make check-phase2``'s report. Run: ``.venv/bin/python phase2_rope_cuda/scripts/make_notebook.py``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 2 — RoPE in CUDA C: from one thread per element to the memory roofline

Rotary position embedding (RoPE, RoFormer §3.4) rotates each pair $(x_i, x_{i+D/2})$ of every query and key head by the
angle $p\,\theta_i$ of the token's position $p$, with $\theta_i = 10000^{-2i/D}$. Llama (and HF's
`apply_rotary_pos_emb`) pairs element $i$ with $i + D/2$ — the *rotate-half* or GPT-NeoX convention:

$$\text{out} = x \cdot \cos + \text{rotate\_half}(x) \cdot \sin, \qquad \text{rotate\_half}([x_1, x_2]) = [-x_2, x_1].$$

The work: ~3 FLOPs per element. The traffic: every element read and written once — 4 bytes in bf16. That is an
arithmetic intensity of ~0.7 FLOP/byte, some 400× left of an H100's ridge point: **RoPE is memory-bound, and the only
question is how close a kernel gets to the copy bandwidth while moving the minimum bytes.**

This notebook runs on a CPU (the reference, the kernel sources, their compilation with NVRTC); the cells that need a
GPU say so and are skipped without one. Run `make check-phase2` on a GPU for the measured report.

## 1. Your tasks

Start your module from the framework (`kernels/rope_v1_naive.cu`: one thread per element, correct and slow), and
your kernel from its kernel file:

```
cp phase2_rope_cuda/framework.py phase2_rope_cuda/mine.py
cp phase2_rope_cuda/kernels/rope_v1_naive.cu phase2_rope_cuda/kernels/rope_v4_yours.cu
```

In `rope_v4_yours.cu` rename the instantiations `rope_v1_<dtype>_<pos>` to `rope_v4_<dtype>_<pos>` (versions 1–3 are
taken; the `rope_v` prefix keeps your kernels in the check's Nsight Compute filter). In `mine.py` load them:
`get_kernel("rope_v4_yours.cu", f"rope_v4_{DTYPE_TAG[x.dtype]}_{POSITION_TAG[positions.dtype]}", device)`.
Keep the contract of [`__init__.py`](__init__.py): `apply_rope_(q, k, positions, cos_sin_cache) -> (q, k)`, in place,
fp32 / bf16 / fp16, head_dim 64 and 128 at least, int32 or int64 positions, q and k as strided views of a fused QKV
output. Then make the kernel reach the copy bandwidth:

1. **In place, q and k in one launch**: a thread that owns both halves of a rotation pair can overwrite them — no
   scratch tensor, no copy back (the framework moves q and k through DRAM twice and launches four kernels).
2. **Read the position and the cos/sin row once** per token (or per thread), not once per element.
3. **128-bit accesses**: one `uint4` load or store moves 8 bf16 elements; issue several heads' loads before using any.

The targets (the next cell prints them from `checks.py`, so they are the ones the check applies):

- **P2.1** every CUDA kernel (framework, v2, yours) equals the PyTorch reference: random positions, odd token counts,
  three dtypes, head_dim 64 and 128, fused-QKV strides; **P2.1·ref** checks the reference itself against RoFormer's
  complex form in float64 (the one target a CPU evaluates).
- **P2.2** yours against the framework at 16,384 tokens (q 32, k 4 heads, head_dim 64, bf16).
- **P2.3** the bytes you must move (q and k read and written once, one cos/sin row per distinct position) per second,
  against the copy bandwidth *measured* on the same GPU.
- **P2.4** faster than `torch.compile` of the reference (and than liger-kernel's Triton RoPE when it imports).
- **P2.5** FlashInfer's `apply_rope_with_cos_sin_cache` in the same run, after the outputs agree; SKIP without FlashInfer.

**Hints.** `kernels/rope_dtypes.cuh` converts every dtype to fp32 and back. A thread that handles a 16-byte chunk of
the first half of a head and the matching chunk of the second half keeps the same 2 × 8 cos/sin values for every
head of its token. 128-bit accesses need 16-byte aligned base pointers and strides: check them in `mine.py` and
refuse with one line (`RopeInputError`). A 1-token call is a few µs whatever the kernel: keep the Python launch path
short (`cuda_launch`'s fast path is the solution's).

**Commands.**

| what | command | where |
|---|---|---|
| all targets and the report | `make check-phase2 IMPL=phase2_rope_cuda.mine` | a GPU (P2.5 needs FlashInfer) |
| the CPU part (P2.1·ref; the GPU targets print SKIP with the reason) | `make check-phase2 IMPL=phase2_rope_cuda.mine SIZE=small` | any machine |
| the tests on your module: NVRTC compiles every `kernels/*.cu` (yours too); on a GPU, your kernel against the reference | `make test-phase2 IMPL=phase2_rope_cuda.mine` | any machine |

The check writes a report: `reports/phase2_rope_cuda/<device>.md` for the solution,
`<device>.phase2_rope_cuda.mine.<size>.md` beside it for your module; it asks the questions of section 10.
""")
code(r"""
from module0_profiling.notebook_env import import_phases_as_packages
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import importlib.util
import re
import torch
from phase2_rope_cuda import RopeDeviceError, build_cos_sin_cache, load_impl, reference
from phase2_rope_cuda.checks import TARGETS
from phase2_rope_cuda.cuda_launch import KERNEL_DIR, NVRTC_OPTIONS
from module0_profiling import cudac

for t in TARGETS:
    print(f"{t.id:10s} {t.threshold:40s} {t.description}")

HAS_GPU = torch.cuda.is_available()
HAVE_MINE = importlib.util.find_spec("phase2_rope_cuda.mine") is not None
YOUR_KERNEL = KERNEL_DIR / "rope_v4_yours.cu"
yours = load_impl("phase2_rope_cuda.mine" if HAVE_MINE else "framework")  # the framework until mine.py exists
print("\nyour module:", "phase2_rope_cuda.mine" if HAVE_MINE else
      "not there yet (the cells below use the framework): cp phase2_rope_cuda/framework.py phase2_rope_cuda/mine.py")
print("your kernel:", YOUR_KERNEL.name if YOUR_KERNEL.exists() else "kernels/rope_v4_yours.cu not there yet")
print("GPU:", torch.cuda.get_device_name(0) if HAS_GPU else "none (GPU cells are skipped)")  # NBVAL_IGNORE_OUTPUT
""")

md(r"""
## 2. The contract and the reference

`apply_rope_(q, k, positions, cos_sin_cache)` rotates `q [tokens, q_heads, D]` and `k [tokens, kv_heads, D]` **in place**.
Every token carries its own position (prefill, decode and packed batches look the same), and the cos/sin table is
precomputed once: `cos_sin_cache[p] = [cos(pθ_0 … pθ_{D/2-1}), sin(pθ_0 … pθ_{D/2-1})]`, fp32, one contiguous row per
position (vLLM's layout; HF's second halves are copies of the first and are not stored).

The PyTorch reference equals HF's `LlamaRotaryEmbedding` + `apply_rotary_pos_emb` (the tests check it against
transformers). Here we check it against a third route: RoFormer's complex-number form in float64.
""")
code(r"""
torch.manual_seed(0)
tokens, q_heads, kv_heads, D = 50, 32, 4, 64          # TinyLlama: 32 query heads share 4 key/value heads
q = torch.randn(tokens, q_heads, D)
k = torch.randn(tokens, kv_heads, D)
positions = torch.randint(0, 2048, (tokens,))
cache = build_cos_sin_cache(D, 2048)

q_ref, k_ref = reference.apply_rope_reference(q, k, positions, cache)
q_complex = reference.apply_rope_complex_f64(q, positions, reference.inverse_frequencies(D))
print("max |reference - complex float64| =", f"{(q_ref.double() - q_complex).abs().max().item():.1e}")
print("rotation keeps norms:", torch.allclose(q_ref.norm(dim=-1), q.norm(dim=-1), rtol=1e-5))
""")
md(r"""
**Your turn (P2.1).** Your module on fresh inputs: on a GPU, against the reference in every dtype and both head
sizes (error / tolerance, ≤ 1 passes; the check adds odd sizes and fused-QKV views). On a CPU the contract asks a CUDA
implementation to refuse CPU tensors with one line that points to the reference.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase2_rope_cuda.workload import TOLERANCE, RopeShape, error_ratio, make_inputs

if HAS_GPU:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for head_dim in (64, 128):
            x = make_inputs(RopeShape(tokens=1001, head_dim=head_dim, dtype=dtype, max_position=5000), "cuda", seed=head_dim)
            q_exp, k_exp = reference.apply_rope_reference(x.q.clone(), x.k.clone(), x.positions, x.cache)
            try:
                yours.apply_rope_(*x.args)
                ratio = max(error_ratio(x.q, q_exp, *TOLERANCE[dtype]), error_ratio(x.k, k_exp, *TOLERANCE[dtype]))
                print(f"{str(dtype):15s} head_dim {head_dim:3d}: error / tolerance {ratio:.3f}")
            except Exception as e:  # a kernel that refuses a case fails P2.1
                print(f"{str(dtype):15s} head_dim {head_dim:3d}: {type(e).__name__}: {e}")
else:
    try:
        yours.apply_rope_(q.clone(), k.clone(), positions, cache)
        print("your module ran on CPU tensors: the contract expects RopeDeviceError for a CUDA implementation")
    except RopeDeviceError as e:
        print("on CPU tensors:", e)
""")

md(r"""
## 3. The framework: one thread per element (`kernels/rope_v1_naive.cu`)

The first kernel everyone writes: a flat index over `tokens × heads × D`, one thread per output element. Each thread
divides its index into (token, head, d) with 64-bit division, loads the token's position, loads `cos[d mod D/2]` and
`sin[d mod D/2]`, loads its element and its rotation partner, and writes one element.

Two things make it slow:

* **It cannot work in place.** Thread `d` reads `x[d + D/2]`, which thread `d + D/2` — in another warp, in no defined
  order — overwrites. So it writes a scratch tensor that is copied back: q and k cross DRAM *twice*.
* **Its memory instructions are small.** A warp of bf16 loads moves 32 × 2 = 64 bytes per instruction. The load/store
  units, not DRAM, become the bottleneck, and each warp can keep only a few such loads in flight.
""")
code(r"""
source = (KERNEL_DIR / "rope_v1_naive.cu").read_text()
body = source[source.index("template"):source.index("#define")]
print(body)
""")

md(r"""
## 4. The middle step: a block per token and head tile, cos/sin in shared memory (`kernels/rope_v2_shared.cu`)

v2 keeps v1's scalar accesses and fixes the bookkeeping. A block serves one token and a tile of heads (8 heads of 64:
256 threads); thread `(i, h)` owns the rotation pair $(x_i, x_{i+D/2})$ of head `h`. The token's position is read once
per block and its cos/sin row is copied into **shared memory** by the first row of threads; after a `__syncthreads()`
every head of the tile reads `cos[i]`, `sin[i]` from there. Owning both partners of its pair, a thread rotates **in
place**: no scratch tensor, no copy back, q and k cross DRAM once, in one launch.

What is left is the access width: a warp of bf16 loads still moves 64 bytes per instruction. That is the next step.
""")
code(r"""
source = (KERNEL_DIR / "rope_v2_shared.cu").read_text()
body = source[source.index("template"):source.index("#define ROPE_SHARED")]
print(body)
""")

md(r"""
## 5. Why 128-bit loads: bytes in flight

DRAM bandwidth is a pipe with a long latency. *Little's law*: to sustain bandwidth $B$ with latency $L$ the GPU must
keep $B \times L$ bytes of requests in flight. Each SM can track only so many outstanding load *instructions*, so the
bytes per instruction decide how much of the pipe a warp can fill.
""")
code(r"""
bandwidth = 3.0e12      # bytes/s: an H100's measured copy bandwidth is ~3 TB/s
latency = 700e-9        # s: a DRAM round trip under load, roughly
sms = 132
in_flight = bandwidth * latency
print(f"bytes in flight needed: {in_flight / 1e6:.1f} MB across the GPU, {in_flight / sms / 1e3:.0f} KB per SM")
for width in (2, 4, 8, 16):
    per_warp = 32 * width
    print(f"{width:2d}-byte loads: {per_warp:4d} B per warp instruction -> "
          f"{in_flight / sms / per_warp:5.0f} warp-loads in flight per SM to fill the pipe")
""")
md(r"""
With 16-byte (`uint4`) accesses each thread moves 8 bf16 elements per instruction: 8× fewer instructions than scalar
bf16 and a realistic number of outstanding loads per SM. Going further, a thread can issue the loads of **two** heads
before it uses either, doubling the bytes in flight per thread.

## 6. Why load cos/sin once

In v1 every element fetches its own position and its own cos and sin. Per token, with 36 heads of 64 elements, that is
2304 position loads and 4608 cos/sin loads — to use one 256-byte row. They mostly hit in L1/L2, but each is an
instruction, a pipeline slot and a dependency (position → address → cos/sin) on the critical path.

v2 cuts that to one row per block, through shared memory. A layout built on 16-byte *chunks* does better: a thread
owns a fixed chunk of the first half of a head plus the matching chunk of the second half. The chunk is the same for
every head the thread visits, so its 2 × 8 cos/sin values are loaded **once, into registers**, and reused for every
head of the token — q heads and k heads alike, in one launch. The counts below call that layout v3 (the solution's);
section 10 shows its code.
""")
code(r"""
heads, half, vec = 36, 32, 8              # 32 q + 4 k heads, D/2 = 32, 8 bf16 per 16 bytes
elements = heads * 2 * half                # 2304 elements per token
v1_loads = elements * 5                    # each: position, cos, sin, own element, partner
tiles = -(-heads // 8)                     # v2: 8 heads of 64 per block
v2_loads = tiles * half * 3 + heads * half * 2   # first row: position + cos + sin; every pair: its two elements
chunk_slots = heads * half // vec          # (head, 16-byte chunk) pairs: 144
threads = chunk_slots // 2                 # two heads per thread: 72 threads per token
v3_loads = chunk_slots * 2 + threads * (1 + 2 * vec // 4)   # two uint4 per chunk; position + 4 float4 cos/sin per thread
print(f"loads per token (per thread): v1 {v1_loads}, v2 {v2_loads}, v3 {v3_loads} ({v1_loads / v3_loads:.0f}x fewer than v1)")
print("v1 moves q/k through DRAM 2x (scratch + copy back); v2 and v3 once")
""")

md(r"""
## 7. The kernels compile here, without a GPU

NVRTC (shipped in PyTorch's CUDA wheels) compiles the `.cu` files to PTX on a CPU. The PTX shows the difference
directly: `ld.global.v4.u32` is a 128-bit load (v1 and v2 have none); `ld.shared.f32` is v2's read of the staged row.
""")
code(r"""
if cudac.nvrtc_available():
    for name in ("rope_v1_naive.cu", "rope_v2_shared.cu", "rope_v3_vectorized.cu"):
        result = cudac.compile_check(KERNEL_DIR / name, "sm_90", NVRTC_OPTIONS)
        kernels = re.findall(r"\.entry\s+(\w+)\(", result.ptx)
        vector = len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.u32", result.ptx))
        shared = len(re.findall(r"ld\.shared(?:\.\w+)*\.f32", result.ptx))
        print(f"{name:24s} ok={result.ok}  kernels={len(kernels)}  128-bit loads={vector}  shared loads={shared}")
else:
    print("NVRTC not found: install torch's CUDA wheel to compile-check the kernels")
""")
md(r"""
**Your turn (sections 3–6 in your PTX).** Your kernel file, compiled for sm_90, beside the three shipped ones (the
framework's stands in until `kernels/rope_v4_yours.cu` exists). For each file's bf16 / int64-position kernel: its
global loads and stores by bytes per thread (16 = a 128-bit access; float loads are the cos/sin reads) and its
shared-memory accesses. These are instructions in the code, not executions: a load in a loop counts once. A compile
error prints NVRTC's log — `make test-phase2` runs the same compile for sm_80 and sm_90.
""")
code(r"""
from collections import Counter

ENTRY = re.compile(r"\.entry\s+(\w+)\((.*?)^\}", re.S | re.M)
ACCESS = re.compile(r"\b(ld|st)\.(global|shared)((?:\.\w+)+)\s")

def accesses(ptx_body):
    # Counters of bytes per thread, from the vector width (.v2/.v4) and the element type's bits; global float
    # loads are the cos/sin reads, the other global loads q/k elements and the position
    found = {}
    for op, space, suffix in ACCESS.findall(ptx_body):
        parts = suffix.strip(".").split(".")
        vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d", p)), 1)
        what = "cos/sin loads" if (op, space) == ("ld", "global") and parts[-1].startswith("f") else \
            {("ld", "global"): "q/k + position loads", ("st", "global"): "stores"}.get((op, space), f"{space} {op}")
        found.setdefault(what, Counter())[vec * int(re.search(r"\d+", parts[-1]).group()) // 8] += 1
    return "; ".join(f"{what} " + ", ".join(f"{n}×{b} B" for b, n in sorted(c.items())) for what, c in found.items())

files = [KERNEL_DIR / f for f in ("rope_v1_naive.cu", "rope_v2_shared.cu", "rope_v3_vectorized.cu")]
files.append(YOUR_KERNEL if YOUR_KERNEL.exists() else KERNEL_DIR / "rope_v1_naive.cu")
if cudac.nvrtc_available():
    for i, path in enumerate(files):
        result = cudac.compile_check(path, "sm_90", NVRTC_OPTIONS)
        label = f"yours ({path.name})" if i == len(files) - 1 else path.name
        if not result.ok:
            print(f"{label}: does not compile\n{result.log}")
            continue
        entries = dict(ENTRY.findall(result.ptx))
        name = next((n for n in entries if "bf16" in n and "pos64" in n), next(iter(entries)))
        print(f"{label}, {name}:\n    {accesses(entries[name])}")
else:
    print("NVRTC not found: install torch's CUDA wheel to compile-check the kernels")
""")

md(r"""
## 8. What vLLM's kernel does (in our words)

vLLM's `csrc/pos_encoding_kernels.cu` (the `rotary_embedding_kernel` of the versions we read) is the model for our
contract: the same `[max_position, rot_dim]` cache with cosines then sines, positions per token, q and k in one launch,
in place, NeoX (rotate-half) or GPT-J (interleaved) pairing chosen by a template flag, and a token stride so q and k can
be views of the fused QKV output. Its thread layout is **one block per token**: the block's threads stride over all
`(head, pair)` of the query, then of the key; each thread rotates one pair with scalar loads and reads its cos/sin
through the read-only cache (`__ldg`). Our v2 is that layout with the cos/sin row staged once in shared memory.

Where the solution differs: its threads own a 16-byte chunk, so q/k move in 128-bit accesses and cos/sin are read once
per thread instead of once per pair; several tokens share a block (fewer, fuller blocks); and the math is fp32 for
every input dtype. Newer vLLM and SGLang/FlashInfer kernels vectorise in the same spirit; `make check-phase2` times
FlashInfer's `apply_rope_with_cos_sin_cache` (vLLM's contract) in the same run when it imports — target P2.5: ≥ 80 %
of its throughput.

## 9. On a GPU: correctness and a quick measurement

The full measurement (framework, v2, solution, eager PyTorch, `torch.compile`, liger-kernel, FlashInfer, a token sweep,
a launch sweep, ncu) is `make check-phase2`. **Your turn (P2.2, P2.3 in brief):** this cell checks the three shipped
kernels and your module once and times them at the target shape.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
if HAS_GPU:
    from module0_profiling.timing import time_fn
    from phase2_rope_cuda.workload import counted_bytes, input_sets

    shape = RopeShape()                              # 16384 tokens, 32 + 4 heads, D = 64, bf16
    sets = input_sets(shape, "cuda", l2_bytes=50 * 2**20)
    nbytes = counted_bytes(shape, sets[0].distinct_positions)
    impls = ["framework", "phase2_rope_cuda.staged", "solution"] + (["phase2_rope_cuda.mine"] if HAVE_MINE else [])
    for impl in impls:
        apply = load_impl(impl).apply_rope_
        x = sets[0]
        q_exp, k_exp = reference.apply_rope_reference(x.q.clone(), x.k.clone(), x.positions, x.cache)
        apply(*x.args)
        torch.testing.assert_close(x.q, q_exp, atol=1e-5, rtol=1.6e-2)
        t = time_fn(lambda s: apply(*s.args), inputs=sets, warmup=5, iters=20, calls_per_sample=4)
        print(f"{impl:24s} {t.median * 1e6:7.1f} µs  {nbytes / t.median / 1e9:6.0f} GB/s")
else:
    print("no GPU: skipped (run `make check-phase2` on a CUDA machine)")
""")

md(r"""
## 10. Worked answer: how `solution.py` does it (`kernels/rope_v3_vectorized.cu`)

Read `solution.py` and the kernel's header comment beside this summary.

- **Thread layout.** `blockDim.x = CHUNKS × lanes`, `blockDim.y` = tokens per block. A *chunk* is VEC = 16 / element
  size consecutive elements of the first half of a head plus the matching VEC of the second half — the rotate-half
  partners — so `CHUNKS = (D/2) / VEC` threads cover a head (bf16, D = 64: 4 threads), and a thread owns both halves
  of each of its pairs: **in place** without a race.
- **cos/sin once, in registers**: a thread keeps its chunk for every head it visits, so it loads its 2 × VEC values
  (four `float4`) once per token.
- **128-bit accesses**: every q/k load and store is one `uint4` (the `Pack16` union views it as elements).
- **Bytes in flight**: each thread issues the loads of `HEADS_PER_ITER = 2` heads before it uses either.
- **q and k heads are one index space** (GQA: 32 + 4), one launch.
""")
code(r"""
source = (KERNEL_DIR / "rope_v3_vectorized.cu").read_text()
body = source[source.index("template <typename T, int HEAD_DIM"):source.index("#define ROPE_VECTORIZED")]
print(body)
""")
md(r"""
The launch shape is host arithmetic (`solution.launch_shape`, no GPU needed): lanes of heads per token, then tokens
per block until the block has at least `min_threads_per_block` threads. The bench sweeps `LaunchConfig`.
""")
code(r"""
from phase2_rope_cuda import solution

for config in (solution.LaunchConfig(1, 128), solution.DEFAULT_CONFIG, solution.LaunchConfig(4, 512)):
    grid, block = solution.launch_shape(16384, 32 + 4, 64, torch.bfloat16, config)
    print(f"{config}: {solution.chunks_per_head(64, torch.bfloat16)} threads per head, "
          f"block {block[0]}×{block[1]} (threads × tokens), {grid[0]} blocks")
""")
md(r"""
- **The launch path**: a call at 16,384 tokens is tens of µs of GPU work, so a Python path that costs as much makes
  the kernel wait on the CPU. `solution.apply_rope_` builds a *plan* once per layout (all the contract's checks, the
  grid, the integer arguments) and then calls CuPy's driver-level `Function` on torch's raw current stream
  (`cuda_launch.cupy_stream`), re-checking only the base addresses' alignment per call.
- **Limits**: head_dim 64 or 128 (template instantiations); 16-byte aligned base pointers and token/head strides —
  other layouts are refused with one line that points to the framework.

The report of `make check-phase2` asks you to explain your figures:

1. Does ncu's DRAM throughput of your kernel approach the copy kernel's? The framework may show high DRAM throughput
   too, yet it moves each byte twice: compare *useful* GB/s (counted bytes over time).
2. Which launch configuration wins, and is the gap bigger than the timing spread?
3. Below how many tokens is every version launch-bound (the token sweep and the host-cost table)?
4. Does `torch.compile` close the gap at some sizes?
""")

nb.write(Path(__file__).resolve().parents[1])
