"""Shared fixtures for phase 0 tests: a tiny Llama written by transformers itself, and its tokenizer.

The checkpoint is produced by ``LlamaForCausalLM.save_pretrained`` (not by our code), so loading it
tests our reader against the format as transformers writes it; the same HF model is the oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from phase0_prototype.config import TINY
from phase0_prototype.tokenizer import DEFAULT_CHAT_TEMPLATE

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A KV cache stores the keys and values of past tokens so decoding reads them instead of recomputing.",
    "Grouped-query attention shares one key/value head among several query heads.",
    "Rotary embeddings rotate pairs of channels by an angle proportional to the position.",
    "Hello world! Bonjour le monde. Hallo Welt. 你好，世界。",
]


def hf_config(tie: bool = False, **overrides):
    from transformers import LlamaConfig as HFLlamaConfig

    c = TINY
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
              num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
              rope_theta=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
              tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, initializer_range=0.08)
    kw.update(overrides)
    return HFLlamaConfig(**kw)


def make_hf_model(seed: int = 0, tie: bool = False, **overrides):
    """An fp32 HF Llama with random weights, norms included (HF initialises them to exactly 1)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(tie, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model.config.architectures = ["LlamaForCausalLM"]
    return model


def make_tokenizer_files(path: Path, chat_template: str = DEFAULT_CHAT_TEMPLATE,
                         vocab_size: int = 300) -> None:
    """Train a small byte-level BPE with ``tokenizers`` and write tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "chat_template": chat_template, "model_max_length": 1024}))


def save_hf_checkpoint(path: Path, seed: int = 0, tie: bool = False, max_shard_size: str | None = None,
                       **overrides):
    model = make_hf_model(seed, tie, **overrides)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(path), safe_serialization=True, **kwargs)
    make_tokenizer_files(path)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """HF ``generate`` greedy continuation of ``ids``, with EOS disabled so all ``n`` tokens come out."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0, len(ids):].tolist()
