"""GPU diagnostic for E.1a: the assembled engine's bs=1 decode beside phase 0's engine called directly.

    PYTHONPATH=$PWD python3 -m shared.scripts.gpu_bs1 [--profile-only]

Builds the engine as ``make check-engine`` does (SIZE=full: random:tinyllama bf16, prompt 512, 128 new tokens)
and prints ms/token and MBU of ``LLMEngine.generate`` (what E.1a measures: phase 4's loop at batch 1) and of
``engine.single.generate`` (phase 0's engine alone: no scheduler, paged KV or text), so the loop's own cost shows;
then a profile of 32 tokens of each: GPU busy, kernels per token and the top kernels (where the time goes).
"""

from __future__ import annotations

import sys

from module0_profiling.trace import profile_region
from phase0_prototype.bench import measure_generate
from shared.bench import Context
from shared.bench_rows import engine_latency


def main(profile_only: bool = False) -> None:
    ctx = Context("full")
    engine = ctx.engine("solution")
    engine.warmup()
    ids, n = ctx.prompt[0].tolist(), ctx.s["new"]
    timings = [("LLMEngine.generate (E.1a)", lambda: engine_latency(engine, ctx.prompt, n, 5)),
               ("phase 0 engine directly", lambda: measure_generate(
                   lambda k: engine.single.generate(ids, k, stop_on_eos=False), n, 5))]
    for label, fn in [] if profile_only else timings:
        for _ in range(2):
            f = fn()
            print(f"{label:28s} {f['decode_s_per_token'] * 1e3:.3f} ms/token, MBU "
                  f"{100 * ctx.mbu(f['decode_s_per_token']):.1f} % (max_model_len {ctx.max_model_len})", flush=True)
    for label, fn in (("the loop", lambda: engine.generate([ids], max_tokens=32, ignore_eos=True)),
                      ("phase 0", lambda: engine.single.generate(ids, 32, stop_on_eos=False))):
        t = profile_region(fn, iters=1, warmup=1)
        print(f"{label}: GPU busy {100 * (t.gpu_busy or 0):.0f} %, {t.launches / 32:.1f} kernels per token, "
              f"mean gap {1e6 * (t.mean_gap_s or 0):.1f} us", flush=True)
        for k in t.top(8):
            print(f"   {k.calls / 32:5.1f}/token {1e6 * k.mean_s:8.1f} us  {100 * k.share:4.1f} %  {k.name[:90]}")


if __name__ == "__main__":
    main(profile_only="--profile-only" in sys.argv[1:])
