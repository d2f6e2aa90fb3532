"""Datasheet lookup, the peak cache, the IMPL switch and NVRTC compile checks."""

import json

import pytest
import torch

from module0_profiling import cudac, hardware
from module0_profiling.impl import ImplError, load_impl


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A10", "A10"),
])
def test_datasheet_lookup(name, expected):
    assert hardware.lookup_datasheet(name).name == expected


def test_rtx4090_figures_are_dense_bf16_not_fp32():
    sheet = hardware.lookup_datasheet("NVIDIA GeForce RTX 4090")
    assert sheet.bf16_tflops == 165.0 and sheet.mem_gbps == 1008.0


def test_unknown_device_has_no_datasheet():
    assert hardware.lookup_datasheet("Mystery Accelerator 9000") is None


def test_slug_is_a_safe_file_name():
    d = hardware.DeviceInfo("cuda", "NVIDIA H100 80GB HBM3")
    assert d.slug == "h100-80gb-hbm3"


def test_detect_device_matches_torch():
    d = hardware.detect_device()
    assert d.is_cuda == torch.cuda.is_available()
    assert d.name


def test_peaks_are_cached_and_remeasured(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = {"copy": 0}

    def fake_copy(device, nbytes=None):
        calls["copy"] += 1
        return 100.0 + calls["copy"], 1024

    monkeypatch.setattr(hardware, "measure_copy_gbps", fake_copy)
    monkeypatch.setattr(hardware, "measure_matmul_tflops", lambda device, n=None: (1.0, "float32", 64))
    dev = hardware.DeviceInfo("cpu", "cpu-test")
    first = hardware.measured_peaks(dev)
    assert first.copy_gbps == 101.0
    assert hardware.measured_peaks(dev).copy_gbps == 101.0 and calls["copy"] == 1  # from the cache
    assert hardware.measured_peaks(dev, remeasure=True).copy_gbps == 102.0
    cached = json.loads((tmp_path / "titaninfer" / "peaks" / "cpu-test.json").read_text())
    assert cached["copy_gbps"] == 102.0


def test_real_copy_measurement_counts_read_and_write():
    gbps, nbytes = hardware.measure_copy_gbps(hardware.DeviceInfo("cpu", "cpu"), nbytes=2**22)
    assert gbps > 0.1 and nbytes == 2**22


def test_load_impl_builtin_and_errors():
    assert load_impl("module0_profiling", "framework").make_loop
    assert load_impl("module0_profiling", "module0_profiling.solution").make_loop
    with pytest.raises(ImplError, match="does not import.*framework, solution"):
        load_impl("module0_profiling", "module0_profiling.mine")


KERNEL = r"""
#include <cuda_bf16.h>
extern "C" __global__ void scale(const __nv_bfloat16* x, float* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * __bfloat162float(x[i]);
}
"""


@pytest.mark.skipif(not cudac.nvrtc_available(), reason="NVRTC not found (no CUDA wheel or toolkit)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compile_check(tmp_path, arch):
    good = tmp_path / "good.cu"
    good.write_text(KERNEL)
    r = cudac.compile_check(good, arch)
    assert r.ok, r.log
    assert ".entry scale" in r.ptx and f".target {arch}" in r.ptx
    bad = tmp_path / "bad.cu"
    bad.write_text(KERNEL.replace("a * ", "undefined_name * "))
    r = cudac.compile_check(bad, arch)
    assert not r.ok and "undefined_name" in r.log


def test_module0_loops_compute_the_linear_layer():
    from module0_profiling import framework, solution

    dim, steps = 96, 3
    layer = torch.nn.Linear(dim, dim)
    x = torch.randn(1, dim)
    ref = (x.double() @ layer.weight.double().T + layer.bias.double()).float()
    for impl in (framework, solution):
        out = impl.make_loop(layer, x, steps)()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
