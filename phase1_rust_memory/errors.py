"""The phase's exceptions, shared by the Rust extension and the Python reference.

``OutOfBlocks`` is the Rust extension's class when the extension is built (so ``except OutOfBlocks``
catches both implementations), and an equivalent Python class when it is not.
"""

from __future__ import annotations

BUILD_HINT = "run `make setup` to build the Rust extension (titaninfer_kvcache)"


class NativeExtensionMissing(ImportError):
    """The Rust extension ``titaninfer_kvcache`` is not built or not installed in this environment."""


try:
    from titaninfer_kvcache import OutOfBlocks
except ImportError:  # extension not built: the Python reference still works

    class OutOfBlocks(Exception):  # type: ignore[no-redef]
        """Not enough free KV blocks; nothing was changed. Attributes: needed, free, device."""


def out_of_blocks(needed: int, free: int, device: str) -> OutOfBlocks:
    """The exception both implementations raise, with the same message and attributes."""
    err = OutOfBlocks(f"out of {device} KV blocks: need {needed}, {free} free")
    err.needed, err.free, err.device = needed, free, device
    return err


def native():
    """The Rust extension module, or a one-line error that says how to build it."""
    try:
        import titaninfer_kvcache
    except ImportError as e:
        raise NativeExtensionMissing(f"the Rust extension is not built ({e}): {BUILD_HINT}") from None
    return titaninfer_kvcache
