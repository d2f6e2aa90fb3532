"""Train the bundled KJV Llama on one GPU: AdamW, linear warm-up + cosine, bf16 autocast, fixed seed.

The architecture is TinyLlama's (RMSNorm, RoPE, SwiGLU, grouped-query attention 4:1, no biases) scaled to
18 M parameters with tied embeddings. The corpus is small (≈ 0.9 M tokens), so the run is data-bound, not
compute-bound: the risk is over-fitting, not under-training. Hence dropout on the residual branches (training
only; the saved config has none), a validation split carved from the training text (every 50th block of
4096 tokens, never the held-out text) and ``--runs``: a few (steps, dropout) schedules trained one after the
other, each with its own full cosine; the one with the lowest validation loss is saved.

    python models/recipe/train.py --data .device_data --tokenizer-dir models/kjv-llama-18m --out OUT/kjv-llama-18m

Reads ``train.bin`` / ``heldout.bin`` (uint16 ids from train_tokenizer.py); writes the model in bf16
(sharded safetensors, ``--shard-size``: the device returns files ≤ 16 MiB; ``assemble.py`` merges them),
``config.json``, ``generation_config.json`` and ``train_log.json`` (loss curves, held-out metrics, settings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # phase0_prototype.evaluate: the one evaluation utility

ARCH = dict(vocab_size=8192, hidden_size=512, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
            num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, hidden_act="silu", initializer_range=0.02)
VAL_BLOCK, VAL_EVERY = 4096, 50


def load_ids(path: Path) -> torch.Tensor:
    if not path.is_file():
        sys.exit(f"error: {path} is missing: run models/recipe/prepare_corpus.py and train_tokenizer.py first")
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint16).to(torch.int64)


def split_validation(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``VAL_EVERY``-th block of the training text is validation (spread over all books)."""
    blocks = list(ids.split(VAL_BLOCK))
    val = [b for i, b in enumerate(blocks) if i % VAL_EVERY == VAL_EVERY // 2]
    train = [b for i, b in enumerate(blocks) if i % VAL_EVERY != VAL_EVERY // 2]
    return torch.cat(train), torch.cat(val)


def batch(stream: torch.Tensor, size: int, seq_len: int, bos: int, gen: torch.Generator):
    """Random windows, each starting with ``<s>`` like a prompt: inputs and next-token targets [size, seq_len]."""
    starts = torch.randint(0, stream.numel() - seq_len, (size,), generator=gen)
    rows = torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
    seq = torch.cat([torch.full((size, 1), bos), rows], dim=1)
    return seq[:, :-1], seq[:, 1:]


def add_residual_dropout(model, p: float) -> None:
    """Dropout on the embedding and on each attention / MLP output before it joins the residual stream."""
    def hook(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    if p > 0:
        model.model.embed_tokens.register_forward_hook(hook)
        for layer in model.model.layers:
            layer.self_attn.register_forward_hook(hook)
            layer.mlp.register_forward_hook(hook)


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validation_loss(model, val: torch.Tensor, seq_len: int, bos: int, device) -> float:
    model.eval()
    n = (val.numel() // seq_len) * seq_len
    rows = val[:n].view(-1, seq_len)
    seq = torch.cat([torch.full((rows.shape[0], 1), bos), rows], dim=1).to(device)
    total, count = 0.0, 0
    for chunk in seq.split(32):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(chunk[:, :-1]).logits
        total += float(F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"))
        count += chunk[:, 1:].numel()
    model.train()
    return total / count


def train_one(args, steps: int, dropout: float, train, val, bos: int, device, deadline: float) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(**ARCH, attention_dropout=dropout)).to(device)
    add_residual_dropout(model, dropout)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    curve, best, best_state, t0 = [], float("inf"), None, time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, args.lr, args.warmup, args.min_lr_ratio)
        x, y = batch(train, args.batch, args.seq_len, bos, gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = step == steps - 1 or time.perf_counter() > deadline
        if (step + 1) % args.eval_every == 0 or last:
            v = validation_loss(model, val, args.seq_len, bos, device)
            point = dict(step=step + 1, train_loss=round(float(loss.detach()), 4), val_loss=round(v, 4),
                         lr=opt.param_groups[0]["lr"], seconds=round(time.perf_counter() - t0, 1))
            curve.append(point)
            print(f"  steps {steps} dropout {dropout}: {point}", flush=True)
            if v < best:
                best, best_state = v, {k: t.detach().clone() for k, t in model.state_dict().items()}
        if last:
            break
    model.load_state_dict(best_state)
    return dict(model=model, steps=steps, dropout=dropout, best_val_loss=best, curve=curve,
                best_step=min(curve, key=lambda p: p["val_loss"])["step"], seconds=time.perf_counter() - t0,
                truncated=curve[-1]["step"] < steps)


def heldout_metrics(model, heldout: torch.Tensor, bos: int, device) -> dict:
    from phase0_prototype.evaluate import evaluate_ids

    model.eval()
    result = evaluate_ids(lambda x: model(x).logits, heldout, window=256, stride=128, bos_id=bos, device=device)
    return dict(perplexity=result.perplexity, accuracy=result.accuracy, tokens=result.scored_tokens,
                window=256, stride=128, dtype=str(next(model.parameters()).dtype))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tokenizer-dir", type=Path, required=True, help="for the <s> id (tokenizer.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", default="700:0.0,1400:0.1,2800:0.2", help="steps:dropout schedules to compare")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-seconds", type=float, default=230, help="wall-clock guard over all runs")
    ap.add_argument("--shard-size", default="15MB")
    args = ap.parse_args(argv)

    from tokenizers import Tokenizer
    from transformers import GenerationConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    bos = Tokenizer.from_file(str(args.tokenizer_dir / "tokenizer.json")).token_to_id("<s>")
    train, val = split_validation(load_ids(args.data / "train.bin"))
    heldout = load_ids(args.data / "heldout.bin")
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; train {train.numel():,} "
          f"tokens, validation {val.numel():,}, held-out {heldout.numel():,}", flush=True)
    deadline, t_start = time.perf_counter() + args.max_seconds, time.perf_counter()
    results = []
    for spec in args.runs.split(","):
        steps, dropout = spec.split(":")
        if time.perf_counter() > deadline:
            print(f"  skipped {spec}: past --max-seconds", flush=True)
            continue
        results.append(train_one(args, int(steps), float(dropout), train, val, bos, device, deadline))
    best = min(results, key=lambda r: r["best_val_loss"])
    model = best.pop("model")
    model.config.attention_dropout = 0.0
    metrics_fp32 = heldout_metrics(model, heldout, bos, device)
    model = model.to(torch.bfloat16)
    metrics_bf16 = heldout_metrics(model, heldout, bos, device)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size=args.shard_size)
    log = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
               parameters=sum(p.numel() for p in model.parameters()), train_tokens=train.numel(),
               val_tokens=val.numel(), tokens_per_step=args.batch * args.seq_len, settings=vars(args) | {
                   "data": str(args.data), "tokenizer_dir": str(args.tokenizer_dir), "out": str(args.out)},
               chosen=dict(steps=best["steps"], dropout=best["dropout"], best_step=best["best_step"]),
               heldout_fp32=metrics_fp32, heldout_bf16=metrics_bf16, total_seconds=time.perf_counter() - t_start,
               runs=[{k: v for k, v in r.items() if k != "model"} for r in results])
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1))
    for r in results:
        print(f"run steps={r['steps']} dropout={r['dropout']}: best val loss {r['best_val_loss']:.4f} at step "
              f"{r['best_step']} ({r['seconds']:.0f} s{', truncated' if r['truncated'] else ''})")
    print(f"chosen {log['chosen']}; held-out fp32 {metrics_fp32}; bf16 {metrics_bf16}; "
          f"total {log['total_seconds']:.0f} s; {log['parameters']:,} parameters")


if __name__ == "__main__":
    main()
