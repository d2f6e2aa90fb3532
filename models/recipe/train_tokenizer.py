"""A byte-level BPE tokenizer trained on the training text, and the token streams the GPU run reads.

Byte-level (GPT-2 style) so that any text encodes without ``<unk>``; 8192 tokens leave the 18 M-parameter
model most of its parameters for the transformer (the embedding is 8192 × 512 = 4.2 M). Special tokens:
``<unk> <s> </s>`` (ids 0, 1, 2 as in Llama) and the chat markers ``<|system|> <|user|> <|assistant|>``
of TinyLlama's (Zephyr) chat template. ``<s>`` is prepended on encode, as Llama's tokenizer does.

    python models/recipe/train_tokenizer.py --data .device_data --model-dir models/kjv-llama-18m

writes ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template), ``special_tokens_map.json`` to ``--model-dir`` and ``train.bin`` / ``heldout.bin`` (little-endian uint16 ids, no special tokens) to ``--data``.
"""

from __future__ import annotations

import argparse
import array
import json
import sys
from pathlib import Path

VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
MAX_LENGTH = 512

# TinyLlama-1.1B-Chat-v1.0's template (Zephyr style). The model is not instruction-tuned: the template
# is here so chat front-ends format prompts the same way for this model and for TinyLlama.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from the repo
from phase0_prototype.tokenizer import DEFAULT_CHAT_TEMPLATE as CHAT_TEMPLATE  # noqa: E402  (TinyLlama's)


def train_bpe(text_file: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(text_file)], trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return tok


def save_hf(tok, model_dir: Path) -> None:
    """The files a Hugging Face checkpoint carries; ``tokenizer_class`` works in transformers 4.x and 5.x."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(model_dir / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": True,
              "add_eos_token": False, "model_max_length": MAX_LENGTH, "clean_up_tokenization_spaces": False,
              "chat_template": CHAT_TEMPLATE}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def write_ids(tok, text_file: Path, out: Path) -> int:
    ids = tok.encode(text_file.read_text(encoding="utf-8"), add_special_tokens=False).ids
    assert max(ids) < 65536
    out.write_bytes(array.array("H", ids).tobytes() if sys.byteorder == "little" else
                    _swapped(array.array("H", ids)))
    return len(ids)


def _swapped(a: array.array) -> bytes:
    a.byteswap()
    return a.tobytes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.txt / heldout.txt")
    parser.add_argument("--model-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    train_txt = args.data / "train.txt"
    if not train_txt.is_file():
        sys.exit(f"error: {train_txt} is missing: run models/recipe/prepare_corpus.py --out {args.data} first")
    tok = train_bpe(train_txt)
    save_hf(tok, args.model_dir)
    for split in ("train", "heldout"):
        n = write_ids(tok, args.data / f"{split}.txt", args.data / f"{split}.bin")
        size = (args.data / f"{split}.txt").stat().st_size
        print(f"{split}: {n:,} tokens ({size / n:.2f} bytes/token)")
    print(f"tokenizer ({tok.get_vocab_size()} tokens) saved to {args.model_dir}")


if __name__ == "__main__":
    main()
