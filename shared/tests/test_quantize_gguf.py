"""``titaninfer quantize`` of a GGUF model: the checkpoint carries the file's tokenizer (it lives in the GGUF's
metadata, not beside it), so the INT4 model it writes tokenizes like the GGUF."""

from __future__ import annotations

import random

import pytest

from phase0_prototype import load_model
from phase0_prototype.tokenizer import load_tokenizer
from shared.quant import save_quantized


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf, two_threads):
    return load_model("smollm2", dtype="fp32", device="cpu")


def test_quantized_gguf_checkpoint_has_the_gguf_tokenizer(smollm2, tmp_path):
    out = save_quantized(smollm2, "rtn", tmp_path / "int4", group_size=64)  # 576 = 9 groups of 64
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    cfg = smollm2.config
    written = load_tokenizer(out, vocab_size=cfg.vocab_size, bos_id=cfg.bos_token_id)
    rng = random.Random()
    text = " ".join(rng.choice(["The", "capital", "of", "France", "naïve", "1234", "über", "!", "\n"])
                    for _ in range(40))
    assert written.encode(text) == smollm2.tokenizer.encode(text)
