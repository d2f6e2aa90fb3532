"""``python -m phase7_dit_parallel sample``: DDIM latents from a DiT, on one device or over N ranks.

    python -m phase7_dit_parallel sample --preset tiny --latent 8 --labels 1,2 --steps 20
    python -m phase7_dit_parallel sample --preset s2 --latent 32 --sp 2 --parallel ring   # 2 gloo ranks

The weights are seeded random (``--seed``): the output is structured noise, and the point is the step's
cost and that ``--sp N`` gives the one-device latents (every rank runs the same sampler on its shard of the
tokens; rank 0's latents are saved). ``--out`` writes them as a ``.pt`` file (written whole, then renamed).
User mistakes end with one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from phase6_tensor_parallel.dist_env import TPError, TPGroup, local_device, spawn
from phase7_dit_parallel import PRESETS, load_impl
from phase7_dit_parallel.sampler import sample
from phase7_dit_parallel.weights import random_weights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_labels(text: str, num_classes: int) -> list[int]:
    try:
        labels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TPError(f"--labels {text!r} is not a comma-separated list of class ids: e.g. --labels 1,207") from None
    bad = [y for y in labels if not 0 <= y < num_classes]
    if not labels or bad:
        raise TPError(f"--labels needs class ids in [0, {num_classes}) (got {text!r})")
    return labels


def run_rank(group: TPGroup, args: argparse.Namespace) -> torch.Tensor:
    """One rank: build the seeded model (SP over the group when it has more than one rank) and sample."""
    config = PRESETS[args.preset]
    device = local_device(args.device, group)
    weights = random_weights(config, seed=args.seed, dtype=DTYPES[args.dtype], device=str(device))
    model = load_impl(args.impl).build(weights, group=group if group.world > 1 else None, parallel=args.parallel)
    labels = parse_labels(args.labels, config.num_classes)
    with torch.no_grad():
        return sample(model, labels, latent_size=args.latent, steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed, device=device, dtype=DTYPES[args.dtype]).cpu()


def check(args: argparse.Namespace) -> None:
    """Every refusal before any process starts."""
    if args.preset not in PRESETS:
        raise TPError(f"unknown --preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    config = PRESETS[args.preset]
    parse_labels(args.labels, config.num_classes)
    if args.latent <= 0 or args.latent % config.patch:
        raise TPError(f"--latent {args.latent} must be a positive multiple of the patch size {config.patch}")
    tokens = config.tokens(args.latent)
    if args.sp < 1 or tokens % args.sp:
        raise TPError(f"--sp {args.sp} must divide the {tokens} tokens of a {args.latent}² latent")
    if args.sp > 1 and args.parallel == "ulysses" and config.heads % args.sp:
        raise TPError(f"--parallel ulysses needs --sp to divide the {config.heads} heads (got {args.sp}): "
                      "use --parallel ring or another --sp")
    if args.steps <= 0:
        raise TPError(f"--steps {args.steps} must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TPError("--device cuda but no CUDA GPU is visible: use --device cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase7_dit_parallel", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="DDIM latents from a seeded random DiT")
    s.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)}")
    s.add_argument("--latent", type=int, default=8, help="latent side (image side / 8); tokens = (latent / 2)²")
    s.add_argument("--labels", default="1,2", help="class ids, comma-separated (one image each)")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (1 = off)")
    s.add_argument("--seed", type=int, default=0, help="weights and initial noise")
    s.add_argument("--impl", default="solution", help="framework, solution or a module path")
    s.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--sp", type=int, default=1, help="sequence-parallel ranks (spawned locally)")
    s.add_argument("--parallel", default="ulysses", choices=["ulysses", "ring"])
    s.add_argument("--out", default=None, help="save the latents here (.pt)")
    args = ap.parse_args(argv)
    try:
        check(args)
        t0 = time.perf_counter()
        if args.sp > 1:
            latents = spawn(run_rank, args.sp, args, device=args.device, timeout_s=3600)[0]
        else:
            latents = run_rank(TPGroup(), args)
    except (TPError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    print(f"{args.impl} {args.preset}: {latents.shape[0]} latents of {tuple(latents.shape[1:])}, {args.steps} steps, "
          f"sp={args.sp} ({args.parallel if args.sp > 1 else 'one device'}), {seconds:.1f} s; "
          f"mean {latents.mean():+.4f}, std {latents.std():.4f}")
    if args.out:
        out = Path(args.out)
        tmp = out.with_suffix(out.suffix + ".tmp")
        torch.save(latents, tmp)
        tmp.replace(out)
        print(f"saved {out}")
    return 0
