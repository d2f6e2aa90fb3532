"""Perplexity and top-1 next-token accuracy of any causal LM over a text, with a sliding window.

The model is any callable ``logits_fn(ids: LongTensor[1, T]) -> FloatTensor[1, T, V]`` (HF's
``lambda x: hf(x).logits``, a phase 0 engine's ``forward_logits``), so one copy of the evaluation serves
TinyLlama, the bundled model and a learner's engine.

Sliding window (as in the transformers perplexity guide): windows of ``window`` tokens start every
``stride`` tokens; each token is scored once, in the first window where it is a target, so every target but
those of the first window sees at least ``window - stride`` tokens of context. With ``bos_id`` each window
is prefixed by ``<s>`` (the way the model saw its training sequences and sees a prompt), and the text's
first token is scored too. A window covering the whole text is the plain full-context computation.

    python -m phase0_prototype.evaluate --model kjv-llama-18m --text models/kjv-llama-18m/heldout.txt
    python -m phase0_prototype.evaluate --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --wikitext2   # online

``unigram_perplexity`` is the baseline a trained model must beat: token frequencies of a training text
with add-one smoothing (``--unigram-from TRAIN.txt``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from phase0_prototype.errors import ModelError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    scored_tokens: int
    nll_sum: float  # natural log, summed over scored tokens
    correct: int  # scored tokens whose argmax prediction was right
    windows: int
    window: int
    stride: int

    @property
    def loss(self) -> float:
        return self.nll_sum / self.scored_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored_tokens

    def describe(self) -> str:
        return (f"{self.scored_tokens} tokens in {self.windows} windows (window {self.window}, "
                f"stride {self.stride}): loss {self.loss:.4f} nats, perplexity {self.perplexity:.2f}, "
                f"top-1 accuracy {100 * self.accuracy:.2f} %")


@torch.inference_mode()
def evaluate_ids(logits_fn: LogitsFn, ids: Sequence[int] | torch.Tensor, *, window: int = 256,
                 stride: int | None = None, bos_id: int | None = None,
                 device: str | torch.device = "cpu") -> EvalResult:
    """Score ``ids`` (no special tokens) with windows of ``window`` tokens (``<s>`` included) every
    ``stride``."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n, prefix = ids.numel(), int(bos_id is not None)
    span = window - prefix  # text tokens per window
    stride = stride or max(span // 2, 1)
    if span < 2 or not 1 <= stride <= span - 1 + prefix:
        raise ModelError(f"window {window} / stride {stride} leave tokens unscored: "
                         f"use window ≥ {2 + prefix} and 1 ≤ stride ≤ window - {1 - prefix}")
    if n < 2 - prefix:
        raise ModelError(f"the text has {n} tokens: nothing to score")
    nll, correct, scored, windows = 0.0, 0, 0, 0
    next_target, begin = 1 - prefix, 0
    while next_target < n:
        end = min(begin + span, n)
        chunk = ids[begin:end]
        inputs = torch.cat([torch.tensor([bos_id]), chunk]) if prefix else chunk
        logits = logits_fn(inputs[None].to(device))[0].float().cpu()
        # logits[j] predicts inputs[j + 1]; text position p sits at inputs index p - begin + prefix.
        first = next_target - begin + prefix - 1
        pred = logits[first:end - begin + prefix - 1]
        target = ids[next_target:end]
        nll += float(torch.nn.functional.cross_entropy(pred.double(), target, reduction="sum"))
        correct += int((pred.argmax(-1) == target).sum())
        scored += target.numel()
        windows += 1
        next_target, begin = end, begin + stride
    return EvalResult(scored, nll, correct, windows, window, stride)


def unigram_perplexity(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Perplexity of token frequencies counted on ``train_ids`` (add-one smoothing) over ``eval_ids``."""
    counts = Counter(int(i) for i in train_ids)
    total = len(train_ids) + vocab_size
    nll = -sum(math.log((counts.get(int(i), 0) + 1) / total) for i in eval_ids)
    return math.exp(nll / len(eval_ids))


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"evaluation text {path} does not exist: pass a UTF-8 text file with --text")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not UTF-8 text: pass a plain text file") from None
    if not text.strip():
        raise ModelError(f"{path} is empty: nothing to evaluate")
    return text


def wikitext2_text(local_file: str | Path | None = None, split: str = "test") -> str:
    """WikiText-2 (raw) as the transformers perplexity guide joins it: rows separated by blank lines.

    Online: the hub dataset ``wikitext``/``wikitext-2-raw-v1``. ``local_file``: a local copy read through the
    same ``datasets`` loader (a ``.parquet`` of the hub dataset, or a text file with one row per line).
    """
    try:
        from datasets import load_dataset
    except ImportError:
        raise ModelError("--wikitext2 needs the `datasets` package: pip install datasets") from None
    try:
        if local_file is None:
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
        else:
            local_file = Path(local_file)
            if not local_file.is_file():
                raise ModelError(f"WikiText file {local_file} does not exist: pass a .parquet or .txt copy")
            builder = "parquet" if local_file.suffix == ".parquet" else "text"
            rows = load_dataset(builder, data_files=str(local_file), split="train")
    except ModelError:
        raise
    except Exception as e:  # offline, hub errors: one line for the user
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise ModelError(f"could not load WikiText-2 ({type(e).__name__}: {first}): "
                         "go online or pass --text FILE") from None
    return "\n\n".join(rows["text"])


def logits_fn_for(model, engine_name: str) -> LogitsFn:
    """``hf``: transformers' LlamaForCausalLM on the same weights; else a phase 0 engine (framework, ...)."""
    if engine_name == "hf":
        from phase0_prototype.hf_peer import build_hf, missing_reason

        if missing_reason():
            raise ModelError(missing_reason())
        hf = build_hf(model)
        return lambda x: hf(x).logits
    from phase0_prototype import load_impl

    engine = load_impl(engine_name).build(model, compile=False)
    return engine.forward_logits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phase0_prototype.evaluate",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="kjv-llama-18m",
                    help="bundled name, local HF directory, hub id or random:tiny")
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="UTF-8 text file to score")
    source.add_argument("--wikitext2", action="store_true",
                        help="WikiText-2 raw test split (needs `datasets`)")
    ap.add_argument("--wikitext2-file", default=None,
                    help="local copy of WikiText-2 (.parquet or .txt) for --wikitext2")
    ap.add_argument("--window", type=int, default=256, help="tokens per window, <s> included")
    ap.add_argument("--stride", type=int, default=None, help="default: half the window")
    ap.add_argument("--no-bos", action="store_true", help="do not start each window with <s>")
    ap.add_argument("--engine", default="hf", help="hf (transformers) or a phase 0 impl: framework, solution")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--unigram-from", default=None, help="training text: also print the unigram baseline")
    args = ap.parse_args(argv)
    try:
        from phase0_prototype.sources import load_model

        text = wikitext2_text(args.wikitext2_file) if args.wikitext2 else read_text(args.text)
        model = load_model(args.model, dtype=args.dtype, device=args.device)
        if args.window > model.config.max_position_embeddings:
            raise ModelError(f"--window {args.window} exceeds the model's "
                             f"{model.config.max_position_embeddings} positions")
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        bos = None if args.no_bos else model.tokenizer.bos_id
        t0 = time.perf_counter()
        result = evaluate_ids(logits_fn_for(model, args.engine), ids, window=args.window, stride=args.stride,
                              bos_id=bos, device=args.device)
        print(f"[{args.model} · {args.engine} · {args.device} {args.dtype}] {result.describe()} "
              f"({time.perf_counter() - t0:.1f} s)")
        if args.unigram_from:
            train_ids = model.tokenizer.encode(read_text(args.unigram_from), add_special_tokens=False)
            ppl = unigram_perplexity(train_ids, ids, model.config.vocab_size)  # every text token
            print(f"unigram baseline (add-one, fitted on {args.unigram_from}): perplexity {ppl:.2f}; "
                  f"model / unigram = {result.perplexity / ppl:.3f}")
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
