"""What each decode-step change buys, on random:tinyllama bf16 (prompt 512, 128 new tokens), one GPU run.

Variants of the Triton decode step (kernels/step.py), each captured in a CUDA graph:
programmatic dependent launch on/off (``TITANINFER_PDL``), attention on CUDA cores or tensor cores
(``decode_attention.USE_DOT``), attention split length, and GEMV tile configs.
(An earlier run of this script also tried merging the attention splits inside the attention kernel — the
last program to finish merges, found with an atomic counter — instead of a second kernel: it saved the
launch but serialised the merge behind the slowest split, 1217 vs 1207 µs per step at 32 positions per
split, and fewer, longer splits were slower still (1323 µs at 64, 1503 µs at 128), so it was dropped.) For each: decode
tok/s through ``generate`` (host loop included; the greedy tail inside the graph or, in one variant, launched
from the host after each replay), the graph replay alone, MBU, and agreement of the first 16
greedy tokens with the eager PyTorch step.

Usage (repo root, GPU): PYTHONPATH=$PWD python3 phase0_prototype/scripts/gpu_pdl_variants.py
"""

import os
import time
import traceback

import torch

from module0_profiling.hardware import measured_peaks
from phase0_prototype import bench, load_impl, load_model
from phase0_prototype.kernels import decode_attention, gemv
from phase0_prototype.weights import decode_bytes_per_token

T0 = time.time()
DEFAULT_CONFIG = gemv.default_config


def ORIGINAL_CONFIG(n, k, batch, swiglu, norm=False):
    """The first sweep's tiles (before PDL)."""
    if n >= 16384 or batch > 1:
        return DEFAULT_CONFIG(n, k, batch, swiglu, norm)
    return (8, 256, 4) if swiglu else (8, 1024, 8) if norm else (2, 1024, 4)


def log(*a):
    print(f"[{time.time() - T0:5.0f}s]", *a, flush=True)


@torch.inference_mode()
def replay_us(engine, reps=100, trials=3):
    """(min, max) over ``trials`` of the mean µs per replay of the step's graph, ``reps`` back to back."""
    g = engine._graph_for(1)
    graph = g.graph
    g.position_in.fill_(576)  # each replay advances it (saturating at the cache's last slot)
    graph.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    got = []
    for _ in range(trials):
        a.record()
        for _ in range(reps):
            graph.replay()
        b.record()
        torch.cuda.synchronize()
        got.append(a.elapsed_time(b) * 1e3 / reps)
    return min(got), max(got)


peak = measured_peaks().copy_gbps
log(f"{torch.cuda.get_device_name()} copy {peak:.0f} GB/s, torch {torch.__version__}")
model = load_model("random:tinyllama", dtype="bf16", device="cuda")
prompt = bench.random_prompt(512, 32000, "cuda")
bpt = decode_bytes_per_token(model.config, model.dtype, 512 + 64)
ref = load_impl("solution").build(model, max_seq_len=640, compile=False).generate(prompt, 16, stop_on_eos=False).tokens
# name, PDL, attention positions per loop step (= per split at this length), GEMV configs, tensor-core attention
# ... and whether the greedy tail (argmax, EOS, feedback, position) runs inside the graph or from the host
VARIANTS = [
    ("first sweep's tiles, no PDL", "0", 32, ORIGINAL_CONFIG, False, True),
    ("default tiles + PDL", "1", 32, DEFAULT_CONFIG, False, True),
    ("+ tensor-core attention, tail on host", "1", 32, DEFAULT_CONFIG, True, False),
    ("+ tensor-core attention", "1", 32, DEFAULT_CONFIG, True, True),
    ("+ tensor-core attention 16/split", "1", 16, DEFAULT_CONFIG, True, True),
    ("+ tensor-core attention 64/split", "1", 64, DEFAULT_CONFIG, True, True),
    ("+ tensor-core attention 128/split", "1", 128, DEFAULT_CONFIG, True, True),
]
best = None
for name, pdl, block_s, config, use_dot, graph_tail in VARIANTS:
    os.environ["TITANINFER_PDL"] = pdl
    decode_attention.USE_DOT = use_dot
    decode_attention.BLOCK_S = block_s
    gemv.default_config = config
    try:
        e = load_impl("solution").build(model, max_seq_len=640, compile=True, decode_kernels="triton",
                                        graph_tail=graph_tail)
        e.warmup()
        agree = (e.generate(prompt, 16, stop_on_eos=False).tokens == ref).float().mean().item()
        fig = bench.measure_generate(lambda k, e=e: e.generate(prompt, k, stop_on_eos=False), 128, 5)
        lo, hi = replay_us(e)
        mbu = 100 * bpt * fig["decode_tok_s"] / 1e9 / peak
        log(f"{name:28s}: decode {fig['decode_s_per_token'] * 1e3:.3f} ms MBU {mbu:.1f} %; replay {lo:.0f}-{hi:.0f} us "
            f"= MBU {100 * bpt / lo / 1e3 / peak:.1f} %; agree16 {agree:.2f}")
        if best is None or mbu > best[0]:
            best = (mbu, name)
        del e
    except Exception:
        log(f"{name}: FAILED\n{traceback.format_exc()[-2500:]}")
    torch.cuda.empty_cache()
log(f"best: {best}")
log("done")
