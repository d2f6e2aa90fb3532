"""The peers phase 5 is measured against: torch's tinygemm INT4 kernel and AutoAWQ's quantizer.

- ``int4pack_linear``: our codes, scales and zero-points in ``torch.ops.aten._weight_int4pack_mm``'s format
  (gpt-fast's recipe: two codes per byte, even column in the high nibble, ``_convert_weight_to_int4pack``
  with 8 inner k-tiles; ``scales_and_zeros [K/group, N, 2]`` bf16 with tinygemm's float zero
  ``w = (q − 8)·s + z``, so ``z = (8 − zero_point)·s``). Same numbers as ours: the timing compares kernels.
- ``autoawq_state``: AutoAWQ (``pip install -e '.[awq]'``) run on the bundled model with our calibration
  text; its GEMM-format tensors come back through ``packing.from_awq_gemm`` and are evaluated by our code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from phase5_quantization.packing import QuantizedWeight


def int4pack_linear(qw: QuantizedWeight, device: torch.device | str = "cuda"):
    """``x -> x · dequant(W)ᵀ`` through ``_weight_int4pack_mm`` (bf16 activations); raises when the op is
    absent."""
    codes = qw.codes().to(device)
    n, k = codes.shape
    w_uint8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)  # [N, K/2]
    packed = torch.ops.aten._convert_weight_to_int4pack(w_uint8.contiguous(), 8)
    s = qw.scales.to(device).float()
    z = (8.0 - qw.zeros.to(device).float()) * s
    scales_and_zeros = torch.stack([s.t(), z.t()], dim=-1).to(torch.bfloat16).contiguous()  # [K/group, N, 2]
    group = qw.group_size

    def linear(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm(x, packed, group, scales_and_zeros)

    return linear


def int4pack_reason() -> str | None:
    """Why the tinygemm peer cannot run here (None when it can)."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return f"torch {torch.__version__} has no aten._weight_int4pack_mm"
    return None


def autoawq_reason(size: str = "full") -> str | None:
    """Why the AutoAWQ peer is not run (None when it is): it needs ``autoawq`` (the ``awq`` extra), and on a
    CPU its calibration forward passes take minutes, so only ``size="full"`` runs it."""
    try:
        import awq  # noqa: F401
        from awq import AutoAWQForCausalLM  # noqa: F401 - pulls in its own needs (datasets, accelerate)
    except ImportError as e:
        if getattr(e, "name", None) == "awq":
            return ("autoawq is not installed (pip install -e '.[awq]': autoawq 0.2.9 with accelerate, datasets "
                    "and zstandard; it imports and runs with this torch/transformers)")
        return f"autoawq does not import here: {e} (install what it names; autoawq 0.2.9 needs datasets, accelerate)"
    if size != "full":
        return "SIZE=small: AutoAWQ's own quantization takes minutes on a CPU; it runs with SIZE=full"
    return None


def autoawq_state(model_dir: str | Path, calibration_text: str, *, group_size: int = 128, n_samples: int = 32,
                  seq_len: int = 256) -> dict[str, torch.Tensor]:
    """AutoAWQ's quantization of the HF model in ``model_dir``: its saved checkpoint's tensors (HF names)."""
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    model = AutoAWQForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # AutoAWQ skips samples longer than max_calib_seq_len, then concatenates the rest and cuts blocks of that
    # length: hand it ~600-character pieces (~140 tokens), n_samples of them spread over the whole text
    words = calibration_text.split()
    pieces = [" ".join(words[i:i + 100]) for i in range(0, len(words), 100)]
    pieces = [pieces[int(j * len(pieces) / n_samples)] for j in range(min(n_samples, len(pieces)))]
    model.quantize(tokenizer, quant_config={"zero_point": True, "q_group_size": group_size, "w_bit": 4,
                                            "version": "GEMM"},
                   calib_data=pieces, max_calib_samples=len(pieces), max_calib_seq_len=seq_len)
    with tempfile.TemporaryDirectory() as out:
        model.save_quantized(out)
        from safetensors.torch import load_file

        tensors: dict[str, torch.Tensor] = {}
        for f in sorted(Path(out).glob("*.safetensors")):
            tensors.update(load_file(str(f)))
    return tensors  # HF names: INT4 triples of each projection, and the float tensors (norms carry AWQ's scales)
