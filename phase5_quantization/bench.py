"""Phase 5 measurements: accuracy of fp32 / RTN / AWQ / GPTQ on held-out text (P5.1); kernel and decode
speed (P5.2, P5.3) need a GPU and the Triton W4A16 kernel, which is not built yet: SKIP with the reason.

Accuracy: perplexity and top-1 next-token accuracy of the bundled kjv-llama-18m (fp32 activations) over the
first ``eval_tokens`` tokens of ``models/kjv-llama-18m/heldout.txt`` (Colossians–Revelation, never trained
on), windows of 256 with ``<s>``, through ``phase0_prototype.evaluate``. Calibration (AWQ, GPTQ): Genesis 1–5
(``calibration_genesis_1_5.txt``, made with ``bible -f "Gen1:1-Ge5:32"``, cleaned like the training corpus):
part of the *training* text, so no held-out token is seen while quantizing.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from module0_profiling.targets import BenchResult
from phase0_prototype.evaluate import evaluate_ids
from phase0_prototype.sources import load_model

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration_genesis_1_5.txt"
HELDOUT = HERE.parent / "models" / "kjv-llama-18m" / "heldout.txt"


def accuracy_table(eval_tokens: int = 8192, model_spec: str = "kjv-llama-18m",
                   search_tokens: int = 2048) -> dict[str, dict[str, float]]:
    """``{method: {"ppl", "acc", "quant_s", "linear_bytes"}}`` for fp32, rtn, awq, gptq."""
    from phase5_quantization import framework, gptq, solution
    from phase5_quantization.model import LinearLlama

    m = load_model(model_spec, dtype="fp32")
    cal = m.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)
    held = m.tokenizer.encode(HELDOUT.read_text(), add_special_tokens=False)[:eval_tokens]
    fp = LinearLlama.from_loaded(m)
    rows = {}
    awq = lambda model, ids: solution.quantize(model, ids, search_tokens=search_tokens)  # noqa: E731
    for name, fn in (("fp32", None), ("rtn", framework.quantize), ("awq", awq), ("gptq", gptq.quantize)):
        t0 = time.perf_counter()
        qm = fp if fn is None else fn(fp, cal)
        quant_s = time.perf_counter() - t0
        r = evaluate_ids(qm.forward_logits, held, window=256, bos_id=m.tokenizer.bos_id)
        rows[name] = {"ppl": r.perplexity, "acc": r.accuracy, "quant_s": quant_s,
                      "linear_bytes": float(qm.linear_bytes()), "tokens": float(r.scored_tokens)}
    return rows


def run(impl: str = "solution", size: str = "small") -> BenchResult:
    res = BenchResult()
    # small: 4 k held-out tokens and 1 k AWQ search tokens (~1 min on 2 cores); full: 32 k tokens
    rows = accuracy_table(4096, search_tokens=1024) if size == "small" else accuracy_table(32768)
    fp, rtn, awq = rows["fp32"], rows["rtn"], rows["awq"]
    res.metrics["p5_1_awq_top1_drop_rel"] = (fp["acc"] - awq["acc"]) / fp["acc"]
    res.metrics["p5_1_awq_ppl_over_rtn"] = awq["ppl"] / rtn["ppl"]
    try:
        import awq  # noqa: F401

        res.skip("p5_1_awq_ppl_over_autoawq", "autoawq imports but running it on our model is not wired up yet")
    except ImportError:
        res.skip("p5_1_awq_ppl_over_autoawq", "autoawq is not installed (pip install autoawq, needs CUDA)")
    reason = ("needs a CUDA GPU" if not torch.cuda.is_available()
              else "the Triton W4A16 kernel (kernels/w4a16.py) is not built yet")
    for metric in ("p5_2_kernel_vs_linear_m1", "p5_2_kernel_vs_linear_m16", "p5_2_kernel_vs_int4pack"):
        res.skip(metric, reason)
    res.skip("p5_3_decode_speedup", reason)
    res.metrics["p5_3_weight_memory_ratio"] = rows["fp32"]["linear_bytes"] / 2 / awq["linear_bytes"]  # vs bf16
    lines = ["| model | perplexity | top-1 accuracy | quantize (s) | projection bytes |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ppl']:.3f} | {100 * r['acc']:.2f} % | {r['quant_s']:.1f} | {r['linear_bytes'] / 1e6:.2f} MB |")
    res.tables["Accuracy on held-out text (kjv-llama-18m)"] = "\n".join(lines)
    res.context.update(model="kjv-llama-18m fp32", eval_tokens=int(fp["tokens"]), group_size=128,
                       calibration="Genesis 1–5 (training text)")
    return res
