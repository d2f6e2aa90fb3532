"""Phase 5's INT4 weights in the engine: ``quant`` is ``None`` (float weights), ``rtn``, ``awq``, ``gptq``, a
module path exposing phase 5's ``quantize`` contract, or a directory saved by ``LinearLlama.save``.

``titaninfer quantize`` writes the quantized model once, as an AutoAWQ GEMM checkpoint (phase 5's
``awq_checkpoint``) with the tokenizer beside it; ``--quant DIR`` then loads it instead of quantizing again.
The model is quantized (or loaded) once and serves both paths: a lone request runs phase 5's
``Int4Engine`` (phase 0's engine, static KV cache and CUDA graph, over W4A16 projections); several
requests run phase 4's continuous batching with the same ``QuantLinear`` objects as its projections.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from phase0_prototype.errors import ModelError
from phase0_prototype.sources import LoadedModel


def quantize(model: LoadedModel, method: str, *, group_size: int = 128):
    """``model``'s INT4 ``LinearLlama`` by ``method``, on its device; a bad method or shape is one ``ModelError``."""
    from phase5_quantization.integration import prepare, quantize_for_generate

    try:
        quantized = quantize_for_generate(model, method, group_size=group_size)
    except ValueError as e:  # phase 5's ModelError too: a group size that does not divide, an unknown method
        raise ModelError(f"--quant {method}: {e}") from None
    return prepare(quantized, model.device, model.dtype)


def build_engine(model: LoadedModel, quantized, *, max_seq_len: int | None = None, compile: bool = True):
    """The single-request engine over ``quantized``'s projections."""
    from phase5_quantization.integration import Int4Engine

    return Int4Engine(model, quantized, max_seq_len=max_seq_len, compile=compile)


def paged_weights(quantized):
    """``(weights, linear)`` for phase 4's paged runner: the INT4 projections behind ``linear(x, w)``."""
    from phase5_quantization.integration import call_linear, int4_weights

    return int4_weights(quantized), call_linear


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def save_quantized(model: LoadedModel, method: str, out: str | Path, *, group_size: int = 128) -> Path:
    """Quantize ``model`` by ``method`` and write an AutoAWQ GEMM checkpoint (+ the tokenizer files) to ``out``.

    Written to a temporary folder beside ``out`` and renamed into place: an interrupted run leaves no
    half-written checkpoint. ``out`` must not exist yet (or be an empty folder)."""
    from phase5_quantization.awq_checkpoint import save_awq_gemm
    from phase5_quantization.integration import quantize_for_generate

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} exists and is not an empty folder: choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantized = quantize_for_generate(model, method, group_size=group_size)
    except ValueError as e:
        raise ModelError(f"--method {method}: {e}") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_awq_gemm(quantized, staging)
        for name in TOKENIZER_FILES if model.path is not None else ():
            if (model.path / name).is_file():
                shutil.copy2(model.path / name, staging / name)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
