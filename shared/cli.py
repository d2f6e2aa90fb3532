"""``titaninfer`` — the command line of the assembled engine.

- ``titaninfer generate``: stream text from a model (default: the bundled model, offline, CPU is fine)
  and report tokens/s and achieved GB/s. Same flags as ``python -m phase0_prototype generate``, plus
  ``--rope cuda`` to rotate with phase 2's CUDA kernel.
- ``titaninfer serve``: the OpenAI-compatible server of phase 4 (``/v1/completions``, ``/v1/chat/completions``).
- ``titaninfer check <phase>``: run a phase's bench and targets (``make check-phaseN``).
- ``titaninfer hardware``: this machine's device, measured peaks and datasheet.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="titaninfer", description="TitanInfer: a TinyLlama inference engine, phase by phase.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{generate,serve,check,hardware}")
    from phase0_prototype import generate

    gen = sub.add_parser("generate", help="generate text and report tokens/s and GB/s")
    generate.add_arguments(gen)
    gen.add_argument("--rope", choices=["torch", "cuda"], default="torch",
                     help="RoPE implementation: phase 0's PyTorch one, or phase 2's CUDA kernel (GPU)")
    sub.add_parser("check", help="run a phase's targets (see `titaninfer check --help`)", add_help=False)
    sub.add_parser("hardware", help="device, measured peaks, datasheet", add_help=False)
    sub.add_parser("serve", help="the OpenAI-compatible server (phase 4; see `titaninfer serve --help`)", add_help=False)
    if argv and argv[0] == "check":
        from module0_profiling.check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "serve":
        from phase4_scheduler.__main__ import main as phase4_main

        return phase4_main(argv)
    if argv and argv[0] == "hardware":
        from module0_profiling.hardware import main as hardware_main

        return hardware_main(argv[1:])
    args = ap.parse_args(argv)
    options = {}
    if args.rope == "cuda":
        import torch

        if not torch.cuda.is_available() or args.device == "cpu":
            print("error: --rope cuda runs phase 2's CUDA kernel and needs a CUDA GPU; use --rope torch on CPU",
                  file=sys.stderr)
            return 2
        from phase2_rope_cuda.integration import phase0_rope_fn
        from phase2_rope_cuda.shapes import RopeInputError

        options["rope_fn"] = phase0_rope_fn("solution")
        try:
            return generate.main_with_args(args, **options)
        except RopeInputError as e:  # e.g. a head_dim the vectorised kernel is not built for
            print(f"error: --rope cuda: {e}; use --rope torch for this model", file=sys.stderr)
            return 2
    return generate.main_with_args(args, **options)


if __name__ == "__main__":
    raise SystemExit(main())
