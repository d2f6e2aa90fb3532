"""Driving phase 0's single-request engine: one request's tokens into text, offline or streamed.

Phase 0's engines generate token ids in chunks (``on_tokens``); this module turns them into ``Delta``s with
phase 4's ``TextStream`` (the one stop-string / EOS / held-back-text path of the project), ends the
generation as soon as a stop string, EOS or the length limit is reached (``on_tokens`` returns True), and
reports how full the static KV cache was.
"""

from __future__ import annotations

import time
from typing import Iterator

from shared.streaming import token_chunks


def text_feed(tokenizer, max_tokens: int, stop, ignore_eos: bool):
    """``feed(token ids) -> Delta``: stop strings, EOS and the length limit over one request's tokens."""
    from phase4_scheduler.text_stream import TextStream
    from shared.engine import Delta

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
    from shared.engine import RequestOutput

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
