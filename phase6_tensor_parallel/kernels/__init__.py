"""Triton kernels of the phase-6 decode step (a fused RMSNorm; attention comes from phase 0's kernels)."""
