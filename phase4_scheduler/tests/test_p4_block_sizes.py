"""Pool sizes reaching ``make_block_manager`` (the engine's one entry to phase 1): a value outside
phase 1's limits, or a pool the host cannot hold (refused up front, or by the allocator), is one
``ModelError`` line naming the CLI flag, and ``titaninfer bench`` prints exactly that one ``error:`` line
and exits 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import phase1_rust_memory as p1
from phase0_prototype.errors import ModelError
from phase4_scheduler import blocks
from phase4_scheduler.blocks import make_block_manager

IMPLS = ["reference"] + (["solution"] if p1.native_available() else [])
GPU, SIZE, CPU = ("num_blocks (--num-blocks) must be an integer in [1, 2147483647], got",
                  "block_size (--block-size) must be an integer in [1, 65536], got",
                  "num_cpu_blocks (--num-cpu-blocks) must be an integer in [0, 2147483647], got")
BAD = [  # (keyword, value, the message's start)
    ("num_blocks", -1, f"{GPU} -1: "), ("num_blocks", 0, f"{GPU} 0: "),
    ("num_blocks", 2**31, f"{GPU} 2147483648: "), ("num_blocks", 2.5, f"{GPU} 2.5: "),
    ("block_size", 0, f"{SIZE} 0: "), ("block_size", 2**16 + 1, f"{SIZE} 65537: "),
    ("num_cpu_blocks", -1, f"{CPU} -1: "), ("num_cpu_blocks", 2**64, f"{CPU} 18446744073709551616: "),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("key, value, start", BAD)
def test_out_of_range_sizes_are_one_line_model_errors(impl, key, value, start):
    sizes = {"num_blocks": 8, "block_size": 4, "num_cpu_blocks": 2, key: value}
    with pytest.raises(ModelError) as info:
        make_block_manager(sizes.pop("num_blocks"), impl=impl, **sizes)
    assert str(info.value).startswith(start) and "\n" not in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
def test_sizes_at_the_limits_build(impl):
    m = make_block_manager(1, 2**16, impl=impl, num_cpu_blocks=0)
    assert (m.num_gpu_blocks, m.block_size, m.num_cpu_blocks) == (1, 2**16, 0)
    assert m.allocate(0, 2**16) == [0] and not m.can_allocate(2**16 + 1)


def test_a_pool_over_half_the_host_memory_is_refused_before_building(monkeypatch):
    monkeypatch.setattr(blocks, "host_memory_bytes", lambda: 2**30)
    refused = r"for 40000000 GPU \+ 0 CPU blocks needs at least 0\.5 GiB.* 1\.0 GiB:"
    with pytest.raises(ModelError, match=refused):
        make_block_manager(40_000_000, 16)  # 14 B a block: 0.52 GiB (built in ~1 s if not refused)
    assert make_block_manager(1000, 16).num_gpu_blocks == 1000


NO_ROOM = """
import resource
from phase4_scheduler.blocks import make_block_manager
from phase0_prototype.errors import ModelError

size = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))  # 1 GiB more than now
for impl in IMPLS:
    try:  # 2**27 blocks: 1.9 GiB, under half of any host that runs the tests, over the 1 GiB limit
        make_block_manager(2**27, 16, impl=impl)
    except ModelError as e:
        print("ModelError", str(e).startswith("the KV block manager for 134217728 GPU + 0 CPU blocks does"))
"""


def test_a_pool_the_host_cannot_hold_is_a_model_error():
    code = f"IMPLS = {IMPLS!r}\n" + textwrap.dedent(NO_ROOM)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode} (-6: abort): {run.stderr[-2000:]}"
    assert run.stdout.split() == ["ModelError", "True"] * len(IMPLS)


@pytest.mark.parametrize("flag, value", [("--num-blocks", "-1"), ("--num-blocks", "2147483649"),
                                         ("--num-cpu-blocks", "-5")])
def test_cli_prints_one_error_line(flag, value, capsys):
    from shared.cli import main

    assert main(["bench", flag, value, "--num-requests", "2", "--impl", "phase1=reference"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag.lstrip("-").replace("-", "_") in err[0]


def test_a_kv_cache_the_host_cannot_hold_is_refused_before_allocating(monkeypatch):
    from phase0_prototype.sources import load_model
    from phase4_scheduler.runner import PagedModelRunner

    model = load_model("random:tiny", dtype="fp32")
    monkeypatch.setattr(blocks, "host_memory_bytes", lambda: 2**24)  # half of it: 8 MiB for the KV cache
    cfg = model.config
    per_block = 2 * 16 * cfg.num_key_value_heads * cfg.head_dim * 4 * cfg.num_hidden_layers
    with pytest.raises(ModelError, match=r"a KV cache of \d+ blocks needs .* GiB of half of host memory"):
        PagedModelRunner(model, 2**23 // per_block + 1, 16, cuda_graphs=False)
    assert PagedModelRunner(model, 2**23 // per_block, 16, cuda_graphs=False).kv[0][0].shape[0] > 0
