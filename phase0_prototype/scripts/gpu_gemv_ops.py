"""Where the decode step's time goes, projection by projection: each GEMV of TinyLlama's 22 layers in turn.

For each projection (qkv with its RMSNorm, o with its residual, gate_up with RMSNorm + SwiGLU, down with its
residual) and each tile config, one CUDA graph launches that projection once per layer (22 different weights,
so nothing stays in L2) and is replayed; µs per launch against the bytes it must read give its share of copy
bandwidth. Then the four projections in step order (no attention), the whole chain a decode step runs. What
the chain loses against the sum of its parts is what the boundaries between kernels cost. Everything runs
with programmatic dependent launch and again without (``dev.pdl_off``). ``--out``: each projection's configs
ranked, best first (``gpu_pdl_variants.py --ops`` then runs the best together).

Usage (repo root, GPU): PYTHONPATH=$PWD python3 phase0_prototype/scripts/gpu_gemv_ops.py [--out p0ops.json]
"""

import argparse
import contextlib
import json

import torch

from module0_profiling.hardware import measured_peaks
from phase0_prototype import bench, load_impl, load_model
from phase0_prototype.dev import pdl_off
from phase0_prototype.kernels import gemv


@torch.inference_mode()
def main(out_path: str | None):
    peak = measured_peaks().copy_gbps
    print(f"{torch.cuda.get_device_name()} copy {peak:.0f} GB/s", flush=True)
    model = load_model("random:tinyllama", dtype="bf16", device="cuda")
    e = load_impl("solution").build(model, max_seq_len=640, compile=False)
    layers = e.weights.layers
    cfg = e.config
    x, attn, act, res = (bench.step_inputs(cfg, "cuda")[k] for k in ("x", "attn", "act", "res"))
    ops = {
        "qkv": (lambda w, c: gemv.fused_gemv(x, w.qkv_proj, norm_weight=w.input_norm, eps=1e-5, config=c),
                lambda w: w.qkv_proj),
        "o": (lambda w, c: gemv.fused_gemv(attn, w.o_proj, residual=res, out=res, config=c),
              lambda w: w.o_proj),
        "gate_up": (lambda w, c: gemv.fused_gemv(x, w.gate_up_proj, norm_weight=w.post_norm, eps=1e-5,
                                                 swiglu=True, config=c), lambda w: w.gate_up_proj),
        "down": (lambda w, c: gemv.fused_gemv(act, w.down_proj, residual=res, out=res, config=c),
                 lambda w: w.down_proj),
    }
    configs = {  # None = gemv.default_config
        "qkv": [None, (4, 2048, 8), (1, 2048, 4), (8, 2048, 8)],
        "o": [None, (2, 2048, 4), (4, 2048, 8), (16, 2048, 8), (16, 2048, 16)],
        "gate_up": [None, (2, 2048, 8), (2, 2048, 4), (1, 1024, 4)],
        "down": [None, (2, 2048, 4), (8, 1024, 8), (8, 2048, 8)],
    }
    best: dict[str, list] = {}
    total = sum(sum(f(w).numel() * 2 for w in layers) for f in (o[1] for o in ops.values()))

    def chain(choice):
        def run():
            for w in layers:
                for name, (call, _) in ops.items():
                    call(w, choice.get(name))
        return run

    def measure(pdl):
        for name, (call, weight) in ops.items():
            nbytes = sum(weight(w).numel() * 2 for w in layers) / len(layers)
            for c in configs[name] if pdl == "1" else configs[name][:1]:
                try:
                    us = bench.graph_us(lambda: [call(w, c) for w in layers])  # noqa: B023 (timed at once)
                    us /= len(layers)
                    rows, k = weight(layers[0]).shape
                    shown = c or gemv.default_config(rows // (2 if name == "gate_up" else 1), k, 1,
                                                     name == "gate_up", name in ("qkv", "gate_up"))
                    gbps = nbytes / us / 1e3
                    mark = " (default)" if c is None else " " * 10
                    print(f"PDL={pdl} {name:8s} {str(shown):18s}{mark}: "
                          f"{us:6.2f} us  {gbps:6.0f} GB/s = {100 * gbps / peak:5.1f} % copy", flush=True)
                    if pdl == "1":
                        best.setdefault(name, []).append((us, list(shown)))
                except Exception as exc:  # a tile that does not compile (registers, shared memory)
                    print(f"PDL={pdl} {name} {c}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        us = bench.graph_us(chain({}))
        print(f"PDL={pdl} chain of 4 projections x 22 layers (defaults, no attention): {us:.1f} us "
              f"= {100 * total / us / 1e3 / peak:.1f} % copy", flush=True)
        if pdl == "1":
            for v in best.values():
                v.sort()
            pick = {name: tuple(v[0][1]) for name, v in best.items()}
            us = bench.graph_us(chain(pick))
            print(f"PDL=1 chain, best config per projection {pick}: {us:.1f} us "
                  f"= {100 * total / us / 1e3 / peak:.1f} % copy", flush=True)
            if out_path:
                with open(out_path, "w") as f:
                    json.dump(best, f, indent=1)

    for pdl in ("1", "0"):
        with contextlib.nullcontext() if pdl == "1" else pdl_off():
            measure(pdl)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write each projection's configs, ranked, to this JSON file")
    main(parser.parse_args().out)
