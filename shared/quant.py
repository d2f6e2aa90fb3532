"""Phase 5's INT4 weights in the engine: ``quant`` is ``None`` (float weights), ``rtn``, ``awq``, ``gptq``, a
module path exposing phase 5's ``quantize`` contract, or a directory saved by ``LinearLlama.save``.

``titaninfer quantize`` writes the quantized model once, as an AutoAWQ GEMM checkpoint (phase 5's
``awq_checkpoint``) with the tokenizer beside it; ``--model DIR`` then serves it alone (no float weights are
ever loaded: embeddings and norms come from the checkpoint), or ``--model M --quant DIR`` beside M's.
The model is quantized (or loaded) once: phase 4's loop runs the ``QuantLinear`` objects as its projections
(``int4_runner_options``), phase 0's engine (``phase4=off``) as phase 5's ``Int4Engine``, and tensor
parallelism cuts them into shards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from phase0_prototype.errors import ModelError, read_json
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


# Decode-only steps up to this many rows run the fused step: the W4A16 kernels with the norm, residual and
# SwiGLU fused serve 1-64 rows (GEMV, then the small-batch tensor-core kernel); larger steps run unfused.
INT4_FUSED_ROWS = 64


def int4_runner_options(quantized) -> dict:
    """Phase 4's runner over ``quantized``'s projections: ``weights`` (phase 0's fused layout holding
    ``QuantLinear`` objects), ``linear(x, w) = w(x)`` and the fused decode step's ``gemv`` (W4A16 kernels)."""
    from phase5_quantization.integration import call_fused, call_linear, int4_weights

    return dict(weights=int4_weights(quantized), linear=call_linear, gemv=call_fused, gemv_rows=INT4_FUSED_ROWS)


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
        if model.path is not None and model.path.suffix == ".gguf":  # the tokenizer lives in the file's metadata
            from phase0_prototype.gguf_model import write_tokenizer

            write_tokenizer(model.path, staging)
        for name in TOKENIZER_FILES if model.path is not None else ():
            if (model.path / name).is_file():
                shutil.copy2(model.path / name, staging / name)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def is_int4_checkpoint(spec: str) -> bool:
    """A directory whose ``config.json`` has a ``quantization_config`` (an AutoAWQ checkpoint)."""
    config = Path(spec) / "config.json"
    try:
        return config.is_file() and "quantization_config" in read_json(config)
    except ModelError:  # unreadable: the float loader names the problem
        return False


def load_int4_checkpoint(spec: str, *, dtype: str, device) -> tuple[LoadedModel, object]:
    """``(model, quantized)`` of an AutoAWQ checkpoint: the ``LoadedModel`` holds the tokenizer, the config and
    the float tensors the engines read outside the projections (embeddings, final norm); the projections are
    ``quantized``'s INT4 ``QuantLinear`` objects, on ``device``."""
    from phase0_prototype.tokenizer import load_tokenizer
    from phase0_prototype.weights import parse_dtype
    from phase5_quantization.awq_checkpoint import load_awq_gemm
    from phase5_quantization.integration import prepare

    path = Path(spec)
    quantized = prepare(load_awq_gemm(path), torch.device(device), parse_dtype(dtype))
    cfg = quantized.config
    tokenizer = load_tokenizer(path, vocab_size=cfg.vocab_size, bos_id=cfg.bos_token_id, eos_ids=cfg.eos_token_id)
    state = {"model.embed_tokens.weight": quantized.embed_tokens, "model.norm.weight": quantized.norm}
    return LoadedModel(spec, cfg, state, tokenizer, path), quantized
