"""``titaninfer`` — the command line of the assembled engine.

- ``generate``: stream a continuation to the terminal, then tokens/s and achieved GB/s (MBU on a GPU);
- ``chat``: an interactive conversation through the chat template (stdin lines; Ctrl-D / Ctrl-C ends it);
- ``serve``: phase 4's OpenAI-compatible server over the engine's continuous batching (``--ray``: engine
  replicas on Ray Serve behind one OpenAI ingress, ``shared.ray_serve``);
- ``bench``: offline throughput (mixed short/long requests) and bs=1 decode latency of the engine;
- ``report``: every phase's check, one after another, regenerating ``reports/`` (with progress);
- ``check <phase>``: one phase's bench and targets (``make check-phaseN``); ``hardware``: peaks.

Every engine command takes ``--model`` and ``--impl`` (``phase3=framework,phase1=reference``, or a preset
``solution``/``framework``: see ``shared.impls``), ``--quant rtn|awq|gptq|DIR``, ``--tp N`` and
``--rope cuda``; ``serve`` and ``bench`` add the scheduler's (``--max-num-seqs`` …). The default
model is the bundled one, offline, on CPU when no GPU is visible. A user mistake prints one ``error:``
line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from phase4_scheduler.plan import SERVING_DEFAULTS

COMMANDS = ("generate", "chat", "serve", "quantize", "bench", "report", "check", "hardware")


DTYPE_NAMES = {"auto": None, "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
               "fp32": "fp32", "float32": "fp32", "float": "fp32"}


def dtype_name(text: str) -> str | None:
    """``--dtype``: ours (bf16, fp16, fp32) or vLLM's spellings; ``auto`` = the device's default."""
    if text not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}: choose auto, bf16/bfloat16, fp16/float16 or "
                                         "fp32/float32")
    return DTYPE_NAMES[text]


def add_engine_arguments(ap: argparse.ArgumentParser, *, batching: bool = False) -> None:
    from .engine import DEFAULT_MODEL

    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="hub id, local HF directory or .gguf file, bundled model name, smollm2, random:tinyllama "
                         "or random:tiny")
    ap.add_argument("--impl", action="append", default=None, metavar="SPEC",
                    help="phaseN=NAME[,…] or a preset (solution, framework); repeatable; default: solution")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda when available")
    ap.add_argument("--dtype", default=None, type=dtype_name, metavar="{auto,bf16,fp16,fp32}",
                    help="also vLLM's bfloat16, float16, float32; default (auto): bf16 on cuda, fp32 on cpu")
    ap.add_argument("--quant", default=None, help="INT4 weights (phase 5): rtn, awq, gptq")
    ap.add_argument("--quant-group-size", type=int, default=128, help="input columns per INT4 scale")
    ap.add_argument("--tp", "--tensor-parallel-size", "-tp", dest="tp", type=int, default=1,
                    help="tensor-parallel ranks (phase 6: persistent workers under phase 4's batching)")
    ap.add_argument("--max-seq-len", "--max-model-len", dest="max_seq_len", type=int, default=None,
                    help="context per request (default: the model's)")
    ap.add_argument("--no-compile", action="store_true", help="no CUDA graphs / compilation (eager)")
    ap.add_argument("--chat-template", default=None, metavar="FILE_OR_TEMPLATE",
                    help="a Jinja chat template (a file, or the template itself) instead of the model's")
    ap.add_argument("--rope", choices=["torch", "cuda"], default=None,
                    help="cuda = phase 2's kernel (same as --impl phase2=solution); torch = phase 0's")
    if batching:
        ap.add_argument("--max-num-seqs", type=int, default=None,
                        help=f"sequences per step (default: {SERVING_DEFAULTS['cuda'][0]} on cuda, "
                             f"{SERVING_DEFAULTS['cpu'][0]} on cpu)")
        ap.add_argument("--max-num-batched-tokens", type=int, default=None,
                        help=f"tokens per step (default: {SERVING_DEFAULTS['cuda'][1]} on cuda, "
                             f"{SERVING_DEFAULTS['cpu'][1]} on cpu)")
        ap.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: sized by the engine)")
        ap.add_argument("--gpu-memory-utilization", type=float, default=None, metavar="FRACTION",
                        help="size the KV pool so the engine uses this share of the GPU's memory (vLLM's flag; "
                             "default: --max-num-seqs whole contexts)")
        ap.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
        ap.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=False,
                        help="reuse the KV blocks of a prompt prefix already computed (vLLM's flag): requests "
                             "sharing a system prompt, and the n choices of one request, prefill it once")
        ap.add_argument("--policy", default="sjf", choices=["fcfs", "priority", "sjf"], help="scheduling order")
        ap.add_argument("--max-wait-steps", type=int, default=64, help="aging bound in steps (0: no aging)")
        ap.add_argument("--preemption", default="recompute", choices=["recompute", "swap"],
                        help="when KV blocks run out: recompute the victim later, or swap its blocks to host memory")
        ap.add_argument("--swap-space", type=float, default=4.0, help="GiB of host KV blocks for --preemption swap")
        ap.add_argument("--num-cpu-blocks", type=int, default=None, help="host KV blocks (overrides --swap-space)")


def add_sampling_arguments(ap: argparse.ArgumentParser, max_new_tokens: int) -> None:
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (a 64-bit signed integer)")


def engine_config(args: argparse.Namespace):
    from .engine import EngineConfig

    rope = {"cuda": ["phase2=solution"], "torch": ["phase2=off"]}.get(args.rope, [])
    kw = {"max_num_seqs": 1}  # generate and chat: one request at a time, KV blocks for one context
    if hasattr(args, "max_num_seqs"):
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        seqs, tokens = SERVING_DEFAULTS[device]
        kw = dict(max_num_seqs=args.max_num_seqs or seqs, max_num_batched_tokens=args.max_num_batched_tokens or tokens,
                  num_blocks=args.num_blocks, gpu_memory_utilization=args.gpu_memory_utilization,
                  block_size=args.block_size, policy=args.policy,
                  max_wait_steps=args.max_wait_steps or None, preemption=args.preemption,
                  swap_space=args.swap_space, num_cpu_blocks=args.num_cpu_blocks,
                  enable_prefix_caching=args.enable_prefix_caching)
    return EngineConfig(model=args.model, impl=list(args.impl or ["solution"]) + rope, device=args.device,
                        dtype=args.dtype, quant=args.quant, quant_group_size=args.quant_group_size, tp=args.tp,
                        max_model_len=args.max_seq_len, compile=not args.no_compile,
                        chat_template=args.chat_template, **kw)


def sampling_params(args: argparse.Namespace):
    from phase0_prototype.sampling import SamplingParams

    return SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)


class DefaultsParser(argparse.ArgumentParser):
    """A subcommand's parser whose ``--help`` shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("titaninfer")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from . import ray_serve, serve
    from .engine import DEFAULT_MODEL

    ap = argparse.ArgumentParser(prog="titaninfer", description="TitanInfer: a TinyLlama inference engine, phase by phase.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}",
                            parser_class=DefaultsParser)
    gen = sub.add_parser("generate", help="stream text, then tokens/s and GB/s")
    add_engine_arguments(gen)
    gen.add_argument("--prompt", default="And God said,")
    add_sampling_arguments(gen, 64)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    chat = sub.add_parser("chat", help="interactive chat through the model's chat template (reads stdin)")
    add_engine_arguments(chat)
    add_sampling_arguments(chat, 128)
    chat.add_argument("--system", default=None, help="a system message")
    srv = sub.add_parser("serve", help="the OpenAI-compatible server (phase 4) over the engine")
    add_engine_arguments(srv, batching=True)
    serve.add_arguments(srv)
    ray_serve.add_arguments(srv)
    quant = sub.add_parser("quantize", help="write INT4 weights once (AutoAWQ format) for --model DIR")
    quant.add_argument("--model", default=DEFAULT_MODEL, help="the float model to quantize")
    quant.add_argument("--method", default="awq", choices=["rtn", "awq", "gptq"])
    quant.add_argument("--quant-group-size", type=int, default=128, help="input columns per INT4 scale")
    quant.add_argument("--out", required=True, help="a new folder for the checkpoint")
    quant.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda when available")
    bench = sub.add_parser("bench", help="offline throughput and bs=1 latency of the engine")
    add_engine_arguments(bench, batching=True)
    bench.add_argument("--num-requests", type=int, default=64)
    bench.add_argument("--short-tokens", type=int, default=10)
    bench.add_argument("--long-tokens", type=int, default=200)
    bench.add_argument("--prompt-tokens", type=int, default=128, help="bs=1 latency: random prompt length")
    bench.add_argument("--new-tokens", type=int, default=64, help="bs=1 latency: tokens generated")
    rep = sub.add_parser("report", help="run every phase's check and regenerate its report")
    rep.add_argument("--phases", nargs="*", default=None, help="default: every phase with a checks.py")
    rep.add_argument("--impl", default="solution")
    rep.add_argument("--size", choices=["small", "full"], default=None)
    rep.add_argument("--out", default=None, help="reports root (default: <repo>/reports)")
    rep.add_argument("--quiet", action="store_true", help="only the per-phase lines, not each check's output")
    sub.add_parser("check", help="run a phase's targets (see `titaninfer check --help`)", add_help=False)
    sub.add_parser("hardware", help="device, measured peaks, datasheet", add_help=False)
    return ap


def cmd_generate(args: argparse.Namespace) -> int:
    from phase0_prototype.generate import GenerateStats, describe
    from phase0_prototype.weights import decode_bytes_per_token

    from .engine import LLMEngine

    sampling = sampling_params(args)  # a bad --seed / --temperature is refused before the model loads
    engine = LLMEngine(engine_config(args))
    device = engine.device.type
    shown = {k: v for k, v in engine.impls.items() if k != "phase6" or engine.config.tp > 1}
    print(f"[{args.model} · {device} {str(engine.model.dtype).replace('torch.', '')} · "
          f"{' '.join(f'{k}={v}' for k, v in shown.items())}{f' tp={engine.config.tp}' if engine.config.tp > 1 else ''}]",
          file=sys.stderr)
    ids = engine.encode(args.prompt, chat=args.chat)
    engine.check_request(ids, args.max_new_tokens)
    engine.warmup()
    if not args.chat:  # the continuation reads on from the prompt, as a completion does
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    t0 = time.perf_counter()
    first, count = None, 0
    for delta in engine.stream(ids, sampling, max_tokens=args.max_new_tokens, stop=args.stop):
        if first is None and delta.token_ids:
            first = time.perf_counter()
        count += len(delta.token_ids)
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    t_end = time.perf_counter()
    print(file=sys.stdout)
    first = first or t_end
    stats = GenerateStats(len(ids), count, first - t0, t_end - first,
                          decode_bytes_per_token(engine.model.config, engine.model.dtype, len(ids) + count // 2))
    if engine.quant:
        line = f"prompt {len(ids)} tokens, generated {count}; decode {stats.decode_tok_s:.1f} tokens/s (INT4 weights)"
    else:
        line = describe(stats, device)
    print(f"[{engine.path_name()}] {line}", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat
    from .engine import LLMEngine

    sampling = sampling_params(args)
    engine = LLMEngine(engine_config(args))
    engine.warmup()
    return run_chat(engine, sampling, max_tokens=args.max_new_tokens, system=args.system)


def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from phase0_prototype.sources import load_model

    from .quant import save_quantized

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, dtype="bf16" if device == "cuda" else "fp32", device=device)
    out = save_quantized(model, args.method, args.out, group_size=args.quant_group_size)
    print(f"wrote {out} ({args.method}, group size {args.quant_group_size}): serve it with --model {out}",
          file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench_rows import cli_bench

    return cli_bench(args, engine_config(args))


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "chat":
        return cmd_chat(args)
    if args.command == "serve":
        from . import ray_serve, serve

        if ray_serve.wanted(args):  # engine replicas on Ray Serve behind one OpenAI ingress
            return ray_serve.run(args, engine_config(args))
        return serve.run(args, engine_config(args))
    if args.command == "quantize":
        return cmd_quantize(args)
    if args.command == "bench":
        return cmd_bench(args)
    from pathlib import Path

    from .report_all import run_reports

    return run_reports(args.phases, impl=args.impl, size=args.size, out=Path(args.out) if args.out else None,
                       echo=not args.quiet)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a user mistake (bad model, spec, prompt, machine): one line, exit 2."""
    from module0_profiling.impl import ImplError
    from phase0_prototype.errors import ModelError

    errors: list[type[BaseException]] = [ModelError, ImplError]
    try:
        from phase2_rope_cuda.cuda_launch import RopeDeviceError
        from phase2_rope_cuda.shapes import RopeInputError

        errors += [RopeInputError, RopeDeviceError]
    except ImportError:
        pass
    from phase1_rust_memory.errors import NativeExtensionMissing

    errors.append(NativeExtensionMissing)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from module0_profiling.check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "hardware":
        from module0_profiling.hardware import main as hardware_main

        return hardware_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except user_errors() as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as e:
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            print("error: the GPU ran out of memory: lower --max-seq-len, --max-num-seqs or --num-blocks",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
