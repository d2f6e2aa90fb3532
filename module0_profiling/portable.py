"""Compile a Triton kernel for a named GPU without one: does it build for the learner's card (sm_80, sm_89)?

The kernels are tuned on an H100 (sm_90), but most learners run an A100 (sm_80) or an RTX 4090 (sm_89).
``compile_for`` runs Triton's whole pipeline (ttir, ttgir, llir, ptx, then the bundled ``ptxas`` to a cubin)
for a ``GPUTarget`` of that arch, so a feature the arch lacks fails here, in CI, rather than at a
learner's first launch; ``fits`` then checks the kernel's shared memory against the arch's per-block limit
(Triton checks that only when it loads the kernel on a device).

Limit: this is one specialization (the given constexprs; pointers 16-byte aligned, integers unspecialized),
not every configuration a launcher may pick, and it says nothing about speed or results. It needs Triton's
compiled path: under ``TRITON_INTERPRET=1`` ``@triton.jit`` gives interpreted functions, and the interpreter
patches ``triton.language`` while it runs, so compile in a process that never interpreted (``compile_in_child``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Shared memory one block may opt in to (bytes, CUDA C Programming Guide, "Technical Specifications"):
# A100 163 KB; the sm_86/sm_89 consumer cards (RTX 30xx/40xx) 99 KB; H100 227 KB.
MAX_SHARED = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


def compile_for(kernel, arch: int, constexprs: dict, types: dict[str, str] | None = None, *,
                num_warps: int = 4, num_stages: int = 3, maxnreg: int | None = None):
    """``kernel`` (a ``@triton.jit`` function) compiled to a cubin for ``sm_<arch>``; the ``CompiledKernel``
    (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``).

    ``constexprs``: the ``tl.constexpr`` parameters' values (omitted ones take their defaults). ``types``:
    Triton type strings of the runtime parameters (``"*bf16"`` for a pointer, ``"fp32"``, ``"i64"``); any
    not named is ``"i32"``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    types = types or {}
    consts = {p.name: p.default for p in kernel.params if p.is_constexpr and p.name not in constexprs}
    consts.update(constexprs)
    unknown = set(consts) - set(kernel.arg_names)
    if unknown:
        raise ValueError(f"{kernel.__name__} has no parameters {sorted(unknown)}")
    signature = {name: "constexpr" if name in consts else types.get(name, "i32") for name in kernel.arg_names}
    # as a launch specializes torch tensors: every pointer 16-byte aligned
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
             for name, t in signature.items() if t.startswith("*")}
    options = dict(num_warps=num_warps, num_stages=num_stages)
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(ASTSource(kernel, signature, consts, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def fits(compiled, arch: int) -> str | None:
    """Why the compiled kernel cannot launch on ``sm_<arch>`` (its shared memory), or ``None``."""
    shared = compiled.metadata.shared
    if shared > MAX_SHARED[arch]:
        return f"needs {shared} bytes of shared memory per block, sm_{arch} allows {MAX_SHARED[arch]}"
    return None


def compile_in_child(path: str | Path, function: str, *args, env: dict | None = None,
                     timeout: float = 600) -> object:
    """``function(*args)`` of the Python file ``path`` (JSON in, JSON out) in a fresh interpreter, run from
    the repository root with ``env`` added and Triton's compiled path on: ``TRITON_INTERPRET`` is ``0``, so
    neither Triton nor a package that turns the interpreter on when no GPU is present (phase 3's
    ``kernels``) interprets there."""
    env = dict(os.environ, **(env or {}), TRITON_INTERPRET="0")
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('_portable_child', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(mod)\n"
            "print(json.dumps(getattr(mod, sys.argv[2])(*json.loads(sys.argv[3]))))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), function, json.dumps(list(args))],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"compiling in a child process failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
