"""``python -m phase4_scheduler serve --model kjv-llama-18m --port 8000`` and ``... loadgen --url ...``."""

from __future__ import annotations

import argparse
import sys

from phase0_prototype.errors import ModelError


def _serve(args) -> int:
    from phase4_scheduler.plan import SchedulerConfig
    from phase4_scheduler.serve import build_app, run_foreground

    sched = SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                            policy=args.policy, max_wait_steps=args.max_wait_steps or None,
                            preemption=args.preemption)
    app, _ = build_app(args.model, device=args.device, dtype=args.dtype, scheduler=sched, num_blocks=args.num_blocks,
                       block_size=args.block_size, max_queue=args.max_queue, swap_space=args.swap_space,
                       num_cpu_blocks=args.num_cpu_blocks)
    return run_foreground(app, host=args.host, port=args.port,
                          announce=lambda url: print(f"serving {args.model} on {url}/v1 (Ctrl-C drains and stops)",
                                                     file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phase4_scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    s.add_argument("--model", default="kjv-llama-18m")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda when available")
    s.add_argument("--dtype", default=None, help="default: bf16 on cuda, fp32 on cpu")
    s.add_argument("--max-num-seqs", type=int, default=32)
    s.add_argument("--max-num-batched-tokens", type=int, default=512)
    s.add_argument("--num-blocks", type=int, default=None)
    s.add_argument("--block-size", type=int, default=16)
    s.add_argument("--policy", default="sjf", choices=["fcfs", "priority", "sjf"])
    s.add_argument("--max-wait-steps", type=int, default=64, help="aging bound in steps (0: no aging)")
    s.add_argument("--max-queue", type=int, default=256)
    s.add_argument("--preemption", default="recompute", choices=["recompute", "swap"],
                   help="when KV blocks run out: recompute the victim later, or swap its blocks to host memory")
    s.add_argument("--swap-space", type=float, default=4.0, help="GiB of host KV blocks for --preemption swap")
    s.add_argument("--num-cpu-blocks", type=int, default=None, help="the swap pool in blocks (overrides --swap-space)")
    g = sub.add_parser("loadgen", help="load a running server (or the engine offline) and print latency figures")
    from phase4_scheduler.loadgen import add_arguments

    add_arguments(g)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            if args.device is None:
                import torch

                args.device = "cuda" if torch.cuda.is_available() else "cpu"
            args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
            return _serve(args)
        else:
            from phase4_scheduler.loadgen import main as loadgen_main

            loadgen_main(args)
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
