"""The implementation switch: ``framework``, ``solution``, or any importable module path.

Every phase exports one contract and several implementations. ``load_impl("phase2_rope_cuda",
"framework")`` imports ``phase2_rope_cuda.framework``; ``"solution"`` likewise; any other name is
imported as a module path (a learner's ``phase2_rope_cuda.mine``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

BUILTIN_IMPLS = ("framework", "solution")


class ImplError(ValueError):
    """An implementation name that does not import; the message names the choices."""


def load_impl(phase_package: str, name: str) -> ModuleType:
    module_name = f"{phase_package}.{name}" if name in BUILTIN_IMPLS else name
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and not module_name.startswith(e.name) and e.name != module_name:
            raise  # the module exists but one of ITS imports is missing: show the real error
        raise ImplError(
            f"IMPL '{name}' does not import ({module_name}: {e}); "
            f"choose one of: {', '.join(BUILTIN_IMPLS)}, or a module path such as {phase_package}.mine"
        ) from None


def impls_under_test(default: list[str]) -> list[str]:
    """The implementations a phase's tests check: ``IMPL`` from the environment when set (``make test-phaseN
    IMPL=phaseN_x.mine``: the tests take the same switch as the checks), else ``default``."""
    chosen = os.environ.get("IMPL", "").strip()
    return [chosen] if chosen else list(default)
