"""Merge the GPU run's sharded checkpoint into one ``model.safetensors`` (bf16) beside the tokenizer files.

The device returns files of at most 16 MiB, so ``train.py`` saves 15 MB shards; the bundled model is one
file. The model is loaded and re-saved by transformers itself, then checked: one safetensors file, under
40 MB, bf16, and its logits equal to the shards' on a random prompt.

    python models/recipe/assemble.py --shards OUT/kjv-llama-18m --model-dir models/kjv-llama-18m
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

MAX_BYTES = 40_000_000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=Path, required=True, help="the directory train.py wrote")
    ap.add_argument("--model-dir", type=Path, required=True, help="holds the tokenizer files already")
    args = ap.parse_args(argv)
    from transformers import LlamaForCausalLM

    if not (args.shards / "config.json").is_file():
        sys.exit(f"error: {args.shards} has no config.json: pass the directory train.py wrote (--out)")
    sharded = LlamaForCausalLM.from_pretrained(args.shards, dtype=torch.bfloat16).eval()
    sharded.save_pretrained(args.model_dir, safe_serialization=True, max_shard_size="1GB")
    for name in ("train_log.json",):
        if (args.shards / name).is_file():
            shutil.copyfile(args.shards / name, args.model_dir / name)
    weights = args.model_dir / "model.safetensors"
    weights.chmod(0o644)  # safetensors writes 0600; the file is committed and read by everyone
    size = weights.stat().st_size
    assert not list(args.model_dir.glob("model-*.safetensors")), "expected one safetensors file"
    assert size <= MAX_BYTES, f"{weights} is {size} bytes > {MAX_BYTES}"
    merged = LlamaForCausalLM.from_pretrained(args.model_dir).eval()
    assert merged.dtype == torch.bfloat16
    ids = torch.randint(0, merged.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(sharded(ids).logits, merged(ids).logits), "merged logits differ from the shards'"
    params = sum(p.numel() for p in merged.parameters())
    print(f"{weights}: {size:,} bytes, {params:,} parameters, bf16; logits equal to the shards'")


if __name__ == "__main__":
    main()
