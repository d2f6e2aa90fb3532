"""Shared pieces of the engine tests: a tiny model and fresh random prompts (token ids or text).

The oracle the tests compare with is ``phase0_prototype.hf_peer.greedy_reference`` (HF transformers).
"""

from __future__ import annotations

import random

import torch

from phase0_prototype import load_model

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


def check_stream_and_chat(client, reference, model: str, prompts: tuple[str, str], want: list[str], greedy: dict,
                          seed: int) -> None:
    """Through an OpenAI ``client``: a streamed completion of ``prompts[1]`` (several chunks) is ``want[1]``, and
    a chat completion of ``prompts[0]`` is ``reference``'s (an ``LLMEngine``) greedy chat text."""
    chunks = [c.choices[0].text for c in client.completions.create(model=model, prompt=prompts[1], stream=True,
                                                                   **greedy)]
    assert len(chunks) > 1 and "".join(chunks) == want[1], seed
    messages = [{"role": "user", "content": prompts[0]}]
    chat = reference.generate(messages, max_tokens=greedy["max_tokens"], ignore_eos=True)[0].text
    answer = client.chat.completions.create(model=model, messages=messages, **greedy)
    assert answer.choices[0].message.content == chat and chat != want[0], seed
