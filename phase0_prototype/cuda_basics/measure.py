"""Time and check the CUDA basics kernels (GPU only): the figures behind P0.5 and the occupancy table."""

from __future__ import annotations

import torch

from module0_profiling.targets import RooflinePoint
from module0_profiling.timing import time_fn
from phase0_prototype import cuda_basics as cb

STRIDE = 32
COPY_ELEMENTS = 2**26  # 256 MiB per buffer: far beyond L2, so reuse of a strided sector must come from HBM


def measure(n: int = 4096) -> dict:
    notes, rows, roofline = [], [], []
    # vector add, checked
    a, b = torch.randn(2, 2**24, device="cuda")
    torch.testing.assert_close(cb.vector_add(a, b), a + b)
    t = time_fn(lambda: cb.vector_add(a, b), warmup=3, iters=20)
    rows.append(("vector_add 16M fp32", t.median, 12 * a.numel() / t.median / 1e9, None))

    # copies: same useful bytes, different mapping
    x = torch.randn(COPY_ELEMENTS, device="cuda")
    out = torch.empty_like(x)
    copies = {}
    for stride in (1, STRIDE):
        out.zero_()
        cb.copy(x, out, stride)
        assert torch.equal(out, x), f"copy stride {stride} is wrong"
        copies[stride] = time_fn(lambda s=stride: cb.copy(x, out, s), warmup=3, iters=20).median
        label = "copy coalesced" if stride == 1 else f"copy stride {stride}"
        rows.append((f"{label} 256 MiB", copies[stride], 8 * x.numel() / copies[stride] / 1e9, None))

    # matmuls, checked against torch (fp32 without TF32)
    A, B = torch.randn(2, n, n, device="cuda")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = A @ B
    torch.backends.cuda.matmul.allow_tf32 = prev
    flops, min_bytes = 2.0 * n**3, 3.0 * 4 * n * n
    mm = {}
    for version in cb.MATMULS:
        C = cb.matmul(A, B, version)
        err = float((C - ref).abs().max() / ref.abs().max())
        if err > 1e-4:
            raise AssertionError(f"matmul_{version} differs from torch: relative error {err:.2e}")
        mm[version] = time_fn(lambda v=version, c=C: cb.matmul(A, B, v, c), warmup=2,
                              iters=5 if n >= 4096 else 10).median
        rows.append((f"matmul_{version} {n}³", mm[version], None, flops / mm[version] / 1e12))
        roofline.append(RooflinePoint(f"matmul_{version} {n}³ fp32", flops, min_bytes, mm[version]))
    cublas = time_fn(lambda: torch.mm(A, B), warmup=2, iters=5).median
    rows.append((f"torch.mm (cuBLAS fp32) {n}³", cublas, None, flops / cublas / 1e12))

    best = min((v for v in cb.MATMULS if v != "naive"), key=mm.get)
    notes.append(f"P0.5 tiled figure uses the fastest tiled version: matmul_{best}")
    table = ["| kernel | time | GB/s (useful bytes) | TFLOP/s |", "|---|---|---|---|"]
    for name, s, gbps, tflops in rows:
        table.append(f"| {name} | {s * 1e3:.3f} ms | {'' if gbps is None else f'{gbps:.0f}'} | "
                     f"{'' if tflops is None else f'{tflops:.2f}'} |")
    occ = ["| kernel | threads/block | registers/thread | static smem/block (B) | blocks/SM "
           "| theoretical occupancy |", "|---|---|---|---|---|---|"]
    for r in cb.occupancy_table():
        occ.append(f"| {r['kernel']} | {r['threads/block']} | {r['registers/thread']} | "
                   f"{r['static smem/block (B)']} | {r['blocks/SM']} | "
                   f"{100 * r['theoretical occupancy']:.0f} % |")
    notes.append("achieved occupancy needs Nsight Compute "
                 "(ncu --metrics sm__warps_active.avg.pct_of_peak_sustained_active)")
    return {
        "tiled_vs_naive": mm["naive"] / mm[best],
        "coalesced_vs_strided": copies[STRIDE] / copies[1],
        "table": "\n".join(table),
        "occupancy_table": "\n".join(occ),
        "roofline": roofline,
        "notes": notes,
        "matmul_s": mm,
        "copy_s": copies,
    }
