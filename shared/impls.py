"""Which implementation of each phase the engine runs: the ``--impl`` spec, presets, and their meaning.

A spec is a comma-separated list (or several ``--impl`` flags) of

- ``phaseN=NAME``: that phase's implementation — ``framework``, ``solution``, a phase-specific name
  (``reference``, ``off``, ``auto``, ``rtn``/``awq``/``gptq``) or a module path (``phase3_paged_attention.mine``);
- a preset: ``solution`` (every phase's solution), ``framework`` (the prototype), or a module
  path exposing ``IMPLS`` (a learner's ``shared.mine``).

Presets apply first, in order, then the ``phaseN=`` items over them. Anything else is a one-line
``ImplSpecError`` naming the choices. ``auto`` values are resolved per device by ``resolve``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from phase0_prototype.errors import ModelError


class ImplSpecError(ModelError):
    """A bad ``--impl`` spec (unknown phase, unknown name): printed as one line, exit code 2."""


@dataclass(frozen=True)
class Component:
    package: str
    role: str  # what this phase contributes to the engine, in words
    names: tuple[str, ...]  # the accepted names (besides module paths)


COMPONENTS: dict[str, Component] = {
    "phase0": Component("phase0_prototype", "the model's fused small-batch decode step (phase4=off: the whole engine)",
                        ("framework", "solution")),
    "phase1": Component("phase1_rust_memory", "KV block manager of the paged cache",
                        ("auto", "solution", "framework", "reference")),
    "phase2": Component("phase2_rope_cuda", "RoPE (off = phase 0's, fused in its kernels)",
                        ("off", "solution", "framework", "reference")),
    "phase3": Component("phase3_paged_attention", "paged attention over the block manager's cache",
                        ("auto", "solution", "framework", "reference")),
    "phase4": Component("phase4_scheduler", "scheduler: continuous batching over paged KV (off = one request at a time)",
                        ("solution", "framework", "off")),
    "phase5": Component("phase5_quantization", "INT4 weight-only quantization (off = bf16/fp32 weights)",
                        ("off", "rtn", "awq", "gptq", "framework", "solution")),
    "phase6": Component("phase6_tensor_parallel", "tensor-parallel layers, used when tp > 1",
                        ("solution", "framework")),
}
PHASES = tuple(COMPONENTS)
PRESET_NAMES = ("solution", "framework")


def phase_key(name: str) -> str:
    """``phase3``, ``phase3_paged_attention`` or ``3`` -> ``phase3``."""
    key = name.strip()
    if key.isdigit():
        key = f"phase{key}"
    for short, comp in COMPONENTS.items():
        if key in (short, comp.package):
            return short
    raise ImplSpecError(f"unknown phase {name!r} in --impl: choose one of {', '.join(PHASES)} (e.g. phase3=framework)")


def check_name(phase: str, name: str) -> str:
    comp = COMPONENTS[phase]
    if name in comp.names or _is_module_path(name) or (phase == "phase5" and Path(name).is_dir()):
        return name  # (phase 5: a directory of INT4 weights written by `titaninfer quantize`)
    raise ImplSpecError(f"unknown implementation {name!r} for {phase} ({comp.role}): choose "
                        f"{', '.join(comp.names)} or a module path such as {comp.package}.mine")


def preset(name: str) -> dict[str, str]:
    """The ``IMPLS`` of ``shared.solution``, ``shared.framework`` or a module path exposing ``IMPLS``."""
    module_name = f"{__package__}.{name}" if name in PRESET_NAMES else name  # shared. here, titaninfer. installed
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ImplSpecError(f"--impl {name!r} is neither phaseN=NAME nor a preset: use phaseN=NAME "
                            f"(e.g. phase3=framework), {' or '.join(PRESET_NAMES)}, or a module path defining IMPLS") from None
    impls = getattr(module, "IMPLS", None)
    if not isinstance(impls, Mapping):
        raise ImplSpecError(f"{module_name} has no IMPLS dict: define IMPLS = {{'phase0': 'solution', ...}}")
    return {phase_key(k): check_name(phase_key(k), str(v)) for k, v in impls.items()}


def parse(spec: str | Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """The full per-phase mapping for ``spec`` (missing phases take the ``solution`` preset's value)."""
    out = dict(preset("solution"))
    if spec is None:
        return out
    if isinstance(spec, Mapping):
        items = [f"{k}={v}" for k, v in spec.items()]
    else:
        items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    overrides = {}
    for part in parts:
        if "=" in part:
            phase, _, name = part.partition("=")
            key = phase_key(phase)
            overrides[key] = check_name(key, name.strip())
        else:
            out.update(preset(part))
    out.update(overrides)
    return out


def resolve(impls: Mapping[str, str], device_type: str, *, native_block_manager: bool | None = None) -> dict[str, str]:
    """Replace ``auto`` by what runs here: the Rust block manager when built, Triton attention on CUDA."""
    out = dict(impls)
    if out.get("phase1") == "auto":
        if native_block_manager is None:
            import phase1_rust_memory

            native_block_manager = phase1_rust_memory.native_available()
        out["phase1"] = "solution" if native_block_manager else "reference"
    if out.get("phase3") == "auto":
        out["phase3"] = "solution" if device_type == "cuda" else "reference"
    return out


def import_module_paths(impls: Mapping[str, str]) -> None:
    """Import every learner module path now (ImplError naming the choices), not at the first request."""
    for key, name in impls.items():
        if _is_module_path(name):
            importlib.import_module(COMPONENTS[key].package).load_impl(name)


def _is_module_path(name: str) -> bool:
    return "." in name and all(part.isidentifier() for part in name.split("."))


def quant_method(impls: Mapping[str, str]) -> str | None:
    """Phase 5's setting as a method name (``rtn``, ``awq``, ``gptq``, a module path) or None."""
    name = impls.get("phase5", "off")
    if name == "off":
        return None
    return {"framework": "rtn", "solution": "awq"}.get(name, name)


def describe(impls: Mapping[str, str]) -> str:
    """``phase0=solution phase1=solution …`` on one line."""
    return " ".join(f"{k}={impls[k]}" for k in PHASES if k in impls)
