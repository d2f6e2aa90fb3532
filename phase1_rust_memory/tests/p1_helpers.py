"""Shared test helpers (a uniquely named module: several phases have a conftest.py): a skip when the
Rust extension is not built, and a call's outcome in a form two implementations can be compared in."""

import pytest

from phase1_rust_memory import BUILD_HINT, native_available

needs_native = pytest.mark.skipif(not native_available(), reason=f"Rust extension not built: {BUILD_HINT}")


def outcome(fn, *args):
    """The result, or ("raised", exception type, message, OutOfBlocks attributes)."""
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 — the exception itself is the answer being compared
        extra = (e.needed, e.free, e.device) if hasattr(e, "needed") else ()
        return ("raised", type(e).__name__, str(e), extra)
    if hasattr(out, "slots"):
        return (out.slots, out.new_blocks, out.copies, out.preempted)
    return out
