"""Phase 5 — INT4 weight-only quantization.

Contract (issue 9; not built yet): quantizers (framework: RTN group-128 asymmetric; solution: AWQ;
GPTQ as the third column), INT4 packing (8 values per int32, group scales and zero-points) with
AutoAWQ GEMM-format import/export, a Triton W4A16 GEMM/GEMV, ``QuantLinear`` replacing phase 0's
linears, and an accuracy table on the bundled model's held-out text. Targets P5.1–P5.3.
"""
