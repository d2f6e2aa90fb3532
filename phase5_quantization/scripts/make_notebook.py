"""Write phase5_quantization/notebook.ipynb (the lesson's source of truth is this script)."""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# Phase 5 — INT4 weights: RTN, AWQ, GPTQ and a W4A16 kernel

Run → profile → explain → optimise → check. At batch 1 a decode step reads every weight once and does two
FLOPs with it: the step's time is *bytes ÷ bandwidth*. Storing the projections as 4-bit codes cuts their
bytes ~3.8×; the price is rounding error, which the smarter quantizers (AWQ, GPTQ) push where it hurts
least. This notebook runs on a CPU: the bundled kjv-llama-18m for accuracy, Triton's interpreter for the
kernel at tiny shapes. GPU figures (kernel and decode speed) come from the committed report.
""")
code(r"""
from module0_profiling.notebook_env import import_phases_as_packages
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import os, torch
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels on the CPU, before triton is imported
from phase0_prototype.sources import load_model
from phase5_quantization import framework, solution, gptq
from phase5_quantization.model import LinearLlama, calibration_inputs
from phase5_quantization.packing import pack_int4, unpack_int4
from phase5_quantization.bench import CALIBRATION, HELDOUT
torch.manual_seed(0)
GPU = torch.cuda.is_available()
print("device:", "cuda" if GPU else "cpu")
""")
md(r"""
## 1. The format: codes, scales, zero-points

Each row of `W [out, in]` is cut into groups of 128 inputs. A group gets a scale `s` and an integer zero-point
`z ∈ [0, 15]`; a weight is stored as `q = clamp(round(w/s) + z, 0, 15)` and read back as `(q − z)·s`. Eight
codes share one int32. RTN (`framework`) picks `s, z` from each group's min and max: every weight is within
`s/2` of its dequantized value.
""")
code(r"""
w = torch.randn(4, 256) * 0.05
qw = framework.quantize_weight(w, 128)
print("qweight", tuple(qw.qweight.shape), qw.qweight.dtype, "| scales", tuple(qw.scales.shape), qw.scales.dtype,
      "| zeros", tuple(qw.zeros.shape), qw.zeros.dtype)
err = (qw.dequantize() - w).abs()
print("worst error / (s/2):", float((err / (qw.scales.float().repeat_interleave(128, 1) / 2)).max()) <= 1.0)
print("bytes per weight:", qw.nbytes() / w.numel(), "(bf16: 2.0)")
codes = torch.arange(16, dtype=torch.uint8).view(2, 8)
print("pack/unpack round trip:", torch.equal(unpack_int4(pack_int4(codes)), codes))
""")
md(r"""
## 2. Why memory-bound decode gains — and why not 4×

Bytes one TinyLlama decode step must read (batch 1, 512 cached positions): every projection once, the
`lm_head` once, one embedding row, the KV cache. INT4 shrinks only the projections, and adds 3 bytes of
scale + zero-point per 128 weights.
""")
code(r"""
from phase0_prototype.config import TINYLLAMA as cfg
h, i = cfg.hidden_size, cfg.intermediate_size
proj = cfg.num_hidden_layers * ((cfg.q_size + 2 * cfg.kv_size) * h + h * cfg.q_size + 3 * i * h)
head = cfg.vocab_size * h
kv = 2 * cfg.num_hidden_layers * cfg.kv_size * 512
bf16 = 2 * (proj + head + h + kv)
int4 = proj * (0.5 + 3 / 128) + 2 * (head + h + kv)
print(f"projections: {proj / 1e6:.0f} M weights = {2 * proj / 1e9:.2f} GB bf16 -> {proj * (0.5 + 3 / 128) / 1e9:.2f} GB INT4 "
      f"({2 / (0.5 + 3 / 128):.2f}x)")
print(f"whole step: {bf16 / 1e9:.2f} GB -> {int4 / 1e9:.2f} GB: at most {bf16 / int4:.2f}x faster at equal bandwidth")
""")
md(r"""
The bound above is already below 4×: `lm_head` (131 MB) and the KV cache stay bf16, and the metadata costs
5 %. A real step loses more: attention and the norms do not shrink, every kernel has a fixed ramp-up and
tail of a few µs that no longer hides behind a long weight read, and dequantizing costs instructions — the
GEMV executes ~4.8 instructions per weight (a logical op, a subtract and an FMA, plus loads), so at full
HBM bandwidth it would need most of the SMs' issue slots. Section 6 prints what the H100 measured.

## 3. What AWQ protects

The output error a linear's rounding causes is `Σ_c x_c · δw_c`: the weights of input channels with large
activations matter more. AWQ multiplies those columns by `s_c = mean|x_c|^α` before rounding (their relative
error shrinks) and divides the activation by `s_c` — free, folded into the RMSNorm weight or the previous
linear. Here are the bundled model's activations on calibration text (training chapters, never the
held-out text):
""")
code(r"""
m = load_model("kjv-llama-18m", dtype="fp32")
fp = LinearLlama.from_loaded(m)
cal = m.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)
acts = calibration_inputs(fp, cal[:2048])
for (layer, name), x in acts.items():
    if layer in (0, 3):
        xm = x.abs().mean(0)
        top = (xm / xm.median()).topk(3).values
        print(f"layer {layer} {name:13s} mean|x| max/median {float(xm.max() / xm.median()):4.1f}  "
              f"top channels {[round(float(v), 1) for v in top]}")
""")
md(r"""
No channel is 10–100× the median here (large models trained on trillions of tokens grow such outlier
channels — the observation behind LLM.int8() and AWQ; this 18 M model trained on one book has none): the
scales AWQ can usefully apply are mild, and so is its gain. Searching α per
block (qkv and gate/up against their block's output, down against the MLP's output), then a clipping ratio
per group. `o_proj` keeps RTN: under grouped-query attention its scales would have to be tied across the
query heads of a KV head (AutoAWQ skips the pair too), and on this model both tied scales and clipping lowered
o_proj's calibration error yet raised the loss on other text (`scale_o=True` turns them on):
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
q_awq = solution.quantize(fp, cal, grid=10, search_tokens=1024)
alphas = q_awq.meta["awq_alpha"]
for name in ("qkv_proj", "gate_up_proj", "down_proj"):
    print(f"{name:13s} α per layer: {[alphas[f'layers.{i}.{name}'] for i in range(m.config.num_hidden_layers)]}")
print("clipped:", sorted({k.split('.')[-1] for k in q_awq.meta["awq_clipped"]}))
""")
code(r"""
x = acts[(3, "down_proj")][:1024]
wd = fp.linears[3]["down_proj"].dense()
s, alpha = solution.search_scale(wd, x, 128, grid=10)
err = lambda w_hat: float(((x.double() @ (w_hat.double() - wd.double()).t()) ** 2).mean())
rtn_err, awq_err = err(solution.fake_quant(wd, 128)), err(solution.fake_quant(wd * s, 128) / s)
print(f"layer 3 down_proj: α = {alpha}, output MSE RTN {rtn_err:.3e} -> AWQ scales {awq_err:.3e} "
      f"({100 * (1 - awq_err / rtn_err):.0f} % lower)")
hi = (x.abs().mean(0)).topk(5).indices
print("scales of the 5 most active channels:", [round(float(v), 2) for v in s[hi]], "| median scale", round(float(s.median()), 2))
""")
md(r"""
## 4. Accuracy: fp32, RTN, AWQ, GPTQ

Perplexity and top-1 next-token accuracy over held-out text (Colossians – Revelation, never trained on).
GPTQ rounds one column at a time and pushes each rounding error onto the columns not yet rounded
(Hessian `XᵀX` from the same calibration text).
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from phase5_quantization.bench import score
held = m.tokenizer.encode(HELDOUT.read_text(), add_special_tokens=False)[:2048]
models = {"fp32": fp, "RTN": framework.quantize(fp), "AWQ": q_awq, "GPTQ": gptq.quantize(fp, cal)}
for name, model in models.items():
    r = score(model, held, m.tokenizer.bos_id)
    print(f"{name:5s} perplexity {r['ppl']:7.3f}  top-1 {100 * r['acc']:5.2f} %  projections {model.linear_bytes() / 1e6:6.2f} MB")
""")
md(r"""
## 4b. A real model's 4 bits: llama.cpp's Q4_1 next to AutoAWQ's layout

SmolLM2-135M-Instruct reaches us as llama.cpp's Q4_1 (`make smollm2`). Both formats are asymmetric 4-bit
codes per group of one row's input features; they differ in what a group stores:

| | weights per group | per group | weight | bits per weight |
|---|---|---|---|---|
| llama.cpp Q4_1 (block) | 32 | fp16 scale `d`, fp16 min `m` | `d·q + m` | 4 + 2·16/32 = 5.0 |
| AutoAWQ GEMM, g128 | 128 | fp16 scale `s`, 4-bit zero `z` (8 per int32) | `s·(q − z)` | 4 + (16 + 4)/128 ≈ 4.16 |
| ours (`packing`), g128 | 128 | fp16 scale, uint8 zero | `s·(q − z)` | 4 + (16 + 8)/128 ≈ 4.19 |

`gguf_int4` maps a Q4_1 block to a group of 32 with `s = d`, `z = −m/d` and the codes unchanged. Our zero-points
are integers and `−m/d` is not, so the import keeps `z` as a float32 (5.5 bits per weight as held): exact
to fp32 rounding. Rounding `z` instead would move a whole block by up to `d/2` — the cell measures it.
The W4A16 kernels take groups of 128 with integer zero-points, and SmolLM2's 576 input features take no
group of 128 at all, so these layers run the dequantize + `F.linear` path.
""")
code(r"""
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize
from phase5_quantization.gguf_int4 import q4_1_weight
w = np.random.default_rng(0).normal(0, 0.02, (64, 256)).astype(np.float32)
blocks = gguf_quantize(w, T.Q4_1)  # llama.cpp's encoder: [64, 256/32 · 20] bytes
ref = torch.from_numpy(gguf_dequantize(blocks, T.Q4_1))
qw = q4_1_weight(blocks, w.shape)
print("Q4_1 bits/weight in the file:", 8 * blocks.nbytes / w.size, "| imported (float32 zeros):", 8 * qw.nbytes() / w.size)
print("import vs llama.cpp's d·q + m: max |diff|", float((qw.dequantize() - ref).abs().max()))
rounded = qw.zeros.round().clamp(0, 15).to(torch.uint8)
from phase5_quantization.packing import dequantize
err = (dequantize(qw.codes(), qw.scales, rounded, 32) - ref).abs().mean() / (torch.from_numpy(w) - ref).abs().mean()
print(f"integer zero-points instead: a further error {float(err):.2f}× Q4_1's own rounding error (mean |·|)")
""")
md(r"""
The SmolLM2 rows of `bench.py` (`smollm2_accuracy`; NOTES.md has the CPU figures) score the import and RTN / AWQ /
GPTQ re-quantized at group 32 against the dequantized-Q4_1 base: perplexity and top-1 agreement with the
base's argmax on the held-out text. The base is already 4-bit, so this measures re-quantization, not a distance
to the bf16 original. Downstream tasks need datasets from the Hugging Face hub, which this workbook does
not reach; online, EleutherAI's harness scores the original model (not run here):

```bash
pip install lm-eval
lm_eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct \
        --tasks hellaswag,arc_easy,piqa,winogrande,boolq --batch_size 16
```
""")
md(r"""
## 5. The kernel: dequantize in registers

`kernels/w4a16_rows.py` and `kernels/w4a16.py` never write a float weight. The codes are repacked once: each
output row's words stay contiguous (the decode GEMV streams whole rows in 16-byte loads, as phase 0's bf16
GEMV does), and code `j` of word `w` in group `g` holds input feature `128g + 16j + w`, so the activations a
thread's consecutive words multiply are consecutive too. A code becomes a float without an int→float
conversion (a quarter-rate instruction): OR it into the mantissa of 2²³ and subtract 2²³. Scale and
zero-point apply once per group: `Σ s·(q − z)·x = s·(Σ q·x − z·Σ x)`.
""")
code(r"""
q = torch.arange(16, dtype=torch.int32)
as_float = (q | 0x4B000000).view(torch.float32) - 2.0 ** 23
print("mantissa trick exact for every code:", torch.equal(as_float, q.float()))
from phase5_quantization.kernels import to_kernel_layout, w4a16_linear
qw = framework.quantize_weight(torch.randn(32, 256) * 0.05, 128)
kw = to_kernel_layout(qw)
x = torch.randn(1, 256)
y = w4a16_linear(x, kw)  # the row GEMV (M ≤ 8); more rows run the tensor-core GEMM
print("GEMV == x · dequant(W)ᵀ:", torch.allclose(y, x @ qw.dequantize().t(), atol=1e-4, rtol=1e-4))
""")
md(r"""
## 6. GPU figures (from the committed report)

`make check-phase5` on the H100 times the kernel against bf16 `F.linear` and torch's tinygemm
(`_weight_int4pack_mm`) at TinyLlama's shapes, and the INT4 engine's decode against phase 0's solution.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from pathlib import Path
reports = sorted(Path("../reports/phase5_quantization" if Path("../reports").is_dir() else "reports/phase5_quantization").glob("*.md"))
gpu = [p for p in reports if "cpu" not in p.name]
if not gpu:
    print("no GPU report committed yet: run `make check-phase5` on a GPU")
for p in gpu:
    text = p.read_text()
    start = text.find("## Targets")
    print(p.name, "\n", text[start:start + 1500])
""")
md(r"""
## 7. Profile and check

`make check-phase5` runs `bench.py` in one process and writes `reports/phase5_quantization/<device>.md`.
On a CPU P5.1 (accuracy) is measured and the GPU targets print SKIP with the reason.

## Your turn

Copy `solution.py` to `mine.py` and change one thing — plain scales `s = mean|x|^α` (`duo=False`; the
default is AutoAWQ's duo form `mean|x|^α / mean|ŵ|^(1−α)`), a finer α grid, `scale_o=True` — then `make check-phase5 IMPL=phase5_quantization.mine`: P5.1
compares your quantizer with RTN on the held-out text. For the kernel, try `config=` overrides of
`w4a16_linear` on a GPU and read the SASS instruction mix (`cuobjdump -sass`).
""")

nb.write(Path(__file__).resolve().parents[1])
