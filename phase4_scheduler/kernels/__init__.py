"""Phase 4's fused elementwise kernels (Triton): the glue between the step's matmuls and attention."""
