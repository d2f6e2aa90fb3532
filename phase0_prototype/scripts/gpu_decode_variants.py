"""The inductor decode step's variants (``dev.InductorStepEngine``: projections as reductions or cuBLAS, with
or without coordinate-descent tuning) on random:tinyllama bf16 (prompt 512, 128 new), printing as it goes.

Usage (repo root, GPU): PYTHONPATH=$PWD python3 phase0_prototype/scripts/gpu_decode_variants.py
"""

import time
import traceback

import torch

from module0_profiling.hardware import measured_peaks
from phase0_prototype import bench, hf_peer, load_impl, load_model
from phase0_prototype.dev import InductorStepEngine
from phase0_prototype.weights import decode_bytes_per_token


def log(*a):
    print(*a, flush=True)


t0 = time.time()
from phase0_prototype.cuda_basics.measure import measure  # noqa: E402

f = measure(4096)
log(f"CUDA basics: tiled/naive {f['tiled_vs_naive']:.2f}x  "
    f"coalesced/strided {f['coalesced_vs_strided']:.2f}x")
log(f["table"])
log(f["notes"][0])
peak = measured_peaks().copy_gbps

model = load_model("random:tinyllama", dtype="bf16", device="cuda")
prompt = bench.random_prompt(512, 32000, "cuda")
bpt = decode_bytes_per_token(model.config, model.dtype, 512 + 64)
eager = load_impl("solution").build(model, max_seq_len=640, compile=False)
ref = eager.generate(prompt, 16, stop_on_eos=False).tokens
variants = [("reduction+tune", dict(reduction=True, tune=True)), ("reduction", dict(reduction=True)),
            ("cublas+tune", dict(reduction=False, tune=True))]
for name, opts in variants:
    try:
        t = time.time()
        e = InductorStepEngine(model, max_seq_len=640, compile=True, **opts)
        e.warmup()
        compile_s = time.time() - t
        agree = (e.generate(prompt, 16, stop_on_eos=False).tokens == ref).float().mean().item()
        fig = bench.measure_generate(lambda k, e=e: e.generate(prompt, k, stop_on_eos=False), 128, 3)
        log(f"{name}: compile {compile_s:.0f}s decode {fig['decode_tok_s']:.1f} tok/s "
            f"MBU {100 * bpt * fig['decode_tok_s'] / 1e9 / peak:.1f}% e2e {fig['e2e_tok_s']:.1f} tok/s "
            f"agree16 {agree:.2f} [t={time.time() - t0:.0f}s]")
        del e
    except Exception:
        log(f"{name}: FAILED\n{traceback.format_exc()[-1500:]}")
    if name == "reduction":
        try:  # P0.1 for the reduction path: fp32 greedy vs HF
            m32 = load_model("random:tinyllama", dtype="fp32", device="cuda", seed=1)
            p32 = bench.random_prompt(32, 32000, "cuda", seed=1)
            exp = hf_peer.hf_generate(hf_peer.build_hf(m32), p32, 64)[0].cpu()
            e32 = InductorStepEngine(m32, max_seq_len=96, compile=True)
            got = e32.generate(p32, 64, stop_on_eos=False).tokens[0]
            log(f"fp32 reduction compiled vs HF: {int((got == exp).sum())}/64 equal; "
                f"identical={torch.equal(got, exp)} [t={time.time() - t0:.0f}s]")
            del e32, m32
        except Exception:
            log(f"fp32 parity FAILED\n{traceback.format_exc()[-1500:]}")
