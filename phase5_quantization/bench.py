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
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from module0_profiling.hardware import detect_device
from module0_profiling.targets import BenchResult
from phase0_prototype.evaluate import evaluate_ids
from phase0_prototype.sources import load_model

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration_kjv.txt"
HELDOUT = HERE.parent / "models" / "kjv-llama-18m" / "heldout.txt"
MODEL = "kjv-llama-18m"
GPTQ = "phase5_quantization.gptq"
SIZES = {"small": dict(eval_tokens=4096), "full": dict(eval_tokens=32768)}
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
    if size == "full":
        from phase5_quantization.bench_speed import decode_speed, kernel_speed

        kernel_speed(res)
        decode_speed(res)
        res.context.update(speed_model="random:tinyllama bf16", decode="bs=1, prompt 512, 128 new tokens")
    else:
        why = ("needs a CUDA GPU (TinyLlama shapes)" if not on_gpu
               else "SIZE=small: the speed targets are defined at TinyLlama shapes (SIZE=full)")
        for metric in SPEED_METRICS:
            res.skip(metric, why)
    return res
