"""Measure the assembled model on CPU and write its model card (``README.md``) from the measurements.

Held-out perplexity and top-1 accuracy come from ``phase0_prototype.evaluate`` (window 256, stride 128,
``<s>`` first, fp32 on CPU); the unigram baseline is fitted on the training text with add-one smoothing;
samples are transformers' ``generate`` (greedy, and seeded sampling). Training figures are read from the
GPU run's ``train_log.json``.

    python models/recipe/write_card.py --data .device_data --model-dir models/kjv-llama-18m
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    ("greedy", "In the beginning God created", dict(do_sample=False)),
    ("sampled (temperature 0.8, top-k 40, seed 0)", "And the LORD spake unto Moses, saying,",
     dict(do_sample=True, temperature=0.8, top_k=40)),
    ("sampled (temperature 0.8, top-k 40, seed 0)", "Blessed are the",
     dict(do_sample=True, temperature=0.8, top_k=40)),
]


def samples(hf, tok, new_tokens: int = 80) -> list[tuple[str, str, str]]:
    out = []
    for kind, prompt, kwargs in PROMPTS:
        torch.manual_seed(0)
        ids = torch.tensor([tok.encode(prompt)])
        gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, pad_token_id=2, **kwargs)
        out.append((kind, prompt, tok.decode(gen[0, ids.shape[1]:].tolist())))
    return out


def measure(model_dir: Path, data: Path) -> dict:
    from transformers import LlamaForCausalLM

    from phase0_prototype.evaluate import evaluate_ids, read_text, unigram_perplexity
    from phase0_prototype.sources import load_model

    ours = load_model(str(model_dir), dtype="fp32")
    tok = ours.tokenizer
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    heldout = tok.encode(read_text(model_dir / "heldout.txt"), add_special_tokens=False)
    train = tok.encode(read_text(data / "train.txt"), add_special_tokens=False)
    t0 = time.perf_counter()
    result = evaluate_ids(lambda x: hf(x).logits, heldout, window=256, stride=128, bos_id=tok.bos_id)
    return dict(eval=result, eval_seconds=time.perf_counter() - t0, heldout_tokens=len(heldout),
                train_tokens=len(train), unigram=unigram_perplexity(train, heldout, ours.config.vocab_size),
                params=sum(p.numel() for p in hf.parameters()), samples=samples(hf, tok), config=hf.config,
                corpus_bytes=(data / "corpus.txt").stat().st_size, train_bytes=(data / "train.txt").stat().st_size,
                heldout_bytes=(model_dir / "heldout.txt").stat().st_size,
                weights_bytes=(model_dir / "model.safetensors").stat().st_size)


def loss_table(log: dict) -> str:
    rows = ["| run (steps, dropout) | validation loss by step | best | training time |", "|---|---|---|---|"]
    for r in log["runs"]:
        points = r["curve"][1::2] if r["curve"][-1]["step"] % 200 == 0 else r["curve"][1::2] + r["curve"][-1:]
        curve = ", ".join(f"{p['step']}: {p['val_loss']:.3f}" for p in points)
        rows.append(f"| {r['steps']}, {r['dropout']} | {curve} | {r['best_val_loss']:.3f} at {r['best_step']} "
                    f"| {r['seconds']:.0f} s |")
    return "\n".join(rows)


def card(name: str, m: dict, log: dict) -> str:
    c, e, s = m["config"], m["eval"], log["settings"]
    chosen = log["chosen"]
    tokens_seen = chosen["best_step"] * log["tokens_per_step"]
    sample_text = "\n\n".join(f"**{kind}**, prompt “{prompt}”:\n\n```text\n{textwrap.fill(prompt + text, 100)}\n```"
                                for kind, prompt, text in m["samples"])
    return f"""# {name}

A {m['params'] / 1e6:.1f} M-parameter Llama trained on the King James Bible: TitanInfer's offline default
model, bundled so that `make run`, the tests on real weights and the accuracy checks need no network.
It continues KJV-style prose; it is **not** instruction-tuned (the chat template is there so the engine
formats prompts the same way as for TinyLlama).

## Data
- **Text**: the King James Version (1611/1769), from the Debian package `bible-kjv-text` 4.38 through its
  `bible` program (package `bible-kjv`): `bible -f "Gen1:1-Rev22:21"`, 31,102 verses.
- **License**: public domain (the package's copyright file states that the text's copyright has expired).
  The retrieval program is GPL; only its output is used. These weights are derived from public-domain text.
- **Cleaning** (`models/recipe/prepare_corpus.py`): verse references removed, each chapter one paragraph
  under a heading line (`Genesis 1`), whitespace collapsed. Corpus: **{m['corpus_bytes']:,} bytes**
  (1,189 chapters, headings included).
- **Split**: the last 5 % of the bytes, cut at a chapter boundary (Colossians 1 – Revelation 22), is the
  held-out text, committed here as `heldout.txt` ({m['heldout_bytes']:,} bytes); the rest ({m['train_bytes']:,}
  bytes) is the training text (not committed: the script reproduces it). Training also sets aside every
  50th block of 4,096 tokens of the training text ({log['val_tokens']:,} tokens) as validation for choosing
  the run; the held-out text is never used during training.

## Tokenizer
Byte-level BPE (GPT-2 style) trained with HF `tokenizers` on the training text
(`models/recipe/train_tokenizer.py`): vocabulary 8,192; special tokens `<unk>`=0, `<s>`=1, `</s>`=2,
`<|system|>`, `<|user|>`, `<|assistant|>`; `<s>` is prepended on encode. 4.37 bytes/token on the training
text ({m['train_tokens']:,} tokens), {m['heldout_tokens']:,} tokens of held-out text.
`tokenizer_config.json` carries TinyLlama's (Zephyr) chat template.

## Architecture
`LlamaForCausalLM` with TinyLlama's features scaled down: hidden {c.hidden_size}, {c.num_hidden_layers} layers,
{c.num_attention_heads} query heads and {c.num_key_value_heads} key/value heads (grouped-query attention
{c.num_attention_heads // c.num_key_value_heads}:1), head_dim {c.head_dim}, SwiGLU MLP {c.intermediate_size},
RMSNorm (eps {c.rms_norm_eps}), RoPE θ = {c.rope_parameters['rope_theta']:g}, {c.max_position_embeddings} positions,
tied input/output embeddings, no biases. **{m['params']:,} parameters**; `model.safetensors` in bf16,
{m['weights_bytes']:,} bytes.

## Training (`models/recipe/train.py`, run by `gpu_train.sh`)
- Device: {log['device']}, torch {log['torch']}; {log['total_seconds']:.0f} s wall for the whole script
  (all runs + evaluation + saving).
- AdamW (β = 0.9, 0.95; weight decay {s['weight_decay']} on matrices), peak lr {s['lr']:g}, linear warm-up
  {s['warmup']} steps then cosine to {s['min_lr_ratio']} × peak, gradient clipping 1.0, bf16 autocast (fp32
  master weights), seed {s['seed']}. Batches of {s['batch']} random windows × {s['seq_len']} tokens, each window
  starting with `<s>` ({log['tokens_per_step']:,} tokens/step).
- The corpus is small ({log['train_tokens']:,} training tokens), so the limit is over-fitting, not compute:
  the script trains {len(log['runs'])} schedules (steps, residual+attention dropout) one after the other, each with its
  full cosine, keeps each run's lowest-validation-loss checkpoint, and saves the best run's:

{loss_table(log)}

- Chosen: {chosen['steps']} steps with dropout {chosen['dropout']}, checkpoint of step {chosen['best_step']}
  ({tokens_seen / 1e6:.1f} M tokens seen, {tokens_seen / log['train_tokens']:.1f} epochs).
- Held-out metrics the GPU run printed (window 256, stride 128): fp32 perplexity
  {log['heldout_fp32']['perplexity']:.2f}, top-1 {100 * log['heldout_fp32']['accuracy']:.2f} %; bf16 perplexity
  {log['heldout_bf16']['perplexity']:.2f}, top-1 {100 * log['heldout_bf16']['accuracy']:.2f} %.

## Evaluation (CPU, this directory's bf16 weights computed in fp32)
`python -m phase0_prototype.evaluate --model {name} --text models/{name}/heldout.txt --window 256 --stride 128 --unigram-from .device_data/train.txt`

| metric | value |
|---|---|
| held-out perplexity | **{e.perplexity:.2f}** |
| held-out top-1 next-token accuracy | **{100 * e.accuracy:.2f} %** |
| unigram baseline perplexity (fitted on the training text, add-one) | {m['unigram']:.1f} |
| model / unigram | {e.perplexity / m['unigram']:.3f} (quality bar: < 0.25) |

{e.scored_tokens:,} held-out tokens, each scored once with at least 128 tokens of context after the first window.

## Samples (transformers `generate`, 80 new tokens)
{sample_text}

## Reproduce
```bash
apt-get install bible-kjv                                    # the corpus (Debian)
python models/recipe/prepare_corpus.py --out .device_data    # corpus.txt, train.txt, heldout.txt
python models/recipe/train_tokenizer.py --data .device_data --model-dir models/{name}
cp .device_data/heldout.txt models/{name}/
OUT=out bash models/recipe/gpu_train.sh                      # one GPU, ≈ {log['total_seconds'] / 60:.0f} min on an H100
python models/recipe/assemble.py --shards out/{name} --model-dir models/{name}
python models/recipe/write_card.py --data .device_data --model-dir models/{name}
```
Bit-exact weights are not guaranteed across GPUs and library versions (cuBLAS/SDPA kernels differ); the
figures above should reproduce to within a few percent.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the folder prepare_corpus.py wrote (train.txt)")
    ap.add_argument("--model-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    log_file = args.model_dir / "train_log.json"
    if not log_file.is_file():
        sys.exit(f"error: {log_file} is missing: run assemble.py on the GPU run's output first")
    log = json.loads(log_file.read_text())
    m = measure(args.model_dir, args.data)
    (args.model_dir / "README.md").write_text(card(args.model_dir.name, m, log))
    e = m["eval"]
    print(f"held-out perplexity {e.perplexity:.2f}, top-1 {100 * e.accuracy:.2f} %, unigram {m['unigram']:.1f}, "
          f"ratio {e.perplexity / m['unigram']:.3f} ({m['eval_seconds']:.0f} s); {m['params']:,} parameters")
    for kind, prompt, text in m["samples"]:
        print(f"--- {kind}: {prompt}{text}")


if __name__ == "__main__":
    main()
