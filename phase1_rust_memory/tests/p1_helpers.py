"""Shared test helpers (a uniquely named module: several phases have a conftest.py): a skip when the Rust extension is not built."""

import pytest

from phase1_rust_memory import BUILD_HINT, native_available

needs_native = pytest.mark.skipif(not native_available(), reason=f"Rust extension not built: {BUILD_HINT}")
