"""E.2: INT4 weights under continuous batching against bf16, measured in the engine benchmark's run.

Both engines are the table's batched rows (``shared.bench``): phase 4's continuous batching over the float
weights, and over phase 5's INT4 projections (RTN, quantized in the run: the speed is the kernels', whichever
quantizer chose the codes); same model, same requests, same ``max_num_seqs``, one process.

- **throughput**: the table's offline mixed workload (50 % short / 50 % long outputs), new tokens / wall time;
- **inter-token latency (ITL) p50 at N streams**: N requests submitted together to phase 4's ``EngineLoop``
  (the server's engine thread, without HTTP); each token's arrival is timed in its event callback, after its
  text is decoded (what a streaming client gets); p50 over the gaps between consecutive tokens of a request.

E.2a = INT4 ÷ bf16 throughput (≥ 0.9: quantized weights must not slow the batched path down); E.2b = INT4 ÷
bf16 ITL p50 at 16 streams (≤ 0.75: a 16-row decode step still reads every weight once, so 4-bit weights
should show). Defined at TinyLlama shapes on a CUDA GPU; elsewhere the figures are in the table, E.2 SKIPs.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Mapping, Sequence

E2_GPU_ONLY = "E.2 is defined at TinyLlama shapes on a CUDA GPU (SIZE=full); this run's figures are in the table"
E2_METRICS = ("e2_throughput_int4_vs_bf16", "e2_itl_p50_int4_vs_bf16")


def itl_p50(arrivals: Mapping[int, Sequence[float]]) -> float:
    """The median gap between consecutive token arrivals of the same request, over every request's gaps."""
    gaps = [b - a for times in arrivals.values() for a, b in zip(times[:-1], times[1:], strict=True)]
    if not gaps:
        raise ValueError("no request produced two tokens: there is no inter-token gap to measure")
    return statistics.median(gaps)


def stream_arrivals(engine, prompts: list[list[int]], max_tokens: int, *,
                    timeout_s: float = 600.0) -> dict[int, list[float]]:
    """Every prompt through an ``EngineLoop`` over phase 4's ``engine``, all submitted before the loop starts
    (so they run together from the first step); request id -> the arrival time of each of its tokens."""
    from phase4_scheduler.engine_loop import EngineLoop

    requests = [engine.make_request(p, max_tokens, ignore_eos=True) for p in prompts]
    arrivals: dict[int, list[float]] = {r.request_id: [] for r in requests}
    left, done = [len(requests)], threading.Event()

    def on_event(event) -> None:  # on the engine thread; an event without a token is caught below
        arrivals[event.request.request_id].append(time.perf_counter())
        if event.finished:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    loop = EngineLoop(engine, max_queue=max(len(requests), 1))
    for r in requests:
        loop.submit(r, on_event)
    loop.start()
    finished = done.wait(timeout_s)
    loop.shutdown(drain=finished, timeout=timeout_s)
    if loop.error is not None:
        raise loop.error
    if not finished:
        raise TimeoutError(f"{len(prompts)} streams of {max_tokens} tokens did not finish in {timeout_s:.0f} s")
    for r in requests:
        if r.finish_reason != "length" or len(arrivals[r.request_id]) != max_tokens:
            raise RuntimeError(f"stream {r.request_id}: {len(arrivals[r.request_id])} events for "
                               f"{len(r.output_ids)} of {max_tokens} tokens (finish: {r.finish_reason})")
    return arrivals


def e2_metrics(result, bf16, int4, *, defined_here: bool) -> None:
    """E.2's ratios from the table's bf16 batched row and INT4 row (``bench_rows.Row``), or why they are absent."""
    if not defined_here:
        for m in E2_METRICS:
            result.skip(m, E2_GPU_ONLY)
        return
    missing = next((f"{r.name}: {r.skip or 'not measured under continuous batching'}" for r in (bf16, int4)
                    if r.skip or not (r.throughput and r.itl_p50)), None)
    if missing:
        for m in E2_METRICS:
            result.skip(m, missing)
        return
    result.metrics["e2_throughput_int4_vs_bf16"] = int4.throughput / bf16.throughput
    result.metrics["e2_itl_p50_int4_vs_bf16"] = int4.itl_p50 / bf16.itl_p50
    result.metrics["e2_itl_p50_bf16_s"], result.metrics["e2_itl_p50_int4_s"] = bf16.itl_p50, int4.itl_p50


def e2_table(bf16, int4, *, streams: int, new_tokens: int, requests: int, max_num_seqs: int, group_size: int,
             float_dtype: str) -> str:
    """The two engines side by side, and INT4 ÷ float (``float_dtype``: bf16 on a GPU, fp32 on a CPU)."""

    def figures(r) -> tuple[str, str]:
        if r.skip:
            return "SKIP", "—"
        tput = "—" if r.throughput is None else f"{r.throughput:,.0f}"
        return tput, "—" if r.itl_p50 is None else f"{r.itl_p50 * 1e3:.3f}"

    lines = [f"| weights | offline throughput (tok/s) | ITL p50, {streams} streams (ms) | how it runs |",
             "|---|---|---|---|"]
    for label, r in ((float_dtype, bf16), (f"INT4 (RTN, group size {group_size})", int4)):
        tput, itl = figures(r)
        # the row's mode is "bs=1: …; many requests: <batched path>": E.2 is about the batched path
        lines.append(f"| {label} | {tput} | {itl} | {r.skip or r.mode.rpartition('many requests: ')[2]} |")
    if not (bf16.skip or int4.skip) and bf16.throughput and int4.throughput and bf16.itl_p50 and int4.itl_p50:
        lines.append(f"| INT4 ÷ {float_dtype} | {int4.throughput / bf16.throughput:.2f}× | "
                     f"{int4.itl_p50 / bf16.itl_p50:.2f}× | E.2a wants ≥ 0.9×, E.2b ≤ 0.75× |")
    return "\n".join(lines) + (
        f"\n\nSame model and requests, one process. Throughput: the offline mixed workload above ({requests} "
        f"requests, max_num_seqs {max_num_seqs}). ITL: {streams} requests of {new_tokens} new tokens submitted "
        "together to phase 4's `EngineLoop` (the server's engine thread, no HTTP), each token timed as its "
        "event (text decoded) reaches the callback; p50 over the gaps between consecutive tokens of a request. "
        "The INT4 weights are RTN codes quantized in this run (the kernels' speed does not depend on which "
        "quantizer chose them).")
