"""``python -m phase0_prototype generate``: stream a continuation and say how fast it was, gpt-fast style.

Prints the text as it is generated (stdout), then on stderr: time to first token, decode tokens/s and
the achieved bandwidth — bytes a decode step must move (every weight once + the KV cache read) / time —
next to the measured copy bandwidth of the device (MBU). User mistakes end with one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase0_prototype.sources import LoadedModel, load_model
from phase0_prototype.tokenizer import StreamDecoder
from phase0_prototype.weights import decode_bytes_per_token


@dataclass
class GenerateStats:
    prompt_tokens: int
    new_tokens: int
    ttft_s: float  # prompt in -> first token on the host
    decode_s: float  # first token -> last token
    bytes_per_token: float

    @property
    def decode_tok_s(self) -> float:
        if self.new_tokens > 1 and self.decode_s > 0:
            return (self.new_tokens - 1) / self.decode_s
        return float("nan")

    @property
    def achieved_gbps(self) -> float:
        return self.bytes_per_token * self.decode_tok_s / 1e9


DEFAULT_MODEL = "kjv-llama-18m"  # the bundled model under <repo>/models/: offline, CPU-friendly
DEFAULT_PROMPT = "And God said,"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_engine(model: LoadedModel, impl: str, *, compile: bool, max_seq_len: int | None, **options):
    """Build ``impl``'s engine; ``options`` reach its ``build`` (e.g. ``rope_fn`` from phase 2)."""
    from phase0_prototype import load_impl

    engine = load_impl(impl).build(model, max_seq_len=max_seq_len, compile=compile, **options)
    if hasattr(engine, "warmup"):
        engine.warmup()
    return engine


def generate_text(engine, prompt: str, max_new_tokens: int, sampling: SamplingParams = GREEDY, *,
                  chat: bool = False, stream=None) -> tuple[str, GenerateStats]:
    """Encode ``prompt`` (through the chat template when ``chat``), generate, stream text to ``stream``."""
    model = engine.model
    tok = model.tokenizer
    ids = tok.encode_chat([{"role": "user", "content": prompt}]) if chat else tok.encode(prompt)
    decoder = StreamDecoder(tok)
    pieces: list[str] = []
    first: list[float] = []

    def on_tokens(chunk: torch.Tensor) -> None:
        if not first:
            first.append(time.perf_counter())
        text = decoder.push(chunk[0].tolist())
        pieces.append(text)
        if stream is not None and text:
            stream.write(text)
            stream.flush()

    t0 = time.perf_counter()
    out = engine.generate(ids, max_new_tokens, sampling, on_tokens=on_tokens)
    t_end = time.perf_counter()
    tail = decoder.flush()
    pieces.append(tail)
    if stream is not None and tail:
        stream.write(tail)
    n = out.lengths[0]
    context = len(ids) + n // 2  # average cached positions read during decode
    ttft_end, decode_start = (first[0], first[0]) if first else (t_end, t0)
    stats = GenerateStats(len(ids), n, ttft_end - t0, t_end - decode_start,
                          decode_bytes_per_token(model.config, model.dtype, context))
    return "".join(pieces), stats


def describe(stats: GenerateStats, device: str) -> str:
    lines = [f"prompt {stats.prompt_tokens} tokens, generated {stats.new_tokens}; "
             f"time to first token {stats.ttft_s * 1e3:.1f} ms"]
    if stats.new_tokens > 1:
        line = (f"decode {stats.decode_tok_s:.1f} tokens/s, {stats.bytes_per_token / 1e9:.3f} GB/token, "
                f"achieved {stats.achieved_gbps:.1f} GB/s")
        if device == "cuda":
            from module0_profiling.hardware import measured_peaks

            peak = measured_peaks().copy_gbps
            line += (f" = {100 * stats.achieved_gbps / peak:.1f} % of measured copy bandwidth "
                     f"({peak:.0f} GB/s)")
        lines.append(line)
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="hub id, local HF directory, bundled model name, random:tinyllama or random:tiny")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"default: {DEFAULT_PROMPT!r}")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--impl", default="solution", help="framework, solution or a module path")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda when available")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                    help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--no-compile", action="store_true",
                    help="run the solution eagerly (no torch.compile/graphs)")
    ap.add_argument("--max-seq-len", type=int, default=None,
                    help="KV cache length (default: prompt + new tokens)")


def run(args: argparse.Namespace, **engine_options) -> int:
    device = args.device or default_device()
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    model = load_model(args.model, dtype=dtype, device=device, seed=0)
    max_seq_len = args.max_seq_len
    if max_seq_len is None:  # a cache just long enough: fewer masked slots read per step
        n_prompt = len(model.tokenizer.encode(args.prompt)) + (64 if args.chat else 0)
        rounded = -(-(n_prompt + args.max_new_tokens) // 64) * 64
        max_seq_len = min(model.config.max_position_embeddings, rounded)
    print(f"[{args.model} · {args.impl} · {device} {dtype}]", file=sys.stderr)
    engine = build_engine(model, args.impl, compile=not args.no_compile, max_seq_len=max_seq_len,
                          **engine_options)
    if not args.chat:  # the continuation reads on from the prompt, as a completion does
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    _, stats = generate_text(engine, args.prompt, args.max_new_tokens, sampling, chat=args.chat,
                             stream=sys.stdout)
    print(file=sys.stdout)
    print(f"[{engine.mode}] " + describe(stats, device), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase0_prototype")
    sub = ap.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("generate", help="generate text and report tokens/s and GB/s"))
    return main_with_args(ap.parse_args(argv))


def main_with_args(args: argparse.Namespace, **engine_options) -> int:
    """Run a parsed ``generate`` command; user mistakes print one line and return 2."""
    try:
        return run(args, **engine_options)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print("error: the GPU ran out of memory: lower --max-seq-len or use --dtype bf16", file=sys.stderr)
        return 2
