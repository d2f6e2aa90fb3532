"""Module 0 — the measuring layer every phase uses.

One copy of each helper for the whole project (it sits at the bottom of the layering: this package imports no phase):

- ``hardware``: device detection, datasheet table, measured copy-bandwidth and matmul peaks (cached).
- ``timing``: CUDA-event / perf_counter timing with warm-up, medians and input rotation; CUDA-graph capture.
- ``trace``: torch.profiler around a region → kernel table, GPU-busy %, launch count and gaps; ncu/nsys
  runners.
- ``roofline``: FLOP and byte counts of the field's operations; the roofline plot.
- ``report``: fills a phase's PROFILING_TEMPLATE.md into ``reports/<phase>/<device>.md`` + ``.json`` + PNG.
- ``check``: ``python -m module0_profiling.check <phase>`` runs a phase's bench and targets.
- ``cudac``: NVRTC/CuPy build of the phases' CUDA C (compile checks without a GPU).
- ``targets`` / ``impl``: the bench/checks contract and the IMPL switch.

Module 0's own lesson (the roofline, Nsight Systems, Nsight Compute) is ``framework.py`` (a batch-1 ``Linear(4096, 4096)`` loop that
synchronises every step) vs ``solution.py`` (the same loop captured in one CUDA graph), measured by
``bench.py`` and judged by ``checks.py`` (M0.1–M0.4).
"""
