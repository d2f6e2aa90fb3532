"""Tensor parallelism under phase 4's continuous batching: ranks started once, serving every step.

Rank 0 is the calling process: it runs phase 4's ``BatchingEngine`` (scheduler, block manager, sampling, text)
over its shard (``phase6_tensor_parallel.paged``). ``tp - 1`` worker processes start once, join the
process group (gloo on CPU, NCCL on GPUs, one GPU a rank), load the same checkpoint, keep their shard and a
paged runner with the same KV blocks, and loop: a step's shape (section offsets and scalars, pickled
through a pipe) -> its packed int32 inputs, broadcast from rank 0 -> ``runner.forward``, whose collectives
meet rank 0's -> logits dropped. Rank 0 sends both from its runner's ``on_forward`` hook, after writing the
tokens still on the device (overlapped steps) into the buffer, so workers never need sampled tokens.
``None`` through the pipe (``close``, also at interpreter exit) or the pipe's end (rank 0 died) stops one.
INT4 (``--quant``): quantization and TP are two transforms of one model — rank 0 quantizes (or loads) once,
every rank cuts the INT4 layers like matrices (``phase6_tensor_parallel.paged``).

Limits: no CUDA graphs (a replay would skip the hook) and no fused GEMV decode step (a row-parallel sum
cannot fuse its residual before the all-reduce); no preemption by swap (the KV copies are not sent);
one pool per process (torch's default process group); the workers reload the checkpoint from its files
(an INT4 model: from a temporary copy rank 0 writes, one INT4 copy of the model on disk while they load);
a failed step (a rank's error, a collective timeout) leaves the pool unusable: close the engine.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from phase0_prototype.errors import ModelError
from phase0_prototype.sources import LoadedModel
from phase4_scheduler.step_inputs import DeviceStep, HostStep

START_TIMEOUT_S = 300.0  # a worker's load + shard
STOP_TIMEOUT_S = 10.0


def check(config, tp: int, device: str, layout: str, *, quant: str | None = None, group_size: int = 128) -> None:
    """Refuse a TP size the model or the machine cannot run, before starting anything. ``quant``: phase 5's
    method, quantizing with ``group_size`` (whose groups a row-parallel shard must keep whole), or a checkpoint
    directory, whose own group size is checked when rank 0 shards it (still before any worker starts)."""
    from phase6_tensor_parallel.dist_env import TPError
    from phase6_tensor_parallel.paged import check_layout

    if tp < 1:
        raise ModelError(f"tp={tp}: pass a positive number of ranks")
    try:
        check_layout(config, tp, layout, group_size if quant is not None and not Path(quant).is_dir() else None)
    except TPError as e:
        raise ModelError(str(e)) from None
    if device == "cuda" and torch.cuda.device_count() < tp:
        raise ModelError(f"tp={tp} needs {tp} GPUs but {torch.cuda.device_count()} are visible: "
                         f"use --tp {max(torch.cuda.device_count(), 1)} or --device cpu")


@dataclass(frozen=True)
class StepShape:
    """What ``DeviceStep`` reads of a ``HostStep`` besides the buffer: picklable, a few hundred bytes."""

    size: int
    offsets: dict
    width: int
    all_rows_sample: bool
    later_spans: list
    num_decode_tokens: int
    num_fresh_tokens: int
    max_fresh: int
    max_context: int
    graph: bool = False
    has_pending: bool = False  # rank 0 resolved the device-side tokens into the buffer

    @classmethod
    def of(cls, host: HostStep) -> "StepShape":
        return cls(host.size, host.offsets, host.width, host.all_rows_sample, host.later_spans,
                   host.num_decode_tokens, host.num_fresh_tokens, host.max_fresh, host.max_context)


@dataclass(frozen=True)
class RankSpec:
    """What a worker builds: the checkpoint (its directory, or a random model's name), its shard layout and
    the runner's KV cache."""

    model: str
    dtype: str
    device: str
    seed: int
    layout: str
    num_blocks: int
    block_size: int
    attention_impl: str | None
    int4: str | None = None  # rank 0's INT4 model (``LinearLlama.save``), loaded instead of ``model``
    rope: str | None = None  # phase 2's RoPE implementation, None: the reference


def _rope(name: str | None):
    """The runner's ``rope``: phase 2's implementation ``name`` as phase 0's ``RopeFn``, or None."""
    if name is None:
        return None
    from phase2_rope_cuda.integration import phase0_rope_fn

    return phase0_rope_fn(name)


def start_engine(model: LoadedModel, config, *, tp: int, layout: str, seed: int, quantized=None,
                 rope: str | None = None):
    """Rank 0's phase 4 ``BatchingEngine`` (``config``: its ``BatchingConfig``) over ``tp`` ranks:
    ``(engine, pool)``. ``quantized``: phase 5's INT4 ``LinearLlama`` of ``model`` to shard instead of its
    float weights; ``rope``: phase 2's RoPE implementation on every rank."""
    from phase4_scheduler.engine import BatchingEngine
    from phase5_quantization.integration import int4_weights
    from phase6_tensor_parallel.dist_env import TPError, TPGroup
    from phase6_tensor_parallel.paged import shard

    if config.scheduler.preemption == "swap":
        raise ModelError("preemption by swap with tensor parallelism is not built: "
                         "use preemption='recompute' or --tp 1")
    if dist.is_initialized():
        raise ModelError("a tensor-parallel engine is already running in this process: close() it first")
    config = replace(config, cuda_graphs=False)  # a graph replay would not reach the on_forward hook
    weights = int4_weights(quantized) if quantized is not None else None
    try:
        shard_model, weights, linear = shard(model, TPGroup(0, tp), layout, weights)
    except TPError as e:  # an INT4 checkpoint whose groups a shard would split
        raise ModelError(str(e)) from None
    engine = BatchingEngine(shard_model, config, weights=weights, linear=linear, gemv=None, rope=_rope(rope))
    source = str(model.path) if model.path is not None else model.name  # random:* models: name and seed
    with tempfile.TemporaryDirectory(prefix="titaninfer-tp-int4-") if quantized is not None else nullcontext() as int4:
        if int4 is not None:
            quantized.save(int4)  # the workers load it while the pool starts; deleted once all are ready
        spec = RankSpec(source, str(model.dtype).removeprefix("torch."), model.device.type, seed, layout,
                        engine.runner.num_blocks, engine.runner.block_size, config.attention_impl, int4, rope)
        return engine, WorkerPool(engine.runner, spec, tp)


class WorkerPool:
    """Ranks 1..tp-1 as processes, started once; rank 0 (this process) drives them through ``runner``."""

    def __init__(self, runner, spec: RankSpec, tp: int):
        from phase6_tensor_parallel.dist_env import DEFAULT_TIMEOUT_S, free_port, init_distributed

        self.runner, self.conns, self.processes = runner, [], []
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked CUDA or thread state
        port = free_port()
        atexit.register(self.close)
        try:
            for rank in range(1, tp):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(rank, tp, port, spec, child), daemon=True,
                                name=f"titaninfer-tp-rank{rank}")
                p.start()
                child.close()
                self.conns.append(parent)
                self.processes.append(p)
            self.group = init_distributed(spec.device, rank=0, world=tp,
                                          init_method=f"tcp://127.0.0.1:{port}", timeout_s=DEFAULT_TIMEOUT_S)
            for rank, conn in enumerate(self.conns, 1):
                _expect_ready(rank, conn)
        except BaseException:
            self.close()
            raise
        runner.on_forward = self.send_step

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def send_step(self, inputs: DeviceStep) -> None:
        """The runner's ``on_forward``: the step's shape to every worker, then its inputs by broadcast."""
        if inputs.resolve_pending:  # tokens still on the device (overlap): the buffer gets their values
            inputs.tokens.copy_(self.runner.input_tokens(inputs))
        shape = StepShape.of(inputs.host)
        for rank, conn in enumerate(self.conns, 1):
            try:
                conn.send(shape)
            except OSError:
                raise RuntimeError(f"tensor-parallel rank {rank} has exited: close the engine and start "
                                   "a new one") from None
        # The sections are views of one buffer and ``tokens`` is the first, at its start.
        self.group.broadcast(torch.as_strided(inputs.tokens, (shape.size,), (1,), 0))

    def close(self) -> None:
        """Stop the workers (each leaves its loop and the group), then leave the group. Idempotent."""
        from phase6_tensor_parallel.dist_env import shutdown

        atexit.unregister(self.close)
        if getattr(self.runner, "on_forward", None) == self.send_step:
            self.runner.on_forward = None
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:  # that worker is gone already
                pass
        for p in self.processes:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():  # stuck in a collective: nothing else would end it
                p.terminate()
                p.join(STOP_TIMEOUT_S)
        for conn in self.conns:
            conn.close()
        self.conns, self.processes = [], []
        shutdown()


def _expect_ready(rank: int, conn) -> None:
    if not conn.poll(START_TIMEOUT_S):
        raise ModelError(f"tensor-parallel rank {rank} did not load its shard within {START_TIMEOUT_S:.0f} s")
    try:
        status, detail = conn.recv()
    except EOFError:
        raise ModelError(f"tensor-parallel rank {rank} exited while loading its shard (its stderr says "
                         "why)") from None
    if status != "ready":
        raise ModelError(f"tensor-parallel rank {rank} failed to load its shard: {detail}")


def _load(spec: RankSpec, device: torch.device) -> tuple[LoadedModel, object]:
    """A worker's model: the float checkpoint (weights: fused later), or rank 0's INT4 copy with its fused
    ``LlamaWeights`` over ``QuantLinear`` objects (the model then holds the config and the embedding only)."""
    if spec.int4 is None:
        from phase0_prototype.sources import load_model

        return load_model(spec.model, dtype=spec.dtype, device=device, seed=spec.seed), None
    from phase0_prototype.weights import parse_dtype
    from phase5_quantization.integration import int4_weights, load_checkpoint, prepare

    quantized = prepare(load_checkpoint(spec.int4), device, parse_dtype(spec.dtype))
    state = {"model.embed_tokens.weight": quantized.embed_tokens}
    return LoadedModel(spec.model, quantized.config, state, None, None), int4_weights(quantized)


def _worker(rank: int, world: int, port: int, spec: RankSpec, conn) -> None:
    """A worker process: join the group, build the shard and its runner, then run steps until told to stop."""
    from phase3_paged_attention import load_impl as load_attention
    from phase4_scheduler.runner import PagedModelRunner
    from phase6_tensor_parallel.dist_env import DEFAULT_TIMEOUT_S, init_distributed, local_device, shutdown
    from phase6_tensor_parallel.paged import shard

    if spec.device == "cpu":
        torch.set_num_threads(1)  # ranks share the cores: see phase6_tensor_parallel.dist_env._entry
    try:
        group = init_distributed(spec.device, rank=rank, world=world, init_method=f"tcp://127.0.0.1:{port}",
                                 timeout_s=DEFAULT_TIMEOUT_S)
        try:
            model, full = _load(spec, local_device(spec.device, group))
            shard_model, weights, linear = shard(model, group, spec.layout, full)
            del model, full  # the runner keeps this rank's shard only
            attention = load_attention(spec.attention_impl) if spec.attention_impl is not None else None
            runner = PagedModelRunner(shard_model, spec.num_blocks, spec.block_size, attention=attention,
                                      cuda_graphs=False, weights=weights, linear=linear, gemv=None,
                                      rope=_rope(spec.rope))
        except Exception as e:
            lines = str(e).strip().splitlines()
            conn.send(("error", f"{type(e).__name__}: {lines[0] if lines else ''}"))
            return
        conn.send(("ready", os.getpid()))
        with torch.inference_mode():
            while True:
                try:
                    shape = conn.recv()
                except EOFError:  # rank 0 is gone
                    return
                if shape is None:
                    return
                buffer = torch.empty(shape.size, dtype=torch.int32, device=runner.device)
                group.broadcast(buffer)
                runner.forward(DeviceStep(shape, buffer, block_size=runner.block_size))
    finally:
        conn.close()
        shutdown()
