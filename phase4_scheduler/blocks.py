"""Phase 1's block manager for the scheduler: the Rust one when built, the Python reference otherwise.

Pool sizes are user input (``--num-blocks``, ``--block-size``, ``--num-cpu-blocks``): they are checked
here against phase 1's limits and any refusal is a one-line ``ModelError`` naming the flag, so the CLI
prints ``error: …`` instead of a traceback. A pool whose bookkeeping would take more than half the host's
memory is refused before it is built: an OS that overcommits would otherwise grant the reservation and
kill the process when the pages are touched (a refused reservation is a MemoryError, also a ModelError).
"""

from __future__ import annotations

import os
from numbers import Integral

from phase0_prototype.errors import ModelError

# Rust buddy pools: two u32 free-list links, an order tag, an allocated flag and a u32 ref count.
BOOKKEEPING_BYTES_PER_BLOCK = 14
# Prefix caching adds per GPU block an optional 64-bit hash and two u32 links of the eviction list.
PREFIX_BYTES_PER_BLOCK = 24


def host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def step_activation_bytes(cfg, dtype_bytes: int, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """A bound on one step's live activations: per token the residual, its normed copy, q|k|v, attention's
    output and [gate; up] with SwiGLU's output (the widest moment), plus fp32 logits (and a processed copy)
    for every sampled row. A bound, not a profile: vLLM measures the peak of a dummy step instead."""
    per_token = 3 * cfg.hidden_size + cfg.q_size + 2 * cfg.kv_size + 3 * cfg.intermediate_size
    return max_num_batched_tokens * per_token * dtype_bytes + 2 * max_num_seqs * cfg.vocab_size * 4


def blocks_for_memory(utilization: float, total: int, in_use: int, activation_bytes: int, block_bytes: int) -> int:
    """vLLM's ``--gpu-memory-utilization``: the engine may use ``utilization`` of the GPU's ``total`` memory;
    the KV pool gets what the memory already ``in_use`` (the weights) and a step's activations leave."""
    if not (isinstance(utilization, float | int) and 0 < utilization <= 1):
        raise ModelError(f"gpu_memory_utilization (--gpu-memory-utilization) must be in (0, 1], got {utilization}")
    blocks = int((utilization * total - in_use - activation_bytes) // block_bytes)
    if blocks < 1:
        raise ModelError(f"--gpu-memory-utilization {utilization}: {utilization * total / 2**30:.1f} GiB of the GPU's "
                         f"{total / 2**30:.1f} GiB leave no room for KV blocks after {in_use / 2**30:.1f} GiB in use and "
                         f"~{activation_bytes / 2**30:.1f} GiB of activations: raise it or lower --max-num-batched-tokens")
    return blocks


def check_size(spec, name: str, value) -> None:
    """``value`` within phase 1's ``spec`` (``limits.IntSpec``), or a ``ModelError`` naming the CLI flag."""
    if not (isinstance(value, Integral) and spec.lo <= value <= spec.hi):
        flag = "--" + name.replace("_", "-")
        raise ModelError(f"{name} ({flag}) must be an integer in [{spec.lo}, {spec.hi}], got {value}: {spec.hint}")


def check_kv_memory(num_bytes: int, device, what: str) -> None:
    """Refuse (one-line ``ModelError``) a KV pool of ``num_bytes`` that the device cannot hold: free GPU memory
    on CUDA, half the host's memory otherwise — before ``torch.empty`` fails with a traceback, or an
    overcommitting OS kills the process when the pages are first touched."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, where = torch.cuda.mem_get_info(device)[0], "free GPU memory"
    else:
        free, where = host_memory_bytes() // 2, "half of host memory"
    if free and num_bytes > free:
        raise ModelError(f"{what} needs {num_bytes / 2**30:.1f} GiB, over the {free / 2**30:.1f} GiB of {where}: "
                         "lower --num-blocks, --num-cpu-blocks or --max-num-seqs")


def make_block_manager(num_blocks: int, block_size: int = 16, *, watermark: float = 0.01,
                       impl: str | None = None, num_cpu_blocks: int = 0, prefix_caching: bool = False):
    """A ``BlockManager`` with ``policy="refuse"``: the scheduler picks its own preemption victims
    (priority-aware), so the manager must only say no. ``impl``: "solution", "reference" or None (best).
    ``num_cpu_blocks``: the CPU pool that preemption by swap moves victims' blocks to. ``prefix_caching``:
    phase 1's automatic prefix caching (asked of the implementation only when on)."""
    import phase1_rust_memory as p1
    from phase1_rust_memory import limits

    check_size(limits.NUM_GPU_BLOCKS, "num_blocks", num_blocks)
    check_size(limits.BLOCK_SIZE, "block_size", block_size)
    check_size(limits.NUM_CPU_BLOCKS, "num_cpu_blocks", num_cpu_blocks)
    pool = f"the KV block manager for {num_blocks} GPU + {num_cpu_blocks} CPU blocks"
    need = (num_blocks + num_cpu_blocks) * BOOKKEEPING_BYTES_PER_BLOCK
    need += num_blocks * PREFIX_BYTES_PER_BLOCK if prefix_caching else 0
    ram = host_memory_bytes()
    if ram and need > ram // 2:
        raise ModelError(f"{pool} needs at least {need / 2**30:.1f} GiB of host memory, over half of this "
                         f"host's {ram / 2**30:.1f} GiB: lower --num-blocks / --num-cpu-blocks")
    if impl is None:
        impl = "solution" if p1.native_available() else "reference"
    module = p1.load_impl(impl)
    options = {"prefix_caching": True} if prefix_caching else {}
    try:
        return module.BlockManager(num_blocks, block_size, num_cpu_blocks=num_cpu_blocks, watermark=watermark,
                                   policy="refuse", **options)
    except TypeError:
        if not prefix_caching:
            raise
        raise ModelError(f"the block manager of phase1={impl} has no prefix caching (no prefix_caching argument): "
                         "use phase1=solution or drop --enable-prefix-caching") from None
    except MemoryError as e:
        why = str(e) or "MemoryError"
        raise ModelError(f"{pool} does not fit in host memory ({why}): lower --num-blocks / --num-cpu-blocks"
                         ) from None
