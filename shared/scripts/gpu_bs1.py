"""GPU diagnostic for E.1a: the assembled engine's bs=1 decode beside phase 0's engine called directly.

    PYTHONPATH=$PWD python3 -m shared.scripts.gpu_bs1

Builds the engine as ``make check-engine`` does (SIZE=full: random:tinyllama bf16, prompt 512, 128 new tokens)
and prints ms/token and MBU of ``LLMEngine.generate`` (what E.1a measures: phase 4's loop at batch 1) and of
``engine.single.generate`` (phase 0's engine alone: no scheduler, paged KV or text), so the loop's own cost shows.
"""

from __future__ import annotations

from phase0_prototype.bench import measure_generate
from shared.bench import Context
from shared.bench_rows import engine_latency


def main() -> None:
    ctx = Context("full")
    engine = ctx.engine("solution")
    engine.warmup()
    ids, n = ctx.prompt[0].tolist(), ctx.s["new"]
    for label, fn in (("LLMEngine.generate (E.1a)", lambda: engine_latency(engine, ctx.prompt, n, 5)),
                      ("phase 0 engine directly", lambda: measure_generate(
                          lambda k: engine.single.generate(ids, k, stop_on_eos=False), n, 5))):
        for _ in range(2):
            f = fn()
            print(f"{label:28s} {f['decode_s_per_token'] * 1e3:.3f} ms/token, MBU "
                  f"{100 * ctx.mbu(f['decode_s_per_token']):.1f} % (max_model_len {ctx.max_model_len})", flush=True)


if __name__ == "__main__":
    main()
