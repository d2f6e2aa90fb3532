"""The assembled TitanInfer engine and the ``titaninfer`` command line: ``from titaninfer import LLMEngine,
EngineConfig, SamplingParams`` and ``python -m titaninfer …`` once installed — the wheel installs this
directory as ``titaninfer`` (pyproject's ``package-dir``), which is why its modules import each other
relatively; the repository's lessons and tests import it as ``shared``.

Public contract (``shared.engine``)::

    @dataclass(frozen=True)
    class EngineConfig:
        model: str = "kjv-llama-18m"          # hub id, HF directory, bundled name, random:tinyllama, random:tiny
        impl: str | list[str] | dict = "solution"   # per-phase choice: "phase3=framework,phase1=reference", a
                                              # preset ("solution", "framework") or a module path with IMPLS
        device, dtype, seed, quant (None|rtn|awq|gptq), quant_group_size, tp, max_model_len,
        max_num_seqs, max_num_batched_tokens, block_size, num_blocks, policy, max_wait_steps,
        compile (CUDA graphs)

    class LLMEngine(config, *, model: LoadedModel | None = None):
        impls: dict[str, str]                 # what each phase runs, "auto" resolved for this device
        def generate(prompts, sampling=None, *, max_tokens=64, stop=(), ignore_eos=False, chat=False)
            -> list[RequestOutput]            # one prompt or a list: text, token ids or chat messages
        def stream(prompt, sampling=None, *, max_tokens=64, stop=(), ignore_eos=False, chat=False)
            -> Iterator[Delta]                # text increments of one request
        def warmup(); def describe() -> str; def close(); last_run: RunStats

    RequestOutput(prompt_ids, token_ids, text, finish_reason, ttft_s); Delta(text, token_ids, finish_reason)

Where a request goes: always phase 4's continuous batching (one loop: a lone request is batch 1, whose
decode step is phase 0's fused Triton step) over phase 1's block manager and phase 3's paged attention,
with phase 2's RoPE, phase 5's INT4 layers and phase 6's ranks (``tp > 1``) plugged into the one model;
``phase4=off``: phase 0's engine, one request at a time.

Presets (``load_impl``): ``solution`` (every phase's solution: what ``make check-engine`` measures),
``framework`` (the prototype: phase 0's framework, one request at a time), or a module path
defining ``IMPLS``. The rest: ``cli`` (generate, chat, serve, bench, report, check, hardware), ``bench``
and ``checks`` (E.1, E.2), ``impls`` (the ``--impl`` spec), ``quant`` (phase 5's hook), ``tp_workers``
(phase 6's ranks), ``batched``/``single`` (the two paths), ``outputs`` (what requests return).
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["EngineConfig", "LLMEngine", "RequestOutput", "Delta", "SamplingParams", "load_impl"]


def __getattr__(name: str):
    """``shared.LLMEngine`` etc., imported on first use (``import shared`` stays cheap for the CLI)."""
    if name in ("EngineConfig", "LLMEngine", "RequestOutput", "Delta"):
        from . import engine

        return getattr(engine, name)
    if name == "SamplingParams":
        from phase0_prototype.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_impl(name: str) -> ModuleType:
    """``solution``, ``framework`` or a module path exposing ``IMPLS`` (a per-phase choice)."""
    from module0_profiling.impl import load_impl as _load

    return _load(__name__, name)
