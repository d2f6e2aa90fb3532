"""Phase 0's single-request engine in the assembled one: ``phase4=off``'s path and the bs=1 yardstick.

``build_single`` builds it over the engine's model (phase 2's RoPE, phase 5's INT4 projections when chosen).

Phase 0's engines generate token ids in chunks (``on_tokens``); this module turns them into ``Delta``s with
phase 4's ``TextStream`` (the one stop-string / EOS / held-back-text path of the project), ends the
generation as soon as a stop string, EOS or the length limit is reached (``on_tokens`` returns True), and
reports how full the static KV cache was.
"""

from __future__ import annotations

import time
from typing import Iterator

from .outputs import Delta, RequestOutput
from .streaming import token_chunks


def build_single(engine):
    """Phase 0's engine (``impls["phase0"]``) for ``shared.engine.LLMEngine`` ``engine``, warmed up."""
    if engine.quant:
        from .quant import build_engine

        single = build_engine(engine.model, engine.quantized, max_seq_len=engine.max_model_len,
                              compile=engine.config.compile)
    else:
        from phase0_prototype import load_impl

        options = {}
        if engine.impls["phase2"] != "off":
            from phase2_rope_cuda.integration import phase0_rope_fn

            options["rope_fn"] = phase0_rope_fn(engine.impls["phase2"])
        if engine.impls["phase0"] == "solution" and engine.device.type == "cpu":
            options["sync_every"] = 1  # no device to keep fed: hand every token over at once
        single = load_impl(engine.impls["phase0"]).build(engine.model, max_seq_len=engine.max_model_len,
                                                         compile=engine.config.compile, **options)
        shared = engine.float_weights()
        if shared is not None and hasattr(single, "weights"):  # one copy of the fused weights (before capture)
            single.weights = shared
    if hasattr(single, "warmup"):
        single.warmup()
    return single


def text_feed(tokenizer, max_tokens: int, stop, ignore_eos: bool):
    """``feed(token ids) -> Delta``: stop strings, EOS and the length limit over one request's tokens."""
    from phase4_scheduler.text_stream import TextStream

    eos = () if ignore_eos else tuple(tokenizer.eos_ids)
    text = TextStream(tokenizer, stop, eos)
    count = 0

    def feed(chunk: list[int]) -> Delta:
        nonlocal count
        new, pieces, reason = [], [], None
        for token in chunk:
            count += 1
            new.append(token)
            final = count >= max_tokens or token in eos
            piece, stopped = text.push(token, final=final)
            pieces.append(piece)
            if stopped or final:
                reason = "stop" if (stopped or token in eos) else "length"
                break
        return Delta("".join(pieces), new, reason)

    return feed


def single_deltas(engine, tokenizer, ids, max_tokens, sampling, stop, ignore_eos) -> Iterator:
    """Streaming: the engine generates on a worker thread (``streaming.token_chunks``), text comes here."""
    feed = text_feed(tokenizer, max_tokens, stop, ignore_eos)
    for chunk in token_chunks(engine, ids, max_tokens, sampling, stop_on_eos=not ignore_eos):
        delta = feed(chunk)
        yield delta
        if delta.finish_reason is not None:
            return


def single_output(engine, tokenizer, ids, max_tokens, sampling, stop, ignore_eos):
    """Offline: the engine's own loop on this thread, text made in its chunk callback (a stop string ends
    the generation there). No worker thread: its hand-offs cost the bs=1 decode loop time (E.1a)."""
    feed = text_feed(tokenizer, max_tokens, stop, ignore_eos)
    t0, ttft, new, pieces, reason = time.perf_counter(), None, [], [], "length"

    def on_tokens(chunk) -> bool:
        nonlocal ttft, reason
        if ttft is None:
            ttft = time.perf_counter() - t0
        delta = feed(chunk[0].tolist())
        new.extend(delta.token_ids)
        pieces.append(delta.text)
        reason = delta.finish_reason or reason
        return delta.finish_reason is not None  # True ends the generation here

    engine.generate(ids, max_tokens, sampling, on_tokens=on_tokens, stop_on_eos=not ignore_eos)
    return RequestOutput(list(ids), new, "".join(pieces), reason, ttft)


def static_kv_utilisation(engine, ids: list[list[int]], outputs) -> float | None:
    """A static cache reserves ``kv_slots_per_request`` slots per request; decode step i holds prompt + i."""
    reserved = getattr(engine, "kv_slots_per_request", None)  # (optional in a learner's engine)
    if not reserved:
        return None  # no KV cache (phase 0's framework)
    live = steps = 0
    for p, out in zip(ids, outputs, strict=True):
        n = len(out.token_ids)
        live += n * len(p) + n * (n - 1) / 2
        steps += n
    return live / (steps * reserved) if steps else None
