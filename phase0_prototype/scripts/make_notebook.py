"""Write phase0_prototype/notebook.ipynb (the lesson's source of truth is this script).

Tasks first: the notebook opens with what to build in ``mine.py`` (a static KV cache, fused projections,
Triton decode kernels, a CUDA graph) and the targets that reward each, then teaches loading, measuring,
tracing and each of the four steps with a "your turn" cell on the learner's module (the framework until
``mine.py`` exists), and ends with the worked answer (the solution). On a CPU it runs ``random:tiny`` in
seconds; GPU cells say so, and every GPU figure is left to ``make check-phase0``'s report.
Run: ``.venv/bin/python phase0_prototype/scripts/make_notebook.py``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 0 — a TinyLlama prototype, then why it is slow, then making it fast

Run → profile → explain → optimise → check. The framework is a ~100-line Llama forward that is correct and
slow: it has no KV cache, so every new token re-runs the whole sequence. At batch 1 a decode step reads every
weight once for ~2 FLOPs per weight, so the honest figure of merit is bytes per second against the measured
copy bandwidth (MBU). On a CPU this notebook uses `random:tiny` (3 layers) and short lengths, so it finishes in
seconds; on a GPU it uses `random:tinyllama` in bf16.

## 1. Your tasks

Start your module from the framework:

```
cp phase0_prototype/framework.py phase0_prototype/mine.py
```

Keep the contract of [`__init__.py`](__init__.py): `build(model, *, max_batch_size=1, max_seq_len=None,
compile=..., rope_fn=None) -> Engine`, whose `forward_logits(tokens)` returns fp32 logits of every position and
whose `generate(prompt_ids, max_new_tokens, ...)` returns a `GenerationOutput` (EOS handling in `generation.py`).
Then, in this order:

1. **A static KV cache.** Preallocate `[layers, 2, batch, kv_heads, max_seq_len, head_dim]`; the prefill writes
   the prompt's K and V, each decode step processes one token and attends over the cached positions.
   Rewarded by **P0.2** (your engine eager against the eager framework, per decode token: ≥ 1.5× at 8192
   tokens of context). On a GPU an eager cached step is launch-bound: at prompt 512 it is no faster than the
   framework's recomputation (0.82× in the committed report), so the check sweeps the context and prints
   where the cache starts to win (section 5).
2. **Fused projections.** q|k|v and gate|up as one matrix each (`weights.fuse`): one launch and one read of
   the activation instead of three or two. Fewer launches feed P0.3 and P0.4.
3. **Triton decode kernels.** At batch 1 each projection is a GEMV that should stream its weight at copy
   bandwidth: RMSNorm fused in front, the residual add and SiLU·up fused behind, RoPE + cache write +
   attention in one kernel. Rewarded by **P0.4** (MBU ≥ 70 %, ≥ 2× HF's compiled static-cache generate).
4. **A CUDA graph of the whole step** when `compile=True` on a GPU: static shapes (mask the cache slots not
   yet written), capture once, one replay per token, no host read per token. Start with `torch.compile` of
   your PyTorch step (gpt-fast's recipe): **P0.3** asks ≥ 1.5× against your eager step and prints the Triton
   step's gain beside it; your kernels inside the graph then serve P0.4.
5. **Speculative decoding** (read `speculative.py`, section 11): several greedy tokens per forward when the
   text repeats itself. **P0.7** measures it on the solution's engine: ≥ 1.5× on an editing prompt, ≥ 0.95×
   on random text (it switches itself off), acceptance reported.

**P0.1** (greedy tokens identical to HF transformers for 64 tokens, fp32) must hold at every step, eager and
compiled. **P0.5** measures the CUDA basics (`cuda_basics/*.cu`: tiled vs naive matmul, coalesced vs strided
copy), not your module. The next cell prints the targets from `checks.py`, so they are the ones the check applies.

**Hints.** `model.decoder_layer` is the layer every engine runs; it takes `attend(i, q, k, v)` (where K/V
live) and `linear` (how a projection is computed), so a cache is an `attend` that writes slots and reads them
back. `weights.fuse` builds the fused layout. `kernels/gemv.py` (`fused_gemv`) and
`kernels/decode_attention.py` (`rope_cache_attention`) are the solution's kernels to read once yours work;
`module0_profiling.timing.capture_cuda_graph` captures a step. A graph replays fixed addresses: the token and
position must live in device buffers the step reads, not in Python ints. Checking EOS every token reads the
GPU from the host: check every few tokens instead.

**Commands.**

| what | command | where |
|---|---|---|
| all targets and the report | `make check-phase0 IMPL=phase0_prototype.mine` | a GPU (P0.5 needs CuPy) |
| the CPU part (P0.1; the speed targets print SKIP with the reason) | `make check-phase0 IMPL=phase0_prototype.mine SIZE=small` | any machine, seconds |
| the phase's tests on your module (without `IMPL`: framework and solution) | `make test-phase0 IMPL=phase0_prototype.mine` | any machine |

The check writes a report: `reports/phase0_prototype/<device>.md` for the solution on a GPU,
`<device>.phase0_prototype.mine.<size>.md` beside it for your module; it asks the questions of section 10.
""")
code(r"""
from module0_profiling.notebook_env import import_phases_as_packages, your_module
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package of transformers
import torch
from phase0_prototype import PRESETS, load_impl, load_model
from phase0_prototype.checks import TARGETS

YOURS, HAVE_MINE = your_module("phase0_prototype")
yours_impl = load_impl(YOURS)  # the framework until mine.py exists
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.hardware import detect_device, measured_peaks
from phase0_prototype.weights import decode_bytes_per_token

device_info = detect_device()
GPU = device_info.is_cuda
if not GPU:
    torch.set_num_threads(1)  # tiny shapes: threads only add noise
SPEC, DEVICE, DTYPE = ("random:tinyllama", "cuda", "bf16") if GPU else ("random:tiny", "cpu", "fp32")
SHORT, LONG, NEW = (32, 512, 64) if GPU else (16, 256, 16)
peaks = measured_peaks(device_info)
print(device_info.name, f"copy {peaks.copy_gbps:.0f} GB/s")
""")
md(r"""
**Your turn (P0.1).** The check's correctness pass on your module: `random:tiny` in fp32 on this machine, your
greedy tokens against HF transformers' `LlamaForCausalLM` holding the same weights, 64 tokens (on a GPU the
check repeats it with `compile=True`). The framework passes: it is correct, only slow.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.targets import BenchResult
from phase0_prototype import bench

parity = BenchResult()
bench.greedy_parity(YOURS, bench.SHAPES["small"], "cpu", parity)
print("\n".join(parity.notes) or parity.skipped)
""")

md(r"""
## 2. Load and generate

`load_model` accepts a hub id, a local HF directory, a bundled model name or `random:*`. Weights come as the
checkpoint's HF-named state dict; `weights.fuse` gives the fused layout (`qkv_proj`, `gate_up_proj`) the
solution runs. A random model has a byte-level tokenizer, so its "text" is noise — the shapes, and therefore
the speed, are the real ones.
""")
code(r"""
model = load_model(SPEC, dtype=DTYPE, device=DEVICE)
cfg = model.config
print(f"{SPEC}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
      f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} (GQA), "
      f"{cfg.num_parameters() / 1e6:.2f} M parameters")
""")
md(r"""
**Your turn.** Generate with your engine and with the framework from the same prompt: greedy decoding is
deterministic, so the tokens must agree (in bf16 on a GPU a tie can flip a late token; P0.1 is judged in fp32).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
framework = load_impl("framework").build(model, max_seq_len=LONG + NEW + 64)
yours = yours_impl.build(model, max_seq_len=LONG + NEW + 64, compile=False)
ids = model.tokenizer.encode("The KV cache")
out = yours.generate(ids, 24, stop_on_eos=False)
print(f"{YOURS} ({yours.mode}):", out.tokens[0].tolist())
print(repr(model.tokenizer.decode(out.tokens[0].tolist())))
print("same tokens as the framework:", torch.equal(out.tokens, framework.generate(ids, 24, stop_on_eos=False).tokens))
""")

md(r"""
## 3. Measure: tokens/s and bytes/s

At batch 1 a decode step multiplies one activation vector by every weight matrix: ~2 FLOPs per weight, and
every weight must come from DRAM once. So the honest speed figure is gpt-fast's *achieved bandwidth* =
bytes per token × tokens/s, compared with the measured copy bandwidth. Decode speed is taken as
(time of `generate(n)` − time of `generate(1)`) / (n − 1), so the prompt and first token drop out.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.timing import time_region

def decode_rate(engine, prompt_len, new=NEW):
    prompt = torch.randint(3, cfg.vocab_size, (1, prompt_len), device=DEVICE)
    t_new = time_region(lambda: engine.generate(prompt, new, stop_on_eos=False), repeats=3).median
    t_one = time_region(lambda: engine.generate(prompt, 1, stop_on_eos=False), repeats=3).median
    return (new - 1) / (t_new - t_one)

solution = load_impl("solution").build(model, max_seq_len=LONG + NEW + 64, compile=False)
bytes_tok = decode_bytes_per_token(cfg, model.dtype, SHORT + NEW // 2)
for name, engine in [("framework", framework), ("solution eager", solution), (f"yours: {YOURS}", yours)]:
    rate = decode_rate(engine, SHORT)
    gbps = bytes_tok * rate / 1e9
    print(f"{name:32} {rate:8.1f} tok/s  {gbps:8.2f} GB/s  = {100 * gbps / peaks.copy_gbps:.1f} % of copy BW")
""")

md(r"""
## 4. Trace it

`module0_profiling.trace.profile_region` runs the region under `torch.profiler` and summarises it: the top
kernels (CPU operators on a CPU), GPU busy %, launches and gaps. Eager decode launches ~15 kernels per layer
per token; at TinyLlama sizes each GEMV takes a few µs on an H100 — about what the CPU needs to launch it.
**Your turn:** the trace below is of your engine.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.trace import profile_region
prompt = torch.randint(3, cfg.vocab_size, (1, SHORT), device=DEVICE)
summary = profile_region(lambda: yours.generate(prompt, 16, stop_on_eos=False), iters=1)
print(f"{YOURS}: {summary.launches} {'kernels' if GPU else 'operators'} for 16 tokens; GPU busy: {summary.gpu_busy}")
for k in summary.top(5):
    print(f"{100 * k.share:5.1f} %  {k.calls:5d} calls  {k.name[:70]}")
""")

md(r"""
## 5. Task 1 — why is no KV cache slow?

The framework re-runs the whole sequence for every new token: token *t* costs a forward pass over *t*
positions (matmuls ∝ t, attention ∝ t²), while the cached decode step processes one position and reads the
weights once. So the gap grows with the prompt. Below: per-token decode time at a short and a long prompt,
for the framework, your engine and the solution (eager).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
for prompt_len in (SHORT, LONG):
    fw, mine, so = (decode_rate(e, prompt_len, 8) for e in (framework, yours, solution))
    print(f"prompt {prompt_len:4d}: framework {fw:8.1f} tok/s   yours {mine:8.1f} tok/s ({mine / fw:5.1f}×)   "
          f"solution {so:8.1f} tok/s ({so / fw:5.1f}×)")
flops_fw = 2 * cfg.num_parameters() * LONG
flops_so = 2 * cfg.num_parameters()
print(f"matmul FLOPs per token at prompt {LONG}: framework {flops_fw / 1e9:.2f} GFLOP "
      f"vs cached {flops_so / 1e9:.3f} GFLOP ({LONG}×)")
""")
md(r"""
The FLOP ratio is the prompt length, but the speed ratio is smaller: the framework's big matmuls run near the
compute roof while the cached step is a chain of tiny launch-bound kernels. On an H100 at batch 1 both eager
engines cost about their launches until the framework's work per token outgrows them, far past prompt 512:
P0.2 sweeps contexts 256 … 8192 and prints the crossover, the shortest context where the cache wins. Removing
recomputation is the first step; removing launch overhead is the second.

**Your turn.** A cache must not change the numbers: your engine's logits of every position (`forward_logits`,
a fresh prompt) and its greedy continuation of a prompt of a different length, against the framework's.
""")
code(r"""
tokens = torch.randint(3, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3)).to(DEVICE)
fp32 = load_model("random:tiny", dtype="fp32", device=DEVICE, seed=2)  # correctness: small, fp32
ref_engine = load_impl("framework").build(fp32, max_seq_len=64)
test_engine = yours_impl.build(fp32, max_seq_len=64, compile=False)
err = (test_engine.forward_logits(tokens) - ref_engine.forward_logits(tokens)).abs().max().item()
same = torch.equal(test_engine.generate(tokens[:, :7], 20, stop_on_eos=False).tokens,
                   ref_engine.generate(tokens[:, :7], 20, stop_on_eos=False).tokens)
print(f"{YOURS}: logits max |Δ| {err:.1e} (fp32), 20 greedy tokens equal: {same}")
""")

md(r"""
## 6. Task 2 — fused projections

A layer has seven projections: q, k, v, o, gate, up, down. q, k and v read the same normed activation, and so
do gate and up: stacking their weights (`weights.fuse`: `qkv_proj` = `[q; k; v]`, `gate_up_proj` =
`[gate; up]`) gives the same numbers from four matrix products instead of seven — one launch and one read of
the activation instead of three or two. At batch 1 the launch count, not the FLOPs, is the cost.
""")
code(r"""
import torch.nn.functional as F
from phase0_prototype.weights import fuse

w = fuse(fp32.state, fp32.config)
h = torch.randn(1, 1, fp32.config.hidden_size, device=DEVICE)
p = "model.layers.0."
q, k, v = F.linear(h, w.layers[0].qkv_proj).split([fp32.config.q_size, fp32.config.kv_size, fp32.config.kv_size], -1)
print("fused q|k|v == separate q, k, v:", all(torch.allclose(a, F.linear(h, fp32.state[p + f"self_attn.{n}.weight"]), atol=1e-6)
                                          for a, n in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj"))))
print("qkv_proj", tuple(w.layers[0].qkv_proj.shape), " gate_up_proj", tuple(w.layers[0].gate_up_proj.shape))
layers = PRESETS["tinyllama"].num_hidden_layers
print(f"TinyLlama: {7 * layers + 1} projections per token unfused, {4 * layers + 1} fused (lm_head included)")
""")
md(r"""
**Your turn.** How many projections (`F.linear` calls, PyTorch's `aten::linear` operator) does your engine run
per decode token? The profiler counts them on the CPU over 9 new tokens, minus a 1-token run to drop the prefill
(a Triton or compiled step calls no `F.linear`: count its kernels in the GPU trace instead).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
cpu_fp32 = load_model("random:tiny", dtype="fp32", device="cpu", seed=2)
cpu_prompt = tokens[:, :8].cpu()

def linear_calls(engine, n):
    s = profile_region(lambda: engine.generate(cpu_prompt, n, stop_on_eos=False), iters=1, warmup=0)
    return sum(k.calls for k in s.kernels if k.name == "aten::linear")

for name, impl in {"framework": load_impl("framework"), YOURS: yours_impl}.items():
    engine = impl.build(cpu_fp32, max_seq_len=64, compile=False)
    per_token = (linear_calls(engine, 9) - linear_calls(engine, 1)) / 8
    print(f"{name:26s} {per_token:5.1f} projections per decode token "
          f"({cpu_fp32.config.num_hidden_layers} layers: 7 each unfused, 4 fused, + lm_head)")
""")

md(r"""
## 7. Task 3 — Triton decode kernels: the byte budget of each projection

With a cache and fused weights the step reads the weights once; how fast is then set by how close each kernel
streams its weight to the copy bandwidth. cuBLAS and inductor run these batch-1 GEMVs well below it; a
hand-written GEMV with the RMSNorm as prologue and the residual add or SiLU·up as epilogue needs no extra
pass over the activations. The budget at TinyLlama's shapes in bf16, at the H100 SXM *datasheet* bandwidth
(the check uses the bandwidth it measures):
""")
code(r"""
from module0_profiling.hardware import lookup_datasheet

tl = PRESETS["tinyllama"]
sheet = lookup_datasheet("H100 SXM")
shapes = {"qkv_proj": (tl.q_size + 2 * tl.kv_size, tl.hidden_size), "o_proj": (tl.hidden_size, tl.q_size),
          "gate_up_proj": (2 * tl.intermediate_size, tl.hidden_size), "down_proj": (tl.hidden_size, tl.intermediate_size)}
print(f"{'projection':>13} {'MB':>6} {'µs at datasheet BW':>19}")
for name, (n, k_) in shapes.items():
    mb = n * k_ * 2 / 1e6
    print(f"{name:>13} {mb:6.1f} {mb * 1e6 / (sheet.mem_gbps * 1e9) * 1e6:19.1f}")
lm = tl.vocab_size * tl.hidden_size * 2
total = decode_bytes_per_token(tl, torch.bfloat16, 512 + 64)
print(f"{'lm_head':>13} {lm / 1e6:6.1f} {lm / (sheet.mem_gbps * 1e9) * 1e6:19.1f}")
print(f"\nper token (×{tl.num_hidden_layers} layers, + lm_head, + KV at context 576): {total / 1e9:.2f} GB "
      f"= {total / (sheet.mem_gbps * 1e9) * 1e3:.2f} ms at best; P0.4 asks for ≥ 70 % of the measured copy bandwidth")
""")
md(r"""
The small projections (qkv, o) read a few MB each: a few µs, comparable to a kernel's launch and ramp-up. That
is why the launches must go (section 8) and why each kernel must reach full bandwidth quickly.

**Your turn.** Your engine with `compile=True` (on a GPU: your kernels and graph; on a CPU whatever your
`build` does there) must still give the framework's greedy tokens in fp32 — P0.1 checks both modes.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
compiled_test = yours_impl.build(fp32, max_seq_len=64, compile=True)
same = torch.equal(compiled_test.generate(tokens[:, :7], 20, stop_on_eos=False).tokens,
                   ref_engine.generate(tokens[:, :7], 20, stop_on_eos=False).tokens)
print(f"{YOURS} ({compiled_test.mode}): 20 greedy tokens equal the framework's: {same}")
""")

md(r"""
## 8. Task 4 — torch.compile and CUDA graphs

A graph captures the whole decode step once; replaying it is one launch, so the CPU's launch rate no longer
paces the GPU. It needs static shapes (the cache has a fixed length and the kernels mask unwritten slots) and
fixed addresses (the token id and position live in device buffers the step reads). Each token is then: copy
the token id into the graph's input, replay, sample on the device; EOS is checked every `sync_every` tokens,
so the CPU never waits for the GPU. **Your turn:** this needs a GPU; on a CPU the cell says so.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
if GPU:
    for name, impl in ((YOURS, yours_impl), ("solution", load_impl("solution"))):
        compiled = impl.build(model, max_seq_len=LONG + NEW + 64, compile=True)
        if hasattr(compiled, "warmup"):
            compiled.warmup()
        eager = impl.build(model, max_seq_len=LONG + NEW + 64, compile=False)
        eager_rate, graph_rate = decode_rate(eager, SHORT), decode_rate(compiled, SHORT)
        print(f"{name}: eager {eager_rate:.1f} tok/s -> {compiled.mode} {graph_rate:.1f} tok/s "
              f"({graph_rate / eager_rate:.2f}×; P0.3 asks ≥ 1.5× of torch.compile's step), "
              f"{100 * bytes_tok * graph_rate / 1e9 / peaks.copy_gbps:.1f} % of copy BW")
        s = profile_region(lambda: compiled.generate(prompt, 16, stop_on_eos=False), iters=1)
        print(f"  {s.launches} kernels for 16 tokens; GPU busy {s.gpu_busy:.0%}")
else:
    print("CUDA graphs need a GPU: on this machine every engine runs eagerly.")
""")

md(r"""
## 9. The roofline, then the checks

Every decode version has the same arithmetic intensity (~1 FLOP/byte in bf16, 0.5 in fp32) — far left of the
ridge point — and differs only in height. `bench.run` measures all versions in one process and
`checks.TARGETS` judges them (P0.1–P0.5; the speed targets SKIP on a CPU with the reason). **Your turn:** the
bench on your module (what `make check-phase0 IMPL=... SIZE=small` runs, without writing a report).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.roofline import Ceiling, position
result = bench.run(YOURS, "small")
roof = Ceiling("measured", peaks.matmul_tflops, peaks.copy_gbps)
for p in result.roofline:
    pos = position(p, roof)
    print(f"{p.label:45} AI {pos['intensity']:5.2f}  {pos['gbps']:8.1f} GB/s  {pos['bound']}-bound, "
          f"{100 * pos['fraction_of_roof']:.1f} % of roof")
for target in TARGETS:
    outcome = target.evaluate(result)
    print(f"{target.id}: {outcome.status_text}  {outcome.measured}")
""")

md(r"""
## 10. Worked answer: how `solution.py` does it

Read `solution.py`, `kernels/step.py`, `kernels/gemv.py`, `kernels/decode_attention.py` and
`kernels/greedy.py` beside this summary. Measured figures: the committed H100 report
[`../reports/phase0_prototype/h100-80gb-hbm3.md`](../reports/phase0_prototype/h100-80gb-hbm3.md); the
variants tried on the way, each with its command: [NOTES.md](NOTES.md).

- **Static KV cache** (task 1): `kv_cache [layers, 2, batch, kv_heads, max_seq_len, head_dim]`, allocated
  once. `prefill` runs the prompt through `model.decoder_layer` with an `attend` that writes positions
  `[0, T)` and runs causal SDPA; `decode_step` runs one token with an `attend` that writes slot `position` and
  scores all `max_seq_len` slots with the unwritten ones masked (`decode_attention`): the shapes never
  change, which is what a graph needs. The q heads of a GQA group share one K/V read through a reshape.
- **Fused projections** (task 2): `weights.fuse` at build time; every projection is `qkv_proj`, `o_proj`,
  `gate_up_proj` or `down_proj`.
- **Triton step** (task 3, `kernels/step.py`): per layer (1) `qkv = gemv(rmsnorm(x), W_qkv)` with the norm as
  prologue, (2) RoPE + cache write + attention over splits of the cache, (3) the merge of the splits' partial
  softmaxes, (4) `x += gemv(attn, W_o)` with the residual fused, (5) `act = silu(gate)·up` fused into the
  gate|up GEMV, (6) `x += gemv(act, W_down)` — about 135 kernels per token for TinyLlama against the ~360
  inductor emits for the compiled PyTorch step. Each GEMV's tile is chosen per projection
  (`gemv.default_config`) and launches its successor early (programmatic dependent launch). A model or batch
  the kernels do not take falls back to `torch.compile` of the PyTorch step, where small projections are
  written as reductions (`gemv_reduction`).
- **CUDA graph** (task 4): `DecodeGraph` holds the step's static buffers (token, position, EOS ids, finished
  flags, token history); the captured body is the step followed by `kernels/greedy.py`'s tail (argmax, EOS,
  feed the token back, advance the position, record it), so a greedy token is one replay. The host reads the
  tokens every `sync_every` steps and launches the next step before reading (`lookahead`).

The same Triton step runs on a CPU in Triton's interpreter (`dev.TritonStepEngine`, a few seconds at
`random:tiny`); it must give the PyTorch step's greedy tokens:
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
import os
from phase0_prototype.dev import TritonStepEngine

if GPU or os.environ.get("TRITON_INTERPRET") == "1":
    triton_step = TritonStepEngine(fp32, max_seq_len=64, compile=False)
    pytorch_step = load_impl("solution").build(fp32, max_seq_len=64, compile=False)
    a = triton_step.generate(tokens[:, :7], 8, stop_on_eos=False).tokens
    b = pytorch_step.generate(tokens[:, :7], 8, stop_on_eos=False).tokens
    print(f"{triton_step.mode}: 8 greedy tokens equal the PyTorch step's: {torch.equal(a, b)}")
else:
    print("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported (make test-notebooks sets it)")
""")
md(r"""
**Ablations.** Copy `solution.py` over your `mine.py` in a scratch branch, take one piece out (the CUDA graph,
the fused projections, the device-side greedy tail) and run `make check-phase0 IMPL=phase0_prototype.mine` on a
GPU to see which target moves.

The report of `make check-phase0` asks you to explain your figures:

1. Which three kernels take the most time — the projections' GEMVs? How busy is the GPU, and how do the gaps
   between kernels compare with the eager row of the before/after table?
2. Do the GEMV kernels show DRAM throughput near peak and SM throughput low (memory-bound)? A kernel with both
   low is latency-bound: too small to fill the GPU, or waiting on a launch.
3. Where does each version sit on the roofline? All decode rows share one intensity and differ only in height.
4. Why does the stride-32 copy lose to the coalesced one although it moves the same useful bytes, and which
   TILE of the CUDA-basics matmul wins?
""")

md(r"""
## 11. Task 5 — speculative decoding: more than one token per forward

At batch 1 a forward over a few positions costs about one step (the weights are read once either way). Prompt
lookup guesses the next k tokens from the text itself: the latest earlier occurrence of the last n-gram
(n = 3, 2, 1) and what followed it. One verify forward runs the last token and the k drafts over the static KV
cache; the drafts equal to the model's argmax are kept, plus the model's own next token — so the tokens are
exactly the plain greedy ones. When drafts keep failing, a verify costs more than the step it replaces, and
`SpeculativeDecoder` switches itself to plain steps (it keeps drafting "in the shadow" to know when to come
back). The bundled trained model continues a held-out passage given with its opening repeated (an
editing prompt); a random model would predict nothing a draft can match.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase0_prototype.bench import edit_prompt
from phase0_prototype.speculative import SpeculativeDecoder

kjv = load_model("kjv-llama-18m", dtype="fp32", device="cpu")
plain_engine = load_impl("solution").build(kjv, compile=False)
speculative = SpeculativeDecoder(plain_engine, k=8)
edit = edit_prompt(kjv, 200)
plain_out = plain_engine.generate(edit, 48, stop_on_eos=False).tokens
spec_out = speculative.generate(edit, 48, stop_on_eos=False).tokens
s = speculative.stats
print(f"same tokens as plain decoding: {torch.equal(plain_out, spec_out)}; {s.verifies} verifies, "
      f"{100 * s.acceptance:.0f} % of {s.drafted} drafts accepted, {s.plain_tokens} plain tokens, "
      f"switched off {s.switched_off}×")
print(repr(kjv.tokenizer.decode(spec_out[0].tolist())))
""")

nb.write(Path(__file__).resolve().parents[1])
