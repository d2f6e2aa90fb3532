"""Phase 5 measurements: accuracy of fp32 / RTN / AWQ / GPTQ (P5.1), the W4A16 kernel (P5.2) and INT4 decode
(P5.3).

Accuracy (CPU or GPU): perplexity and top-1 next-token accuracy of the bundled kjv-llama-18m (fp32
activations) over the first ``eval_tokens`` tokens of ``models/kjv-llama-18m/heldout.txt`` (Colossians –
Revelation, never trained on), windows of 256 with ``<s>``, through ``phase0_prototype.evaluate``. Calibration
for AWQ and GPTQ: ``calibration_kjv.txt`` — every 40th chapter of the model's *training* text
(``scripts/make_calibration.py``), 28 chapters, ~22 k tokens; no held-out token is seen while quantizing.
``impl`` picks the quantizer under test (``solution`` = AWQ, ``framework`` = RTN,
``phase5_quantization.gptq``, or a module path); P5.1 compares it with RTN and fp32.
The AutoAWQ peer (P5.1b) runs when ``autoawq`` imports (GPU): its checkpoint is read back through our AutoAWQ
importer and scored by the same evaluation.

``size="small"``: 4 k held-out tokens, speed targets SKIP (no GPU); ``size="full"`` (GPU): 32 k tokens, plus
``bench_speed`` — P5.2 at TinyLlama's shapes and P5.3 on random:tinyllama.

SmolLM2-135M-Instruct (``smollm2_accuracy``, a table, no target): its base is llama.cpp's Q4_1 file dequantized
(already 4-bit); beside it the Q4_1 blocks imported as INT4 (``gguf_int4``) and RTN / AWQ / GPTQ re-quantized
from that base at group 32 (576 input features take no group of 128), scored on the same held-out text by
perplexity and top-1 agreement with the base's argmax. ``size="full"`` fetches the file (~98 MB; a note if it
cannot) and runs every row; ``small`` never fetches: with the file cached it runs the base and the import over
1 k tokens, else a note.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from module0_profiling.hardware import detect_device
from module0_profiling.targets import BenchResult
from module0_profiling.trace import ncu_section
from phase0_prototype.evaluate import evaluate_ids
from phase0_prototype.sources import load_model

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration_kjv.txt"
HELDOUT = HERE.parent / "models" / "kjv-llama-18m" / "heldout.txt"
MODEL = "kjv-llama-18m"
GPTQ = "phase5_quantization.gptq"
SIZES = {"small": dict(eval_tokens=4096), "full": dict(eval_tokens=32768)}
SMOLLM2 = {"small": dict(eval_tokens=1024, methods=()), "full": dict(eval_tokens=8192, methods=("rtn", "awq", "gptq"))}
SMOLLM2_GROUP = 32  # llama.cpp's Q4_1 block; SmolLM2's hidden size 576 is not a multiple of 128
SPEED_METRICS = ("p5_2_kernel_vs_linear_m1", "p5_2_kernel_vs_linear_m16", "p5_2_kernel_vs_int4pack",
                 "p5_3_decode_speedup", "p5_3_weight_memory_ratio")


def accuracy_table(impl: str = "solution", eval_tokens: int = 4096,
                   device: str = "cpu") -> dict[str, dict[str, float]]:
    """``{name: {"ppl", "acc", "quant_s", "linear_bytes", "tokens"}}`` for fp32, rtn, awq, gptq (and
    ``impl``)."""
    from phase5_quantization import load_impl
    from phase5_quantization.model import LinearLlama

    m = load_model(MODEL, dtype="fp32", device=device)
    cal = m.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)
    held = m.tokenizer.encode(HELDOUT.read_text(), add_special_tokens=False)[:eval_tokens]
    fp = LinearLlama.from_loaded(m)
    methods = {"fp32": None, "rtn": "framework", "awq": "solution", "gptq": GPTQ}
    if impl not in methods.values():
        methods[impl] = impl
    rows = {}
    for name, module in methods.items():
        t0 = time.perf_counter()
        qm = fp if module is None else load_impl(module).quantize(fp, None if module == "framework" else cal)
        quant_s = time.perf_counter() - t0
        rows[name] = score(qm, held, m.tokenizer.bos_id)
        rows[name].update(quant_s=quant_s, linear_bytes=float(qm.linear_bytes()))
    return rows


def score(model, held: list[int], bos_id: int) -> dict[str, float]:
    r = evaluate_ids(model.forward_logits, held, window=256, bos_id=bos_id, device=model.embed_tokens.device)
    return {"ppl": r.perplexity, "acc": r.accuracy, "tokens": float(r.scored_tokens)}


def smollm2_accuracy(eval_tokens: int = 8192, device: str = "cpu", methods: tuple = ("rtn", "awq", "gptq"),
                     window: int = 256) -> dict[str, dict[str, float]]:
    """``{row: {"ppl", "acc", "agree", "bits", "quant_s", "tokens"}}`` of SmolLM2 (module docstring) over the
    first ``eval_tokens`` held-out tokens in disjoint windows of ``window`` (no BOS: SmolLM2 is trained without
    one); the INT4 models run as served (``QuantLinear``)."""
    from phase0_prototype.gguf_model import fetch_smollm2
    from phase5_quantization import load_impl
    from phase5_quantization.gguf_int4 import load_gguf_int4
    from phase5_quantization.integration import METHODS
    from phase5_quantization.model import LinearLlama

    model, imported = load_gguf_int4(fetch_smollm2(), device=device)
    base = LinearLlama.from_loaded(model)
    held = model.tokenizer.encode(HELDOUT.read_text(), add_special_tokens=False)[:eval_tokens]
    windows = torch.tensor(held[:len(held) // window * window], device=device).view(-1, window)
    reference = [base.forward_logits(w[None])[0, :-1].argmax(-1) for w in windows]

    def scored(q, quant_s: float) -> dict[str, float]:
        nll = correct = agree = 0.0
        for w, ref in zip(windows, reference, strict=True):
            logits = q.forward_logits(w[None])[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits.double(), w[1:], reduction="sum"))
            correct += float((logits.argmax(-1) == w[1:]).sum())
            agree += float((logits.argmax(-1) == ref).sum())
        n = windows.numel() - len(windows)
        weights = sum(lin.shape[0] * lin.shape[1] for layer in q.linears for lin in layer.values())
        return {"ppl": math.exp(nll / n), "acc": correct / n, "agree": agree / n, "tokens": float(n),
                "bits": 8 * q.linear_bytes() / weights, "quant_s": quant_s}

    rows = {"base: Q4_1 dequantized (fp32)": scored(base, math.nan),
            "Q4_1 blocks imported as INT4 (g32, float zero-points)": scored(imported, math.nan)}
    cal = model.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)
    for name in methods:
        t0 = time.perf_counter()
        q = load_impl(METHODS[name]).quantize(base, None if name == "rtn" else cal, group_size=SMOLLM2_GROUP)
        rows[f"{name.upper()} g{SMOLLM2_GROUP} from the base"] = scored(q, time.perf_counter() - t0)
    return rows


def smollm2_section(res: BenchResult, size: str, device: str) -> None:
    """The SmolLM2 table in ``res`` (module docstring), or a note saying why it is not there."""
    from phase0_prototype.errors import ModelError
    from phase0_prototype.gguf_model import DEFAULT_CACHE, SMOLLM2_FILE, fetch_smollm2

    if size == "small" and not (DEFAULT_CACHE.expanduser() / SMOLLM2_FILE).is_file():
        res.context.update(smollm2="SKIP: SIZE=small never fetches SmolLM2 (~98 MB); SIZE=full does, or "
                                   "fetch it once with make smollm2")
        return
    try:
        fetch_smollm2()
    except ModelError as e:  # e.g. a GPU machine with no network: copy the cached file there
        res.context.update(smollm2=f"SKIP: {e}")
        return
    rows = smollm2_accuracy(SMOLLM2[size]["eval_tokens"], device, SMOLLM2[size]["methods"])
    lines = ["| SmolLM2-135M-Instruct (the base is already 4-bit) | bits / projection weight | perplexity | "
             "top-1 agreement with the base | top-1 accuracy | quantize (s) |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        q_s = "—" if math.isnan(r["quant_s"]) else f"{r['quant_s']:.1f}"
        bits = "32 (fp32)" if name.startswith("base") else f"{r['bits']:.2f}"
        lines.append(f"| {name} | {bits} | {r['ppl']:.3f} | {100 * r['agree']:.2f} % | {100 * r['acc']:.2f} % | {q_s} |")
    tokens = int(next(iter(rows.values()))["tokens"])
    res.tables[f"SmolLM2 against its dequantized-Q4_1 base ({tokens} held-out tokens, {device})"] = "\n".join(lines)
    if size == "small":
        res.context.update(smollm2="SIZE=small: base and Q4_1 import only; RTN/AWQ/GPTQ rows run with SIZE=full")


def autoawq_ppl(held: list[int], device: str) -> float:
    """AutoAWQ on the bundled model with our calibration text, scored by our evaluation."""
    from phase5_quantization.awq_checkpoint import from_awq_tensors
    from phase5_quantization.peers import autoawq_state

    m = load_model(MODEL, dtype="fp32", device="cpu")
    tensors = autoawq_state(m.path, CALIBRATION.read_text())
    q = from_awq_tensors(tensors, m.config).to(device, torch.float32)
    return score(q, held, m.tokenizer.bos_id)["ppl"]


def run(impl: str = "solution", size: str = "small") -> BenchResult:
    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}: choose small or full")
    dev_info = detect_device()
    on_gpu = dev_info.is_cuda
    if size == "full" and not on_gpu:
        raise SystemExit("SIZE=full needs a CUDA GPU (P5.2/P5.3 at TinyLlama shapes); use SIZE=small on a CPU")
    device = "cuda" if on_gpu else "cpu"
    res = BenchResult()
    rows = accuracy_table(impl, SIZES[size]["eval_tokens"], device)
    under_test = rows[{"solution": "awq", "framework": "rtn", GPTQ: "gptq"}.get(impl, impl)]
    fp, rtn = rows["fp32"], rows["rtn"]
    res.metrics["p5_1_awq_top1_drop_rel"] = (fp["acc"] - under_test["acc"]) / fp["acc"]
    res.metrics["p5_1_awq_ppl_over_rtn"] = under_test["ppl"] / rtn["ppl"]
    from phase5_quantization.peers import autoawq_reason

    reason = autoawq_reason(size)
    if reason is None:
        held = load_model(MODEL).tokenizer.encode(HELDOUT.read_text(),
                                                  add_special_tokens=False)[:SIZES[size]["eval_tokens"]]
        try:  # a third-party package on whatever torch/transformers is installed: its failure is a SKIP, not a crash
            peer = autoawq_ppl(held, device)
        except Exception as e:  # noqa: BLE001
            reason = f"AutoAWQ failed here: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        else:
            res.metrics["p5_1_awq_ppl_over_autoawq"] = under_test["ppl"] / peer
            rows["AutoAWQ (peer)"] = {"ppl": peer, "acc": math.nan, "quant_s": math.nan, "linear_bytes": math.nan,
                                      "tokens": under_test["tokens"]}
    if reason is not None:
        res.skip("p5_1_awq_ppl_over_autoawq", reason)
    lines = ["| model | perplexity | top-1 accuracy | quantize (s) | projection bytes |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        acc = "—" if math.isnan(r["acc"]) else f"{100 * r['acc']:.2f} %"
        q_s = "—" if math.isnan(r["quant_s"]) else f"{r['quant_s']:.1f}"
        mb = "—" if math.isnan(r["linear_bytes"]) else f"{r['linear_bytes'] / 1e6:.2f} MB"
        lines.append(f"| {name} | {r['ppl']:.3f} | {acc} | {q_s} | {mb} |")
    res.tables[f"Accuracy on held-out text ({MODEL}, {int(fp['tokens'])} tokens, {device})"] = "\n".join(lines)
    res.context.update(model=f"{MODEL} fp32 (accuracy)", eval_tokens=int(fp["tokens"]), group_size=128,
                       calibration="calibration_kjv.txt (28 chapters of the training text)", impl=impl,
                       device=dev_info.name)
    smollm2_section(res, size, device)
    if size == "full":
        from phase5_quantization.bench_speed import decode_speed, kernel_speed

        kernel_speed(res)
        decode_speed(res)
        ncu_section(res, NCU_SNIPPET, launch_count=8)
        res.context.update(speed_model="random:tinyllama bf16", decode="bs=1, prompt 512, 128 new tokens")
    else:
        why = ("needs a CUDA GPU (TinyLlama shapes)" if not on_gpu
               else "SIZE=small: the speed targets are defined at TinyLlama shapes (SIZE=full)")
        for metric in SPEED_METRICS:
            res.skip(metric, why)
        res.ncu_reason = f"ncu profiles the W4A16 and bf16 products at TinyLlama's MLP shape: {why}"
    return res


NCU_SNIPPET = """
import torch
from phase5_quantization.bench_speed import _random_int4
from phase5_quantization.kernels import to_kernel_layout, w4a16_linear
k, n = 2048, 5632  # TinyLlama's MLP up-projection
kw = to_kernel_layout(_random_int4(n, k, 0))
w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for m in (1, 16)]
for x in xs:
    w4a16_linear(x, kw); torch.nn.functional.linear(x, w)
torch.cuda.synchronize()
with torch.cuda.nvtx.range("titaninfer"):  # W4A16 then bf16 at M = 1, then at M = 16: DRAM bytes side by side
    for x in xs:
        w4a16_linear(x, kw); torch.nn.functional.linear(x, w)
torch.cuda.synchronize()
"""
