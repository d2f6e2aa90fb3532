"""The one-shot all-reduce (``oneshot.py``, ``kernels/oneshot_allreduce.cu``).

CPU (``make test``): the kernel file builds to machine code for sm_80, sm_89 and sm_90 (NVRTC runs ptxas, which
checks the inline release/acquire PTX). GPU: two processes share one GPU (CUDA IPC maps memory between processes
on one device too, so no second GPU is needed) and all-reduce random bf16 and fp32 vectors of several sizes,
eagerly and replayed from a CUDA graph. With two ranks the kernel's fp32 sum of two bf16 or fp32 values is
exact before its one rounding, so the result must EQUAL the float64 sum rounded to the dtype, on both ranks.
"""

from __future__ import annotations

import pytest
import torch

from module0_profiling import cudac
from phase6_tensor_parallel import oneshot
from phase6_tensor_parallel.dist_env import spawn

SIZES = (8, 1024, 4096 + 8, 64 * 1024)  # elements: one vector, a few blocks, a ragged tail, past 36 blocks' first pass
GRAPH_SIZE = 2048
REPLAYS = 3


@pytest.mark.skipif(not cudac.nvrtc_available(), reason="NVRTC not found (install torch's CUDA wheel or a CUDA toolkit)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90"])
def test_kernel_builds_for_each_arch(arch):
    r = cudac.compile_check(oneshot.SOURCE, arch, ("--std=c++17",), cubin=True)
    assert r.ok, r.log
    for name in oneshot.KERNELS.values():
        assert f"Compiling entry function '{name}'" in r.log


def _inputs(rank: int, n: int, step: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(7919 * rank + 31 * n + step), dtype=torch.float64)


def _rank(group, dtype_name: str) -> dict:
    """One rank: eager all-reduces of every size, then a captured one replayed with fresh inputs."""
    dtype, dev = getattr(torch, dtype_name), torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    ar = oneshot.OneShotAllReduce(group, dev, max_bytes=max(SIZES) * 4)
    out = {}
    for n in SIZES:
        x = _inputs(group.rank, n, 0).to(dtype).to(dev)
        out[(n, 0)] = ar(x).cpu()
    static = torch.empty(GRAPH_SIZE, dtype=dtype, device=dev)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ar(static)
    for step in range(1, REPLAYS + 1):
        static.copy_(_inputs(group.rank, GRAPH_SIZE, step).to(dtype))
        graph.replay()
        out[(GRAPH_SIZE, step)] = static.cpu()
    ar.close()
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA IPC between two processes)")
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_two_processes_sum_exactly(dtype_name):
    dtype = getattr(torch, dtype_name)
    # gloo carries only the IPC handles and barriers; the all-reduce itself is the kernel
    results = spawn(_rank, 2, dtype_name, device="cpu", timeout_s=180.0)
    for key, got0 in results[0].items():
        n, step = key
        want = sum(_inputs(r, n, step).to(dtype).double() for r in range(2)).to(dtype)
        assert torch.equal(got0, results[1][key]), f"ranks disagree at {key}"
        assert torch.equal(got0, want), f"{key}: max error {(got0.double() - want.double()).abs().max():.3g}"
