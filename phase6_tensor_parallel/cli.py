"""The CLI behind ``python -m phase6_tensor_parallel generate``: greedy text from a tensor-parallel model.

Two ways to launch N ranks::

    torchrun --nproc-per-node 2 -m phase6_tensor_parallel generate --model random:tiny --prompt "hi"
    python -m phase6_tensor_parallel generate --tp 2 --model random:tiny --prompt "hi"   # spawns 2 processes

Every rank loads the same checkpoint and keeps its shard; rank 0 prints the text and the timing. NCCL is used
for ``--device cuda``, gloo for ``--device cpu``. Collectives time out after ``--timeout`` seconds so a rank
that died ends the others with an error instead of a hang. User mistakes end with one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from phase0_prototype.errors import ModelError
from phase6_tensor_parallel.dist_env import TPError, TPGroup


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="random:tiny", help="random:tiny, random:tinyllama, a directory or a hub id")
    ap.add_argument("--prompt", default="Hello", help="text to continue")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--impl", default="solution", help="framework, solution or a module path")
    ap.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tp", type=int, default=None, help="ranks; default: torchrun's WORLD_SIZE, else 1")
    ap.add_argument("--no-overlap", action="store_true", help="solution: no half-batch comm overlap")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a stuck collective fails")


def run_rank(group: TPGroup, args: argparse.Namespace) -> dict:
    """One rank's work: load, shard, generate. Returns what rank 0 prints."""
    import torch

    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel import load_impl
    from phase6_tensor_parallel.dist_env import local_device

    device = local_device(args.device, group)
    model = load_model(args.model, dtype=args.dtype, device=device)
    ids = model.tokenizer.encode(args.prompt)
    engine = load_impl(args.impl).build(model, group=group, overlap=not args.no_overlap,
                                        max_seq_len=len(ids) + args.max_new_tokens)
    del model  # the engine holds only this rank's shard
    t0 = time.perf_counter()
    new = engine.generate(torch.tensor([ids]), args.max_new_tokens)
    seconds = time.perf_counter() - t0
    return {"ids": new[0].tolist(), "seconds": seconds, "mode": engine.mode}


def report(result: dict, args: argparse.Namespace, tokenizer_text: str, world: int) -> None:
    print(tokenizer_text)
    n = len(result["ids"])
    print(f"[tp={world} {args.impl}: {result['mode']}] {n} tokens in {result['seconds']:.2f} s "
          f"({n / max(result['seconds'], 1e-9):.1f} tok/s)", file=sys.stderr)


def decode(args: argparse.Namespace, ids: list[int]) -> str:
    """Text of ``ids`` with the model's tokenizer only (no second copy of the weights on rank 0)."""
    from phase0_prototype.config import LlamaConfig
    from phase0_prototype.sources import resolve
    from phase0_prototype.tokenizer import load_tokenizer

    kind, path, preset = resolve(args.model)
    if kind == "random":
        return load_tokenizer(None, vocab_size=preset.vocab_size).decode(ids)
    config = LlamaConfig.from_hf_dir(path)
    return load_tokenizer(path, vocab_size=config.vocab_size, bos_id=config.bos_token_id,
                          eos_ids=config.eos_token_id).decode(ids)


def check_before_spawn(args: argparse.Namespace, world: int) -> None:
    """Refuse a TP size the model cannot be split by before starting any process."""
    from phase0_prototype.config import LlamaConfig
    from phase0_prototype.sources import resolve
    from phase6_tensor_parallel.solution import check_tp_size

    kind, path, preset = resolve(args.model)
    config = preset if kind == "random" else LlamaConfig.from_hf_dir(path)
    if args.impl == "solution":
        check_tp_size(config, world)
    if config.vocab_size % world:
        raise TPError(f"--tp {world} does not divide vocab_size={config.vocab_size}: choose a divisor")


def generate(args: argparse.Namespace) -> int:
    from phase6_tensor_parallel.dist_env import init_distributed, shutdown, spawn

    under_torchrun = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if under_torchrun:
        world = int(os.environ["WORLD_SIZE"])
        if args.tp is not None and args.tp != world:
            raise TPError(f"--tp {args.tp} but torchrun started {world} processes: drop --tp or match --nproc-per-node")
        group = init_distributed(args.device, timeout_s=args.timeout)
        try:
            result = run_rank(group, args)
        finally:
            shutdown()
        if group.rank == 0:
            report(result, args, decode(args, result["ids"]), world)
        return 0
    world = args.tp or 1
    if world < 1:
        raise TPError(f"--tp {world}: pass a positive number of ranks")
    check_before_spawn(args, world)
    if world == 1:
        result = run_rank(TPGroup(), args)
    else:
        result = spawn(run_rank, world, args, device=args.device, timeout_s=max(args.timeout * 5, 120),
                       collective_timeout_s=args.timeout)[0]
    report(result, args, decode(args, result["ids"]), world)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase6_tensor_parallel", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("generate", help="greedy generation on N tensor-parallel ranks"))
    args = ap.parse_args(argv)
    try:
        return generate(args)
    except (ModelError, TPError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

