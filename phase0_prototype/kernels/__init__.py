"""Triton kernels of the solution's decode step (imported lazily: only the Triton decode path needs them).

- ``gemv.fused_gemv``: ``x · Wᵀ`` for a handful of rows at close to copy bandwidth, with an RMSNorm
  prologue and a residual-add or SiLU·up epilogue fused in;
- ``decode_attention.rope_cache_attention``: RoPE of q and k, the K/V cache write and attention of one new
  query per sequence over the static cache (split over the sequence, then one combine kernel).

On a CPU they run under ``TRITON_INTERPRET=1`` (the tests do that at small shapes).
"""
