"""GPU diagnostic for P0.7: does the verify forward agree with plain greedy decoding on this machine?

    PYTHONPATH=$PWD python3 -m phase0_prototype.scripts.gpu_speculative

On the bundled kjv-llama-18m and P0.7's editing prompt: plain greedy tokens, then the verify of the true
continuation ``[first, greedy[1:9]]`` after the same prefill, four ways — eager ``verify_step``, the decoder's
``_verify`` (the captured graph on a GPU), ``torch.compile`` without a graph, the graph again after a fresh
prefill — and a full speculative ``generate`` against plain ``generate``. A verify that disagrees with the
greedy tokens beyond a late float near-tie is the bug behind 0 % of drafts accepted.
"""

from __future__ import annotations

import torch

from phase0_prototype import load_model
from phase0_prototype.bench import SPECULATIVE_K, SPECULATIVE_MODEL, edit_prompt
from phase0_prototype.solution import SolutionEngine
from phase0_prototype.speculative import SpeculativeDecoder, verify_step


@torch.inference_mode()
def main() -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(SPECULATIVE_MODEL, dtype="bfloat16", device=dev)
    prompt = edit_prompt(model, 256)
    T, k = len(prompt), SPECULATIVE_K
    ids = torch.tensor([prompt], device=dev)
    start = torch.tensor([T], device=dev)
    for compiled in (False, True):
        engine = SolutionEngine(model, compile=compiled)
        print(f"compile={compiled}: mode {engine.mode}", flush=True)
        greedy = engine.generate(prompt, k + 2, stop_on_eos=False).tokens[0].tolist()  # the new tokens
        first = int(engine.prefill(ids).argmax(-1))
        chunk = torch.tensor([first] + greedy[1:k + 1], device=dev)
        print(f"  greedy            {greedy[1:k + 2]}")
        print(f"  eager verify      {verify_step(engine, chunk, start).tolist()}")
        decoder = SpeculativeDecoder(engine, k)
        if compiled:
            engine.warmup()
            decoder.warmup()
        engine.prefill(ids)
        print(f"  decoder._verify   {decoder._verify(first, greedy[1:k + 1], T)}")
        if compiled:
            engine.prefill(ids)
            step = torch.compile(lambda t, s, e=engine: verify_step(e, t, s), fullgraph=True, dynamic=False)
            print(f"  compiled, no graph {step(chunk, start).tolist()}")
            engine.prefill(ids)
            print(f"  graph after prefill {decoder._verify(first, greedy[1:k + 1], T)}")
        fast = decoder.generate(prompt, 64, stop_on_eos=False).tokens
        plain = engine.generate(prompt, 64, stop_on_eos=False).tokens
        print(f"  generate: same tokens {torch.equal(fast, plain)}; {decoder.stats}", flush=True)


if __name__ == "__main__":
    main()
