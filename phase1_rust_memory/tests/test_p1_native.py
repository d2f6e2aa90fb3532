"""The Rust extension as a Python citizen: abi3 build, errors mapped to the right exception types,
panics as RuntimeError (and the object then refuses), and a clear message when it is not built."""

import subprocess
import sys

import pytest
from p1_helpers import needs_native


@needs_native
def test_abi3_extension_module():
    from pathlib import Path

    import titaninfer_kvcache

    # maturin installs a package whose compiled part carries the stable-ABI tag: one wheel for 3.10+.
    built = [p.name for p in Path(titaninfer_kvcache.__file__).parent.iterdir() if p.suffix in (".so", ".pyd")]
    assert any(name.endswith(".abi3.so") or name.endswith(".pyd") for name in built), built


@needs_native
def test_errors_map_to_python_exceptions():
    from phase1_rust_memory import solution

    m = solution.BlockManager(4, 4)
    with pytest.raises(KeyError, match="unknown sequence id 12345"):
        m.free(12345)
    with pytest.raises(ValueError, match="policy must be 'refuse' or 'preempt'"):
        solution.BlockManager(4, 4, policy="evict")
    with pytest.raises(ValueError, match="block_size"):
        solution.BlockManager(4, 0)
    with pytest.raises(NotImplementedError, match="contiguous runs"):
        solution.LifoBlockAllocator(4).allocate(3)
    with pytest.raises(ValueError, match=r"seq_id must be an integer in \[0, 18446744073709551615\], got -1"):
        m.allocate(-1, 3)


@needs_native
def test_panic_is_runtime_error_and_poisons():
    from phase1_rust_memory import solution

    m = solution.BlockManager(4, 4)
    m.allocate(1, 3)
    with pytest.raises(RuntimeError, match="Rust panic: deliberate test panic"):
        m._debug_panic()
    with pytest.raises(RuntimeError, match="state is unreliable"):
        m.allocate(2, 3)


def test_clear_message_without_the_extension():
    code = (
        "import sys; sys.modules['titaninfer_kvcache'] = None\n"
        "import phase1_rust_memory as p, phase1_rust_memory.reference as r\n"
        "assert r.BlockManager(4, 4).allocate(1, 5) == [0, 1]\n"  # the reference works without Rust
        "try:\n    p.BlockManager\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "run `make setup` to build the Rust extension" in out
