"""INT4 weights in phase 0's engine: ``--quant rtn|awq|gptq`` (or a saved checkpoint) for generation.

- ``quantize_for_generate(model, method, calibration_ids=..., group_size=128)`` -> ``LinearLlama`` (INT4
  projections; ``method`` may also be a directory written by ``LinearLlama.save``);
- ``build_engine(model, method, *, max_seq_len, compile, calibration_ids, group_size)`` -> ``Int4Engine``,
  phase 0's ``Engine`` contract (``generate``, ``forward_logits``), the hook ``shared.quant`` looks for.

``Int4Engine`` is phase 0's ``SolutionEngine`` (static KV cache, CUDA graph of the decode step, the same
sampling/EOS/streaming loop) with the projections swapped for ``QuantLinear``: the norms come from the
quantized model too (AWQ divides them by its scales). Its decode step is phase 0's ``fused_decode_step``
with ``gemv=call_fused``: the four GEMVs of each layer are the W4A16 GEMV (RMSNorm, residual and SwiGLU
fused the same way: the row-layout GEMV of ``kernels.w4a16_rows`` for one row, the small-batch tensor-core
kernel of ``kernels.w4a16_rows_mma`` for 2–64) and phase 0's RoPE +
cache-write + attention kernels unchanged. Prefill runs the W4A16 GEMM over the same layout; the engine
holds each projection's codes once, in the kernel layout (``QuantLinear.release_storage``). On a CPU the
engine runs eagerly with the dequantizing fallback (correct, slow).
"""

from __future__ import annotations

from pathlib import Path

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.solution import SolutionEngine
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LayerWeights, LlamaWeights
from phase5_quantization.linear import QuantLinear
from phase5_quantization.model import LinearLlama

METHODS = {"rtn": "framework", "awq": "solution", "gptq": "phase5_quantization.gptq"}


def default_calibration_ids(model: LoadedModel) -> list[int]:
    """The bundled calibration text (``bench.CALIBRATION``) in ``model``'s tokenizer."""
    from phase5_quantization.bench import CALIBRATION

    return model.tokenizer.encode(CALIBRATION.read_text(), add_special_tokens=False)


def quantize_for_generate(model: LoadedModel, method: str, *, calibration_ids: list[int] | None = None,
                          group_size: int = 128, quantize_lm_head: bool = False) -> LinearLlama:
    """``model``'s projections as INT4 by ``method`` (rtn, awq, gptq, a module path, or a saved directory)."""
    from phase5_quantization import load_impl

    if Path(method).is_dir():
        return load_checkpoint(method, model)
    if method not in METHODS and "." not in method:
        raise ModelError(f"unknown --quant {method!r}: choose rtn, awq, gptq or a directory saved by LinearLlama.save")
    dense = LinearLlama.from_loaded(model, dtype=model.dtype)
    if method != "rtn" and calibration_ids is None:
        calibration_ids = default_calibration_ids(model)
    return load_impl(METHODS.get(method, method)).quantize(dense, calibration_ids, group_size=group_size,
                                                             quantize_lm_head=quantize_lm_head)


def load_checkpoint(path: str | Path, model: LoadedModel | None = None) -> LinearLlama:
    """A ``LinearLlama.save`` directory or an AutoAWQ GEMM checkpoint (``config.json`` with a
    ``quantization_config``: what ``titaninfer quantize`` writes), checked against ``model``'s config when given."""
    from phase5_quantization.awq_checkpoint import load_awq_gemm

    path = Path(path)
    if (path / "quant_config.json").is_file() or not (path / "config.json").is_file():
        q = LinearLlama.load(path, device=model.device if model is not None else "cpu")
    else:
        q = load_awq_gemm(path)
    if model is not None:
        ours, theirs = model.config.to_hf_dict(), q.config.to_hf_dict()
        diff = sorted(k for k in ours if k in theirs and ours[k] != theirs[k] and "token_id" not in k)
        if diff:
            raise ModelError(f"{path} was quantized from another model: {diff[0]} is {theirs[diff[0]]} there, "
                             f"{ours[diff[0]]} in --model")
        q = q.to(model.device, model.dtype)
    return q


def int4_weights(q: LinearLlama) -> LlamaWeights:
    """Phase 0's ``LlamaWeights`` whose projection fields hold ``QuantLinear``/``DenseLinear`` objects."""
    layers = [LayerWeights(input_norm=n1, qkv_proj=lin["qkv_proj"], o_proj=lin["o_proj"], post_norm=n2,
                           gate_up_proj=lin["gate_up_proj"], down_proj=lin["down_proj"])
              for lin, (n1, n2) in zip(q.linears, q.norms, strict=True)]
    return LlamaWeights(q.config, q.embed_tokens, layers, q.norm, q.lm_head)


def call_fused(x: torch.Tensor, linear, **fusion) -> torch.Tensor:
    """``kernels.step``'s ``gemv`` over ``QuantLinear``/``DenseLinear`` objects: the W4A16 kernel with the
    norm prologue and residual/SwiGLU epilogue fused (phase 0's GEMV for a float layer)."""
    return linear(x, **fusion)


def call_linear(x: torch.Tensor, linear) -> torch.Tensor:
    """``linear(x, w)`` for weights whose projections are ``QuantLinear``/``DenseLinear`` objects: what phase
    0's engine and phase 4's paged runner call instead of ``F.linear``."""
    return linear(x)


def prepare(quantized: LinearLlama, device: torch.device, dtype: torch.dtype) -> LinearLlama:
    """``quantized`` on ``device`` in ``dtype``; on CUDA each INT4 projection is repacked into the kernel
    layout now (never inside a graph capture) and its storage copy dropped: the codes exist once."""
    quantized = quantized.to(device, dtype)
    if device.type == "cuda":
        for layer in quantized.linears:
            for lin in layer.values():
                if isinstance(lin, QuantLinear):
                    lin.kernel_weight(device)
                    lin.release_storage()
        torch.cuda.empty_cache()
    return quantized


class Int4Engine(SolutionEngine):
    """Phase 0's solution engine over INT4 projections (module docstring)."""

    name = "int4"

    def __init__(self, model: LoadedModel, quantized: LinearLlama, **options):
        self.quantized = prepare(quantized, model.device, model.dtype)
        # KV cache, rotary tables, graph bookkeeping over the INT4 projections: no float copy is ever made
        super().__init__(model, weights=int4_weights(self.quantized), **options)
        kernel = self.device.type == "cuda"
        self.mode = ("W4A16 Triton kernels" + (" + CUDA graph" if self.use_graphs else ", eager") if kernel
                     else "INT4 weights dequantized per call (CPU fallback), eager")

    def weight_bytes(self) -> int:
        """Bytes of the projections as stored for the kernels (codes + scales + zero-points)."""
        return self.quantized.linear_bytes()

    # prefill and the eager decode step: phase 0's code with ``linear(h, w) = w(h)``
    def _layer(self, i, x, positions, attend, linear=None):
        return super()._layer(i, x, positions, attend, linear=call_linear)

    def _logits(self, x, linear=None):
        return super()._logits(x, linear=call_linear)

    def _triton_for(self, batch: int) -> bool:
        return self.device.type == "cuda"

    def _step_for(self, batch: int):
        if self._triton_for(batch):
            from phase0_prototype.kernels.step import triton_decode_step

            return lambda tokens, positions: triton_decode_step(self, tokens, positions, gemv=call_fused)
        return self.decode_step


def build_engine(model: LoadedModel, method: str, *, max_seq_len: int | None = None, compile: bool = True,
                 calibration_ids: list[int] | None = None, group_size: int = 128, **options) -> Int4Engine:
    """The hook ``shared.quant`` calls for ``--quant``: quantize (or load) then wrap in ``Int4Engine``."""
    quantized = quantize_for_generate(model, method, calibration_ids=calibration_ids, group_size=group_size)
    return Int4Engine(model, quantized, max_seq_len=max_seq_len, compile=compile, **options)
