"""What machine are we on, what does its datasheet promise, and what does it really deliver.

Every target in this project is a ratio against *measured* ceilings: the device-to-device copy
bandwidth (bytes read + bytes written, the most any memory-bound kernel can hope for) and the bf16
matrix-multiply rate on random data (the most any compute-bound kernel can hope for). Datasheet
numbers are shown beside them; they are dense (no 2:4 sparsity) figures.

``python -m module0_profiling.hardware [--remeasure]`` prints the device and its peaks. Measured
peaks are cached per device under ``$XDG_CACHE_HOME/titaninfer/peaks/`` (``~/.cache`` by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Datasheet:
    name: str
    bf16_tflops: float  # dense tensor-core bf16, no sparsity
    mem_gbps: float  # HBM/GDDR bandwidth


# Dense figures from the vendors' datasheets. Order matters: the first pattern that matches wins.
DATASHEETS: list[tuple[str, Datasheet]] = [
    (r"H200", Datasheet("H200 SXM", 989.0, 4800.0)),
    (r"H100.*PCIe", Datasheet("H100 PCIe", 756.0, 2000.0)),
    (r"H100.*NVL", Datasheet("H100 NVL", 835.0, 3900.0)),
    (r"H100", Datasheet("H100 SXM", 989.0, 3350.0)),
    (r"A100.*80", Datasheet("A100 80GB SXM", 312.0, 2039.0)),
    (r"A100", Datasheet("A100 40GB", 312.0, 1555.0)),
    (r"L40S", Datasheet("L40S", 362.0, 864.0)),
    (r"L4\b", Datasheet("L4", 121.0, 300.0)),
    (r"A10\b|A10G", Datasheet("A10", 125.0, 600.0)),
    (r"RTX 4090", Datasheet("RTX 4090", 165.0, 1008.0)),
    (r"RTX 3090", Datasheet("RTX 3090", 71.0, 936.0)),
    (r"RTX 4080", Datasheet("RTX 4080", 97.5, 717.0)),
    (r"T4\b", Datasheet("T4", 65.0, 320.0)),  # fp16; T4 has no bf16 tensor cores
]


def lookup_datasheet(device_name: str) -> Datasheet | None:
    for pattern, sheet in DATASHEETS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return sheet
    return None


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str
    sm_count: int | None = None
    memory_gb: float | None = None
    capability: str | None = None  # "9.0"
    l2_mb: float | None = None
    torch_version: str = torch.__version__

    @property
    def slug(self) -> str:
        """File-name form of the device, used for reports/<phase>/<slug>.md and the peak cache."""
        name = self.name.replace("NVIDIA ", "")
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def datasheet(self) -> Datasheet | None:
        return lookup_datasheet(self.name) if self.is_cuda else None


def detect_device() -> DeviceInfo:
    """The first visible CUDA device, or a description of the CPU when there is none."""
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        l2 = getattr(p, "L2_cache_size", 0) or 0
        return DeviceInfo(
            kind="cuda",
            name=p.name,
            sm_count=p.multi_processor_count,
            memory_gb=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            l2_mb=round(l2 / 2**20, 1) if l2 else None,
        )
    return DeviceInfo(kind="cpu", name=f"cpu-{_cpu_name()}-{os.cpu_count()}c")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1]
                name = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", name)
                return "-".join(name.split()[:3]) or platform.machine()
    except OSError:
        pass
    return platform.machine() or "unknown"


@dataclass
class Peaks:
    """Measured ceilings of one device."""

    device: str
    copy_gbps: float  # device-to-device copy, read + write bytes per second / 1e9
    matmul_tflops: float  # bf16 (fp32 on CPU) square matmul on random data
    matmul_dtype: str
    matmul_n: int
    copy_bytes: int
    measured_at: str


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "titaninfer" / "peaks"


def measure_copy_gbps(device: DeviceInfo, nbytes: int | None = None) -> tuple[float, int]:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written.

    The buffer is far larger than L2 (1 GiB on a GPU) so the copy streams through HBM.
    """
    from module0_profiling.timing import time_fn

    if nbytes is None:
        nbytes = 2**30 if device.is_cuda else 2**26
    dev = "cuda" if device.is_cuda else "cpu"
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), warmup=3, iters=20 if device.is_cuda else 5, device=dev)
    return 2 * nbytes / t.median / 1e9, nbytes


def measure_matmul_tflops(device: DeviceInfo, n: int | None = None) -> tuple[float, str, int]:
    """Square matmul rate on random data: bf16 8192³ on a GPU, fp32 1024³ on a CPU."""
    from module0_profiling.timing import time_fn

    if device.is_cuda:
        n, dtype, dev = n or 8192, torch.bfloat16, "cuda"
    else:
        n, dtype, dev = n or 1024, torch.float32, "cpu"
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    t = time_fn(lambda: a @ b, warmup=3, iters=10 if device.is_cuda else 3, device=dev)
    return 2 * n**3 / t.median / 1e12, str(dtype).replace("torch.", ""), n


def measured_peaks(device: DeviceInfo | None = None, *, remeasure: bool = False) -> Peaks:
    """Measured peaks of ``device``, from the cache unless ``remeasure`` or absent."""
    device = device or detect_device()
    path = _cache_dir() / f"{device.slug}.json"
    if path.exists() and not remeasure:
        try:
            data = json.loads(path.read_text())
            if data.get("device") == device.name:
                return Peaks(**data)
        except (ValueError, TypeError):
            pass  # a damaged cache is measured again
    copy, nbytes = measure_copy_gbps(device)
    tflops, dtype, n = measure_matmul_tflops(device)
    peaks = Peaks(
        device=device.name,
        copy_gbps=copy,
        matmul_tflops=tflops,
        matmul_dtype=dtype,
        matmul_n=n,
        copy_bytes=nbytes,
        measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(peaks), indent=2))
    tmp.replace(path)
    return peaks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m module0_profiling.hardware",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--remeasure", action="store_true",
                    help="measure the peaks again instead of reading the cache")
    args = ap.parse_args(argv)
    dev = detect_device()
    print(f"device: {dev.name} ({dev.kind}), SMs {dev.sm_count}, memory {dev.memory_gb} GB, "
          f"L2 {dev.l2_mb} MB")
    peaks = measured_peaks(dev, remeasure=args.remeasure)
    print(f"measured copy bandwidth: {peaks.copy_gbps:.0f} GB/s (read + write)")
    print(f"measured {peaks.matmul_dtype} matmul {peaks.matmul_n}³: {peaks.matmul_tflops:.1f} TFLOP/s")
    sheet = dev.datasheet
    if sheet:
        print(f"datasheet ({sheet.name}): {sheet.mem_gbps:.0f} GB/s, {sheet.bf16_tflops:.0f} bf16 TFLOP/s "
              "dense")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
