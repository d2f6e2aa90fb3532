"""Shared pieces of the engine tests: a tiny model, fresh random prompts, and the independent oracle.

The oracle is HF transformers on the same fp32 weights (``phase0_prototype.hf_peer``); where transformers
is missing, phase 0's framework (no KV cache: a different code path from every engine under test).
"""

from __future__ import annotations

import random

import torch

from phase0_prototype import load_impl, load_model
from phase0_prototype.hf_peer import build_hf, hf_generate, missing_reason

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU runs the Triton kernels compiled, not interpreted


def tiny_model(dtype: str = "fp32", device: str = DEVICE):
    return load_model("random:tiny", dtype=dtype, device=device, seed=3)


def random_prompts(model, lengths, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]


WORDS = ("the LORD God said unto Moses and Israel king people land house son father heaven earth light "
         "day night water spirit word children behold came went spake shall").split()


def fresh_text_prompts(n: int) -> tuple[list[str], int]:
    """``n`` fresh prompts in the bundled model's vocabulary, and the seed that made them (for the message)."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))).capitalize() for _ in range(n)], seed


def reference_tokens(model, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """Greedy continuations, one request at a time, by HF (or phase 0's framework without transformers)."""
    if missing_reason() is None:
        hf = build_hf(model)
        return [hf_generate(hf, torch.tensor([p], device=model.device), n)[0].tolist()
                for p, n in zip(prompts, max_tokens, strict=True)]
    ref = load_impl("framework").build(model)
    return [ref.generate(p, n, stop_on_eos=False).sequences()[0] for p, n in zip(prompts, max_tokens, strict=True)]
