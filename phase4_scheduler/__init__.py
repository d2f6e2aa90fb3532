"""Phase 4 — continuous batching, the paged model runner and the OpenAI-compatible server.

Contract (issue 8; not built yet): a ``Scheduler`` (framework: FCFS static batching; solution:
iteration-level continuous batching with a token budget, chunked prefill, priorities, SJF with aging,
preemption) over phase 1's ``BlockManager``; a ``ModelRunner`` doing batched prefill and decode over
phase 3's paged KV cache; a FastAPI server with ``/v1/completions``, ``/v1/chat/completions`` (SSE
streaming), ``/v1/models``, ``/health`` and ``/metrics``; a load generator. Targets P4.1–P4.5.
"""
