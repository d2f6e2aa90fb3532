"""Phase 0 — the TinyLlama prototype: model, checkpoints, tokenizer, sampling, two engines, CUDA basics.

Public contract (what ``framework``, ``solution`` and a learner's ``phase0_prototype.mine`` provide)::

    def build(model: LoadedModel, *, max_batch_size: int = 1, max_seq_len: int | None = None,
              compile: bool = ..., rope_fn: RopeFn | None = None) -> Engine

    class Engine:
        name: str                 # "framework", "solution", ...
        mode: str                 # how it runs, in words ("eager, no KV cache", "torch.compile + CUDA graph")
        kv_slots_per_request: int | None  # KV cache slots one request holds whatever its length (None: no cache)
        def forward_logits(self, tokens: LongTensor[B, T]) -> FloatTensor[B, T, vocab]
            # logits of every position of fresh sequences (fp32), for correctness checks
        def generate(self, prompt_ids: LongTensor[B, T] | list[int], max_new_tokens: int,
                     sampling: SamplingParams = SamplingParams(), *,
                     on_tokens: Callable[[LongTensor[B, k]], None] | None = None,
                     stop_on_eos: bool = True, eos_ids: tuple[int, ...] | None = None) -> GenerationOutput
            # greedy/sampled continuation; on_tokens streams chunks of new ids (CPU tensors) in order
            # and returns True to end the generation there (a stop string matched, the reader left);
            # EOS semantics in ``generation`` (padding after a sequence's EOS, cut at the longest)

``compile=True`` asks for torch.compile + CUDA graphs where the engine has them (the framework ignores it);
``rope_fn`` replaces the reference RoPE (``model.apply_rope``; phase 2 plugs its kernel in here).

Shared pieces: ``config.LlamaConfig`` (+ presets), ``weights`` (safetensors, random init, fused layout
``LlamaWeights``), ``tokenizer`` (``tokenizers`` + HF chat templates, byte fallback), ``sources.load_model``
(``--model`` specs), ``sampling``, ``model`` (RMSNorm, RoPE, SwiGLU), ``generate`` (the CLI:
``python -m phase0_prototype generate --model random:tinyllama --prompt "..."``). ``dev`` holds the solution's
variants that lessons, tests and GPU scripts compare (not the product path; figures in ``NOTES.md``).
"""

from __future__ import annotations

from types import ModuleType

from phase0_prototype.config import PRESETS, LlamaConfig
from phase0_prototype.errors import ModelError
from phase0_prototype.generation import GenerationOutput
from phase0_prototype.model import RopeFn, apply_rope
from phase0_prototype.sampling import SamplingParams
from phase0_prototype.sources import LoadedModel, load_model
from phase0_prototype.weights import LayerWeights, LlamaWeights, fuse

__all__ = [
    "PRESETS", "LlamaConfig", "ModelError", "GenerationOutput", "RopeFn", "apply_rope", "SamplingParams",
    "LoadedModel", "load_model", "LayerWeights", "LlamaWeights", "fuse", "load_impl",
]


def load_impl(name: str) -> ModuleType:
    """``framework``, ``solution`` or a module path exposing ``build(model, **options) -> Engine``."""
    from module0_profiling.impl import load_impl as _load

    return _load("phase0_prototype", name)
