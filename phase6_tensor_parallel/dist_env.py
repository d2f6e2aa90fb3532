"""The process group: who am I (rank), how many are we (world), and the collectives the layers call.

``TPGroup`` is what every layer holds. With ``world == 1`` no process group exists and every collective
is the identity, so the TP=1 model is the same code path with the communication taken out.

Failure policy: ``init_distributed`` sets a short ``timeout`` so a rank that died (or never came) makes the
others fail with an error naming the timeout instead of hanging for torch's default 10–30 minutes;
``spawn`` (tests, ``generate --tp N`` without torchrun) bounds the whole run and kills the survivors when
one rank fails.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 60.0


class TPError(RuntimeError):
    """A user-facing tensor-parallel error (bad world size, a rank that failed): one line, no traceback."""


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    world: int = 1
    # ``oneshot.OneShotAllReduce`` (CUDA IPC) for the small messages it ``fits``; NCCL / gloo for the rest
    oneshot: Any = field(default=None, compare=False, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # --- collectives (identity at world 1) ------------------------------------------------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over ranks, in place (the row-parallel partial sums)."""
        if self.oneshot is not None and self.oneshot.fits(x):
            return self.oneshot(x)
        if self.distributed:
            dist.all_reduce(x)
        return x

    def all_reduce_async(self, x: torch.Tensor):
        """Start the in-place sum and return the work handle (``None`` at world 1): ``.wait()`` before reading ``x``."""
        return dist.all_reduce(x, async_op=True) if self.distributed else None

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dimension, in rank order."""
        if not self.distributed:
            return x
        # One collective into one buffer (rank slices stacked on dim 0), then moved to the last dim: no list of
        # per-rank tensors and no extra concatenation kernel per rank.
        flat = x.contiguous().view(1, -1)
        out = torch.empty(self.world, flat.shape[1], dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, flat)
        return out.view(self.world, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], self.world * x.shape[-1])

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.distributed:
            dist.broadcast(x, src)
        return x


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "cpu", *, rank: int | None = None, world: int | None = None,
                     init_method: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> TPGroup:
    """Join (or create) the default process group; rank/world from torchrun's env when not given."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if world == 1:
        return TPGroup(0, 1)
    if torch.device(device).type == "cuda":
        if torch.cuda.device_count() < world:
            raise TPError(f"tensor parallelism {world} needs {world} GPUs but {torch.cuda.device_count()} are visible: "
                          f"use --tp {max(torch.cuda.device_count(), 1)} or --device cpu")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), init_method=init_method or "env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return TPGroup(rank, world)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str, group: TPGroup) -> torch.device:
    """``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``); ``cpu`` stays ``cpu``."""
    if torch.device(device).type == "cuda" and group.distributed:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", group.rank)))
    return torch.device(device)


# --- spawn: N local processes without torchrun (tests, generate --tp N) -----------------------------

def _entry(rank: int, fn: Callable, world: int, port: int, device: str, timeout_s: float, out_dir: str, args: tuple,
           kwargs: dict):
    if torch.device(device).type == "cpu":
        # N ranks share the cores: one intra-op thread each, or OpenMP spin-waits starve gloo's threads
        # and every collective waits milliseconds for a descheduled peer.
        torch.set_num_threads(1)
    try:
        group = init_distributed(device, rank=rank, world=world, init_method=f"tcp://127.0.0.1:{port}",
                                 timeout_s=timeout_s)
        result = fn(group, *args, **kwargs)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException as e:
        (Path(out_dir) / f"rank{rank}.err").write_text(f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        shutdown()


def spawn(fn: Callable[..., Any], world: int, *args: Any, device: str = "cpu",
          timeout_s: float = 120.0, collective_timeout_s: float = 30.0, kwargs: dict | None = None) -> list[Any]:
    """Run ``fn(group, *args, **kwargs)`` on ``world`` fresh processes; return each rank's result (rank order).

    ``fn`` must be importable (a module-level function). A rank that raises or a run that exceeds
    ``timeout_s`` ends every process and raises ``TPError`` naming the first failing rank.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="tp_spawn_") as out_dir:
        ctx = mp.start_processes(_entry, args=(fn, world, free_port(), device, collective_timeout_s, out_dir, args,
                                                    kwargs or {}),
                                 nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    raise TPError(f"tensor-parallel run of {world} ranks exceeded {timeout_s:.0f} s: a rank hung")
        except mp.ProcessRaisedException as e:
            # The first error written is the cause; the others are ranks whose collective lost its peer.
            errs = sorted(Path(out_dir).glob("rank*.err"), key=lambda p: p.stat().st_mtime_ns)
            first = errs[0].read_text().splitlines()[0] if errs else str(e).strip().splitlines()[-1]
            raise TPError(f"tensor-parallel run failed: {first}") from None
        except mp.ProcessExitedException as e:
            raise TPError(f"tensor-parallel run failed: a rank exited ({e})") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
