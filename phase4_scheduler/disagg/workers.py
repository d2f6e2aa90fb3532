"""The two instances of a disaggregated engine, each a process running a full ``BatchingEngine``.

- **Prefill worker** (vLLM's kv_producer): takes a request, runs its prompt (chunked prefill within its
  own token budget), samples the first token, then exports the prompt's K/V (``kv_transfer``) and sends
  it with the first token straight to the decode worker (the KV never goes through the router); the
  router hears of the first token (TTFT). Its requests ``keep_kv``: their blocks stay allocated after
  the first token until the export is done (``BatchingEngine.release_kv``).
- **Decode worker** (kv_consumer): admits each request with its prompt already computed
  (``BatchingEngine.add_prefilled``); once its scheduler has allocated the blocks, the K/V is imported
  into them, and the request decodes to its end; the router gets the tokens.

Each has its own scheduler, block manager, KV pool and copy of the weights. Pipes carry small tuples;
``None`` from the router (or the router's end of the pipe closing) stops a worker; ``KV_FREE`` asks
for its free KV blocks. A request's own error
comes back as its finish reason (``"error: ..."``); an error of the loop itself as ``("fatal", one line)``.
Timestamps are ``time.perf_counter()``, one monotonic clock for every process of the machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

import torch

from phase0_prototype.sampling import SamplingParams
from phase4_scheduler.disagg.kv_transfer import KVPayload, export_kv, import_kv
from phase4_scheduler.engine import BatchingConfig, BatchingEngine, describe_error, error_reason
from phase4_scheduler.request import Request

ROLES = ("prefill", "decode")
KV_FREE = "kv_free"  # the router asks how many KV blocks are free (idle workers: all of them)


@dataclass(frozen=True)
class Job:
    """One request as the router sends it; ``rid`` is the router's id."""

    rid: int
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds: the model (a directory or a random model's name), its engine's configuration,
    and on CPU its share of the cores (the instances and the router share the machine)."""

    model: str
    dtype: str
    device: str
    seed: int
    config: BatchingConfig
    threads: int = 1


def _build(spec: WorkerSpec) -> BatchingEngine:
    from phase0_prototype.sources import load_model

    device = torch.device(spec.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # set_device needs an index
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Triton launches on the current device
    else:
        torch.set_num_threads(spec.threads)
    engine = BatchingEngine(load_model(spec.model, dtype=spec.dtype, device=device, seed=spec.seed), spec.config)
    if engine.runner.graphs is not None:
        engine.runner.graphs.warmup()  # every decode bucket's graph before the first request, as a server does
    return engine


def _kv_free(engine: BatchingEngine) -> tuple[str, int, int]:
    return (KV_FREE, engine.blocks.num_free_gpu_blocks, engine.blocks.num_gpu_blocks)


def _make(engine: BatchingEngine, job: Job) -> Request:
    return engine.make_request(job.prompt_ids, job.max_tokens, job.sampling, stop=job.stop,
                               ignore_eos=job.ignore_eos)


def serve(role: str, spec: WorkerSpec, ctrl, kv_conn) -> None:
    """A worker process: build the engine, say ``("ready", pid)`` (or ``("error", why)``), then loop."""
    try:
        try:
            engine = _build(spec)
        except Exception as e:  # noqa: BLE001 - reported to the router as one line
            ctrl.send(("error", describe_error(e)))
            return
        ctrl.send(("ready", os.getpid()))
        try:
            (_prefill_loop if role == "prefill" else _decode_loop)(engine, ctrl, kv_conn)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return  # a peer is gone: the router names the dead process
        except Exception as e:  # noqa: BLE001 - the loop's own failure: one line to the router
            try:
                ctrl.send(("fatal", f"the {role} worker failed: {describe_error(e)}"))
            except OSError:
                pass
    finally:
        ctrl.close()
        kv_conn.close()


def _prefill_loop(engine: BatchingEngine, ctrl, kv_out) -> None:
    jobs: dict[int, Job] = {}  # engine request id -> the router's job
    while True:
        while not engine.has_unfinished() or ctrl.poll():  # idle: block for the next request
            job = ctrl.recv()
            if job is None:
                return
            if job == KV_FREE:
                ctrl.send(_kv_free(engine))
                continue
            try:
                r = _make(engine, job)  # checked against the request's real max_tokens
                r.max_tokens, r.keep_kv = 1, True  # this side samples the first token only
                engine.add(r)
            except Exception as e:  # noqa: BLE001 - this request's error, not the worker's
                ctrl.send(("first", job.rid, None, error_reason(e), time.perf_counter()))
                continue
            jobs[r.request_id] = job
        for event in engine.step():
            if event.finished:
                r = event.request
                try:
                    _hand_over(engine, jobs.pop(r.request_id), r, ctrl, kv_out)
                finally:
                    engine.release_kv(r.request_id)


def _hand_over(engine: BatchingEngine, job: Job, r: Request, ctrl, kv_out) -> None:
    """The first token to the router; the prompt's K/V and the job to the decode worker unless it is done."""
    first = r.output_ids[0] if r.output_ids else None
    when = r.first_token_time or time.perf_counter()
    if r.finish_reason == "length" and job.max_tokens > 1:
        payload = export_kv(engine.runner.kv, engine.blocks.block_table(r.request_id), len(r.prompt_ids))
        ctrl.send(("first", job.rid, first, None, when))
        kv_out.send((job, first, when, payload))
    else:  # EOS or a stop string on the first token, max_tokens == 1, or an error
        ctrl.send(("first", job.rid, first, r.finish_reason, when))


def _decode_loop(engine: BatchingEngine, ctrl, kv_in) -> None:
    jobs: dict[int, tuple[Job, dict]] = {}  # engine request id -> (the router's job, transfer figures)
    while True:
        for conn in wait([ctrl, kv_in], timeout=0 if engine.has_unfinished() else None):
            while conn.poll():
                message = conn.recv()
                if message is None:  # (from the router)
                    return
                if message == KV_FREE:
                    ctrl.send(_kv_free(engine))
                    continue
                _admit(engine, *message, jobs, ctrl)
        for event in engine.step():
            if event.finished:
                r = event.request
                job, transfer = jobs.pop(r.request_id)
                ctrl.send(("done", job.rid, list(r.output_ids), r.finish_reason, r.finish_time, transfer))


def _admit(engine: BatchingEngine, job: Job, first: int, first_time: float, payload: KVPayload, jobs: dict,
           ctrl) -> None:
    transfer = {"kv_bytes": payload.nbytes, "export_s": payload.export_s, "import_s": 0.0}

    def load(kv, block_table) -> None:
        transfer["import_s"] = import_kv(kv, block_table, payload)

    try:
        r = _make(engine, job)
        r.output_ids.append(first)
        r.num_computed, r.first_token_time = len(r.prompt_ids), first_time
        engine.add_prefilled(r, load)
    except Exception as e:  # noqa: BLE001 - this request's error, not the worker's
        ctrl.send(("done", job.rid, [first], error_reason(e), time.perf_counter(), transfer))
        return
    jobs[r.request_id] = (job, transfer)
