"""Phase 5's INT4 weights in the engine: one hook, and a correct fallback until phase 5's decode lands.

``quant`` is ``None`` (float weights), ``rtn``, ``awq``, ``gptq`` or a module path exposing phase 5's
``quantize(model, calibration_ids, *, group_size) -> LinearLlama``.

The hook. When phase 5 provides ``phase5_quantization.integration.build_engine``::

    def build_engine(model: LoadedModel, method: str, *, max_seq_len: int | None, compile: bool,
                     calibration_ids: list[int] | None, group_size: int) -> Engine   # phase 0's Engine contract

the engine uses it as its single-request engine (INT4 weights, phase 5's W4A16 kernel on the GPU).

The fallback (no such function yet): phase 5's quantizer turns phase 0's weights into a ``LinearLlama``
whose projections are INT4, and ``RecomputeEngine`` runs phase 0's ``Engine`` contract over it by
recomputation — no KV cache, every call dequantizes: correct (its greedy tokens are phase 5's
``LinearLlama.greedy``), slow, so the benchmark marks the INT4 row SKIP while the fallback is in use.
"""

from __future__ import annotations

import importlib

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.generation import (
    EosState,
    GenerationOutput,
    TokenCallback,
    as_batch,
    check_context,
    finish,
)
from phase0_prototype.sampling import GREEDY, SamplingParams, sample
from phase0_prototype.sources import LoadedModel
from shared.impls import QUANT_METHODS

HOOK = "phase5_quantization.integration.build_engine"


def phase5_hook():
    """Phase 5's ``build_engine`` when it exists, else None (the fallback runs)."""
    try:
        module = importlib.import_module("phase5_quantization.integration")
    except ImportError:
        return None
    return getattr(module, "build_engine", None)


def fallback_reason() -> str | None:
    """Why the INT4 engine is the slow fallback (None when phase 5's hook is there)."""
    if phase5_hook() is not None:
        return None
    return (f"phase 5 has no INT4 decode engine yet ({HOOK} is missing): the engine runs phase 5's INT4 "
            "weights by recomputation, correct but not a speed figure")


def calibration_ids(model: LoadedModel) -> list[int]:
    """Phase 5's calibration text (Genesis 1–5) in the model's tokenizer."""
    from phase5_quantization.bench import CALIBRATION

    return model.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)


def quantize(model: LoadedModel, method: str, *, group_size: int = 128):
    """Phase 5's quantizer ``method`` applied to ``model``'s weights -> an INT4 ``LinearLlama``."""
    from phase5_quantization import load_impl
    from phase5_quantization.model import LinearLlama

    module = load_impl(QUANT_METHODS.get(method, method))
    calib = None if method == "rtn" else calibration_ids(model)
    dense = LinearLlama.from_loaded(model, dtype=model.dtype)
    try:
        return module.quantize(dense, calib, group_size=group_size)
    except ValueError as e:  # e.g. a dimension that is not a multiple of the group size
        raise ModelError(f"--quant {method}: {e}") from None


def build_engine(model: LoadedModel, method: str, *, max_seq_len: int | None = None, compile: bool = True,
                 group_size: int = 128):
    """The single-request engine with ``method``'s INT4 weights (phase 5's when present, else the fallback)."""
    hook = phase5_hook()
    if hook is None:
        return RecomputeEngine(model, quantize(model, method, group_size=group_size), max_seq_len=max_seq_len)
    try:  # phase 5 picks its own calibration text (calibration_ids=None)
        return hook(model, method, max_seq_len=max_seq_len, compile=compile, calibration_ids=None,
                    group_size=group_size)
    except ValueError as e:  # phase 5's ModelError too: a group size that does not divide, an unknown method
        raise ModelError(f"--quant {method}: {e}") from None


class RecomputeEngine:
    """Phase 0's ``Engine`` contract over phase 5's ``LinearLlama`` (INT4 projections), by recomputation."""

    name = "int4-recompute"
    mode = "INT4 weights, recomputed every token (phase 5 fallback, no KV cache)"

    def __init__(self, model: LoadedModel, quantized, *, max_seq_len: int | None = None):
        self.model, self.quantized = model, quantized
        limit = model.config.max_position_embeddings
        self.max_seq_len = min(max_seq_len or limit, limit)

    @torch.inference_mode()
    def forward_logits(self, tokens) -> torch.Tensor:
        tokens = as_batch(tokens, self.model.device)
        check_context(tokens.shape[1], 1, self.max_seq_len + 1)
        return self.quantized.forward_logits(tokens)

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, sampling: SamplingParams = GREEDY, *,
                 on_tokens: TokenCallback | None = None, stop_on_eos: bool = True,
                 eos_ids: tuple[int, ...] | None = None) -> GenerationOutput:
        tokens = as_batch(prompt_ids, self.model.device)
        check_context(tokens.shape[1], max_new_tokens, self.max_seq_len)
        eos_ids = self.model.tokenizer.eos_ids if eos_ids is None else eos_ids
        eos = EosState(tokens.shape[0], eos_ids if stop_on_eos else (), tokens.device)
        generator = sampling.generator(tokens.device)
        start = tokens.shape[1]
        for _ in range(max_new_tokens):
            logits = self.quantized.forward_logits(tokens)[:, -1]
            next_tokens = eos.update(sample(logits, sampling, generator))
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            if on_tokens is not None:
                on_tokens(next_tokens[:, None].cpu())
            if stop_on_eos and bool(eos.finished.all()):
                break
        return finish(tokens[:, start:], eos_ids, stop_on_eos)
