"""What each decode-step change buys, on random:tinyllama bf16 (prompt 512, 128 new tokens), one GPU run.

Variants of the Triton decode step (``kernels/step.py``), each captured in a CUDA graph: programmatic
dependent launch off (``dev.pdl_off``), GEMV tiles per projection (the best of ``gpu_gemv_ops.py``'s ranking,
``--ops``), and, as a diagnostic, the step with its attention replaced by a view of q (what attention +
merge cost). For each: decode ms/token through ``generate`` (host loop included), the graph replay alone,
MBU, and agreement of the first 16 greedy tokens with the eager PyTorch step. Figures: ``NOTES.md``.

Usage (repo root, GPU):
    PYTHONPATH=$PWD python3 phase0_prototype/scripts/gpu_pdl_variants.py [--ops p0ops.json]
"""

import argparse
import contextlib
import json
import os
import time
import traceback

import torch

from module0_profiling.hardware import measured_peaks
from phase0_prototype import bench, load_impl, load_model
from phase0_prototype.dev import pdl_off
from phase0_prototype.kernels import gemv
from phase0_prototype.kernels import step as step_module
from phase0_prototype.weights import decode_bytes_per_token

T0 = time.time()
DEFAULT_CONFIG = gemv.default_config


def log(*a):
    print(f"[{time.time() - T0:5.0f}s]", *a, flush=True)


@torch.inference_mode()
def replay_us(engine):
    """(min, max) over 3 samples of the mean µs per replay of the step's graph, 100 back to back."""
    t = bench.decode_replay(engine, 576)
    return t.best * 1e6, max(t.samples) * 1e6


peak = measured_peaks().copy_gbps
log(f"{torch.cuda.get_device_name()} copy {peak:.0f} GB/s, torch {torch.__version__}")
model = load_model("random:tinyllama", dtype="bf16", device="cuda")
prompt = bench.random_prompt(512, 32000, "cuda")
bpt = decode_bytes_per_token(model.config, model.dtype, 512 + 64)
eager = load_impl("solution").build(model, max_seq_len=640, compile=False)
ref = eager.generate(prompt, 16, stop_on_eos=False).tokens
# Each variant: name and what it changes (PDL, GEMV tiles, and — a diagnostic, wrong tokens — the attention
# replaced by a view of q, to see what attention and merge cost inside the step).
BASE = dict(pdl=True, config=DEFAULT_CONFIG, skip_attention=False)
VARIANTS = [
    ("default", {}),
    ("PDL off", dict(pdl=False)),
    ("diagnostic: no attention", dict(skip_attention=True)),
]


def per_op(choice):
    """Batch-1 tiles per projection (``choice``: qkv / o / gate_up / down -> config), defaults elsewhere."""
    def config(n, k, batch, sw, norm=False):
        if batch == 1 and n < 16384:
            op = "gate_up" if sw else "down" if k > 4096 else "qkv" if norm else "o"
            if op in choice:
                return tuple(choice[op])
        return DEFAULT_CONFIG(n, k, batch, sw, norm)
    return config


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--ops", help="gpu_gemv_ops.py's --out: each projection's configs, best first")
OPS = parser.parse_args().ops
if OPS and os.path.exists(OPS):  # (absent until gpu_gemv_ops.py has run)
    with open(OPS) as f:
        ranked = json.load(f)
    best1 = {op: v[0][1] for op, v in ranked.items()}
    best2 = {op: v[min(1, len(v) - 1)][1] for op, v in ranked.items()}
    log(f"best per projection: {best1}; second: {best2}")
    VARIANTS += [("best per projection", dict(config=per_op(best1))),
                 ("second best per projection", dict(config=per_op(best2)))]
    VARIANTS += [(f"best per projection, {op} default",
                  dict(config=per_op({o: c for o, c in best1.items() if o != op}))) for op in best1]
    VARIANTS += [("diagnostic: no attention, best per projection",
                  dict(config=per_op(best1), skip_attention=True))]
VARIANTS += [("default again (drift)", {})]
real_attention = step_module.rope_cache_attention


def no_attention(qkv, k_cache, v_cache, cos, sin, positions, n_heads, rope=True):
    return qkv[:, : n_heads * k_cache.shape[-1]]


best = None
for name, changes in VARIANTS:
    v = dict(BASE, **changes)
    gemv.default_config = v["config"]
    step_module.rope_cache_attention = no_attention if v["skip_attention"] else real_attention
    try:
        with pdl_off() if not v["pdl"] else contextlib.nullcontext():
            e = load_impl("solution").build(model, max_seq_len=640, compile=True)
            e.warmup()  # the kernels compile and the graph captures (PDL or not) here
        agree = (e.generate(prompt, 16, stop_on_eos=False).tokens == ref).float().mean().item()
        fig = bench.measure_generate(lambda k, e=e: e.generate(prompt, k, stop_on_eos=False), 128, 5)
        lo, hi = replay_us(e)
        mbu = 100 * bpt * fig["decode_tok_s"] / 1e9 / peak
        log(f"{name:38s}: decode {fig['decode_s_per_token'] * 1e3:.3f} ms MBU {mbu:.1f} %; "
            f"replay {lo:.0f}-{hi:.0f} us = MBU {100 * bpt / lo / 1e3 / peak:.1f} %; agree16 {agree:.2f}")
        if (best is None or mbu > best[0]) and not v["skip_attention"]:
            best = (mbu, name)
        del e
    except Exception:
        log(f"{name}: FAILED\n{traceback.format_exc()[-2500:]}")
    torch.cuda.empty_cache()
log(f"best: {best}")
log("done")
