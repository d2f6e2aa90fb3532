"""Write phase0_prototype/notebook.ipynb (the lesson's source of truth is this script).

Run from the repository root: ``python phase0_prototype/scripts/make_notebook.py`` then execute it with
``jupyter nbconvert --to notebook --execute --inplace phase0_prototype/notebook.ipynb``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 0 — a TinyLlama prototype, then why it is slow, then making it fast

1. load a Llama checkpoint (or random weights of the exact TinyLlama shapes) and generate text;
2. measure it the Module 0 way — tokens/s *and* the fraction of the hardware used (MBU);
3. trace it and see where the time goes;
4. see why the no-KV-cache framework is slow, with numbers at a short and a long prompt;
5. compile the decode step and replay it as a CUDA graph;
6. place every version on the roofline, then run the phase's checks.

On a CPU the notebook uses `random:tiny` (3 layers) and short lengths, so it finishes in seconds; on a GPU it
uses `random:tinyllama` in bf16. Cells whose numbers change run to run are marked `# NBVAL_IGNORE_OUTPUT`.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.notebook_env import import_phases_as_packages
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package of transformers
import time
import torch
from module0_profiling.hardware import detect_device, measured_peaks
from phase0_prototype import load_impl, load_model, SamplingParams
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
## 1. Load and generate

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
code(r"""
# NBVAL_IGNORE_OUTPUT
solution = load_impl("solution").build(model, max_seq_len=LONG + NEW + 64, compile=False)
ids = model.tokenizer.encode("The KV cache")
out = solution.generate(ids, 24, stop_on_eos=False)
print(out.tokens[0].tolist())
print(repr(model.tokenizer.decode(out.tokens[0].tolist())))
""")
md(r"""
## 2. Measure: tokens/s and bytes/s

At batch 1 a decode step multiplies one activation vector by every weight matrix: ~2 FLOPs per weight, and
every weight must come from DRAM once. So the honest speed figure is gpt-fast's *achieved bandwidth* =
bytes per token × tokens/s, compared with the measured copy bandwidth.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.timing import time_region

def decode_rate(engine, prompt_len, new=NEW):
    prompt = torch.randint(3, cfg.vocab_size, (1, prompt_len), device=DEVICE)
    t_new = time_region(lambda: engine.generate(prompt, new, stop_on_eos=False), repeats=3).median
    t_one = time_region(lambda: engine.generate(prompt, 1, stop_on_eos=False), repeats=3).median
    return (new - 1) / (t_new - t_one)

framework = load_impl("framework").build(model, max_seq_len=LONG + NEW + 64)
bytes_tok = decode_bytes_per_token(cfg, model.dtype, SHORT + NEW // 2)
for name, engine in [("framework", framework), ("solution eager", solution)]:
    rate = decode_rate(engine, SHORT)
    gbps = bytes_tok * rate / 1e9
    print(f"{name:16} {rate:8.1f} tok/s  {gbps:8.2f} GB/s  = {100 * gbps / peaks.copy_gbps:.1f} % of copy BW")
""")
md(r"""
## 3. Trace it

`module0_profiling.trace.profile_region` runs the region under `torch.profiler` and summarises it: the top
kernels (CPU operators on a CPU), GPU busy %, launches and gaps. Eager decode launches ~15 kernels per layer
per token; at TinyLlama sizes each GEMV takes a few µs on an H100 — about what the CPU needs to launch it.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.trace import profile_region
prompt = torch.randint(3, cfg.vocab_size, (1, SHORT), device=DEVICE)
summary = profile_region(lambda: solution.generate(prompt, 16, stop_on_eos=False), iters=1)
print(f"{summary.launches} {'kernels' if GPU else 'operators'} for 16 tokens; GPU busy: {summary.gpu_busy}")
for k in summary.top(5):
    print(f"{100 * k.share:5.1f} %  {k.calls:5d} calls  {k.name[:70]}")
""")
md(r"""
## 4. Why is no KV cache slow?

The framework re-runs the whole sequence for every new token: token *t* costs a forward pass over *t*
positions (matmuls ∝ t, attention ∝ t²), while the cached decode step processes one position and reads the
weights once. So the gap grows with the prompt. Below: per-token decode time at a short and a long prompt.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
rows = []
for prompt_len in (SHORT, LONG):
    fw, so = decode_rate(framework, prompt_len, 8), decode_rate(solution, prompt_len, 8)
    rows.append((prompt_len, fw, so, so / fw))
    print(f"prompt {prompt_len:4d}: framework {fw:8.1f} tok/s   KV cache {so:8.1f} tok/s   "
          f"ratio {so / fw:6.1f}×")
flops_fw = 2 * cfg.num_parameters() * LONG
flops_so = 2 * cfg.num_parameters()
print(f"matmul FLOPs per token at prompt {LONG}: framework {flops_fw / 1e9:.2f} GFLOP "
      f"vs cached {flops_so / 1e9:.3f} GFLOP ({LONG}×)")
""")
md(r"""
The FLOP ratio is the prompt length, but the speed ratio is smaller: the framework's big matmuls run near the
compute roof while the cached step is a chain of tiny launch-bound kernels. Removing recomputation is the
first step; removing launch overhead is the second.

## 5. torch.compile and CUDA graphs

On a GPU `solution.py` runs the decode step as hand-written Triton kernels (`kernels/step.py`: per layer a
GEMV with RMSNorm fused in, one RoPE + cache-write + attention kernel and its merge, GEMVs with the residual
add and SiLU·up fused in; `phase0_prototype.dev.InductorStepEngine` compiles the PyTorch step with
`torch.compile` instead), with static shapes (the cache has a fixed length and the kernels mask unwritten
slots), then captures it once in a CUDA graph (`module0_profiling.timing.capture_cuda_graph`).
Each token is then: copy the token id into the graph's input, replay (one launch), sample on the device. EOS
is checked every `sync_every` tokens, so the CPU never waits for the GPU. This needs a GPU; on a CPU the cell
says so.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
if GPU:
    compiled = load_impl("solution").build(model, max_seq_len=LONG + NEW + 64, compile=True)
    compiled.warmup()
    eager_rate, graph_rate = decode_rate(solution, SHORT), decode_rate(compiled, SHORT)
    print(f"eager {eager_rate:.1f} tok/s -> compiled + graph {graph_rate:.1f} tok/s "
          f"({graph_rate / eager_rate:.2f}×), "
          f"{100 * bytes_tok * graph_rate / 1e9 / peaks.copy_gbps:.1f} % of copy BW")
    summary = profile_region(lambda: compiled.generate(prompt, 16, stop_on_eos=False), iters=1)
    print(f"{summary.launches} kernels for 16 tokens; GPU busy {summary.gpu_busy:.0%}")
else:
    print("CUDA graphs need a GPU: on this machine the solution runs eagerly.")
""")
md(r"""
## 6. The roofline, then the checks

Every decode version has the same arithmetic intensity (~1 FLOP/byte in bf16, 0.5 in fp32) — far left of the
ridge point — and differs only in height. `bench.run` measures all versions in one process and
`checks.TARGETS` judges them (P0.1–P0.5; the speed targets SKIP on a CPU with the reason).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.roofline import Ceiling, position
from phase0_prototype import bench, checks
result = bench.run("solution", "small")
roof = Ceiling("measured", peaks.matmul_tflops, peaks.copy_gbps)
for p in result.roofline:
    pos = position(p, roof)
    print(f"{p.label:45} AI {pos['intensity']:5.2f}  {pos['gbps']:8.1f} GB/s  {pos['bound']}-bound, "
          f"{100 * pos['fraction_of_roof']:.1f} % of roof")
for target in checks.TARGETS:
    outcome = target.evaluate(result)
    print(f"{target.id}: {outcome.status_text}  {outcome.measured}")
""")
md(r"""
**Your turn.** Copy `solution.py` to `phase0_prototype/mine.py`, change something (drop the CUDA graph, the
fused projections, or the device-side EOS check) and run `make check-phase0 IMPL=phase0_prototype.mine` on a
GPU to see which target moves. The CUDA basics (`cuda_basics/*.cu`) come with their own targets in P0.5.
""")

nb.write(Path(__file__).resolve().parents[1])
