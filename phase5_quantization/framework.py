"""Round-to-nearest (RTN) INT4: the baseline every smarter quantizer is measured against.

Each group of 128 input columns of each row gets the scale and zero-point that map its [min, max] (0
included) onto codes 0..15, and every weight is rounded to its nearest code: ``|w - deq(w)| ≤ s / 2``.

What is wrong with it, on purpose: it treats every weight alike. A weight multiplied by a large
activation (Llama has a few input channels with activations 10–100× the rest) contributes its rounding
error × that activation to the output, so the handful of weights that matter most get no more precision
than the rest. It also never looks at data: no calibration, no error feedback. ``solution`` (AWQ) and
``gptq`` fix those two things; all three produce the same packed format (``packing``).
"""

from __future__ import annotations

import torch

from phase5_quantization.model import LINEAR_NAMES, LinearLlama, QuantLinear
from phase5_quantization.packing import (
    GROUP_SIZE,
    QuantizedWeight,
    check_divisible,
    from_codes,
    group_params,
    quantize_codes,
)


def quantize_weight(w: torch.Tensor, group_size: int = GROUP_SIZE, *, name: str = "weight",
                    clip: torch.Tensor | None = None) -> QuantizedWeight:
    """RTN of one matrix ``[out, in]`` (``clip``: per-group range shrink factors, AWQ's clipping)."""
    check_divisible(name, tuple(w.shape), group_size)
    scales, zeros = group_params(w, group_size, clip)
    return from_codes(quantize_codes(w, scales, zeros, group_size), scales, zeros, group_size)


def quantize_linears(model: LinearLlama, fn, *, method: str, group_size: int = GROUP_SIZE,
                     quantize_lm_head: bool = False, progress: str | None = None) -> LinearLlama:
    """A new ``LinearLlama`` whose projections are ``QuantLinear(fn(layer, name, dense_weight))``.

    ``progress``: a label for a progress bar over the layers (on stderr, shown on a terminal only)."""
    for i, layer in enumerate(model.linears):  # every shape checked before any work
        for name in LINEAR_NAMES:
            check_divisible(f"layers.{i}.{name}", tuple(layer[name].dense().shape), group_size)
    layers = list(enumerate(model.linears))
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc=progress, unit="layer", disable=None)
    linears = [{name: QuantLinear(fn(i, name, layer[name].dense().float())) for name in LINEAR_NAMES}
               for i, layer in layers]
    head = model.lm_head
    if quantize_lm_head:
        head = QuantLinear(quantize_weight(head.dense().float(), group_size, name="lm_head"))
    return LinearLlama(model.config, model.embed_tokens, model.norms, linears, model.norm, head, method)


def quantize(model: LinearLlama, calibration_ids=None, *, group_size: int = GROUP_SIZE,
             quantize_lm_head: bool = False) -> LinearLlama:
    """RTN every projection (``calibration_ids`` accepted for the common contract and ignored)."""
    return quantize_linears(
        model, lambda i, name, w: quantize_weight(w, group_size, name=f"layers.{i}.{name}"),
        method="rtn", group_size=group_size, quantize_lm_head=quantize_lm_head)
