"""Phase 5's INT4 weights in the engine: ``quant`` is ``None`` (float weights), ``rtn``, ``awq``, ``gptq``, a
module path exposing phase 5's ``quantize`` contract, or a directory saved by ``LinearLlama.save``.

The single-request engine is then phase 5's ``integration.build_engine``: phase 0's solution engine (static
KV cache, CUDA graph) over W4A16 projections, its calibration text chosen by phase 5.
"""

from __future__ import annotations

from phase0_prototype.errors import ModelError
from phase0_prototype.sources import LoadedModel


def build_engine(model: LoadedModel, method: str, *, max_seq_len: int | None = None, compile: bool = True,
                 group_size: int = 128):
    """The single-request engine with ``method``'s INT4 weights; a bad method or shape is one ``ModelError``."""
    from phase5_quantization.integration import build_engine as int4_engine

    try:
        return int4_engine(model, method, max_seq_len=max_seq_len, compile=compile, calibration_ids=None,
                           group_size=group_size)
    except ValueError as e:  # phase 5's ModelError too: a group size that does not divide, an unknown method
        raise ModelError(f"--quant {method}: {e}") from None
