"""Token ids -> text increments for one request, with stop strings.

Text is decoded incrementally over a short window (vLLM's ``detokenize_incrementally``): the tokens
since the last emitted boundary are decoded twice, with and without the newest ones, and the
difference is the new text — O(1) per token, where decoding the whole generation each time (phase 0's
``StreamDecoder``) is O(length) per token, milliseconds per step at 256 requests. Text that ends in
an incomplete UTF-8 sequence (U+FFFD) is held back until the next token completes it. A stop string
ends the request and is not part of the output (OpenAI's semantics); since it can arrive split over
several tokens, the tail of the text that could still be the start of a stop string is held back
until the next token decides. EOS ids end the request without adding text.

Stop strings are matched incrementally (``StopMatcher``: one KMP automaton per stop string), so a
token costs O(its new text x number of stops + sum of stop lengths), never the length of the text so
far: this runs on the engine thread, and one request's 16 long stops must not slow everyone else's
steps. The output ends before the stop string that is completed first (by end position; the longest
of those ending together), whatever the tokenization. ``MAX_STOP_STRINGS`` / ``MAX_STOP_LENGTH`` bound
a request's stops (``check_stop``; the server's protocol uses the same bounds).

``catch_up`` turns the tokens of a request into text only when someone asks (the engine's events are
lazy for requests without stop strings: an offline run that never reads the text never decodes it).
"""

from __future__ import annotations

import threading
from typing import Sequence

from phase0_prototype.errors import ModelError
from phase0_prototype.tokenizer import Tokenizer

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 512  # characters


class IncrementalDecoder:
    """New text for new ids, decoding only the window since the last clean boundary."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids = tokenizer, []
        self.prefix = self.read = 0  # ids[prefix:read] was decoded last; ids[:read] is all emitted

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        text = decode(self.ids[self.prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # an incomplete character (or nothing printable yet): wait for the next id
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end is shown as is)."""
        if self.read == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        text = decode(self.ids[self.prefix:])
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]


def check_stop(stop: Sequence[str]) -> tuple[str, ...]:
    """The non-empty stop strings of ``stop``, duplicates dropped (ModelError, a ValueError, past the bounds)."""
    if isinstance(stop, str) or not all(isinstance(s, str) for s in stop):
        raise ModelError("stop must be a list of strings")
    stop = tuple(dict.fromkeys(s for s in stop if s))
    if len(stop) > MAX_STOP_STRINGS:
        raise ModelError(f"{len(stop)} stop strings exceed the limit of {MAX_STOP_STRINGS}: give fewer")
    longest = max(map(len, stop), default=0)
    if longest > MAX_STOP_LENGTH:
        raise ModelError(f"a stop string of {longest} characters exceeds the limit of {MAX_STOP_LENGTH}: "
                         "shorten it")
    return stop


def _failure(s: str) -> list[int]:
    """KMP's prefix function: ``f[i]`` = length of the longest proper prefix of ``s[:i + 1]`` that is
    also its suffix."""
    f, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = f[k - 1]
        if s[i] == s[k]:
            k += 1
        f[i] = k
    return f


class StopMatcher:
    """The first stop string in a text fed piece by piece. ``state[i]``: the length of the longest
    prefix of stop ``i`` that the text fed so far ends with (always < its length until it matches), so
    ``held`` — the tail that may still become a stop string — is their maximum. ``moves`` counts the
    automaton transitions (the work; the cost test reads it)."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.fail = stops, [_failure(s) for s in stops]
        self.state = [0] * len(stops)
        self.moves = 0

    @property
    def held(self) -> int:
        return max(self.state)

    def feed(self, piece: str) -> tuple[int, int] | None:
        """Feed ``piece``; ``(end, length)`` of the first stop string completed in it (``end``: offset in
        ``piece`` just past it), or None. After a match the states are stale: the request has ended."""
        best: tuple[int, int] | None = None  # (end, -length): the earliest end, then the longest
        moves, state = 0, self.state
        for i, s in enumerate(self.stops):
            k, f, n = state[i], self.fail[i], len(s)
            limit = len(piece) if best is None else best[0]  # nothing past the best end can win
            j = 0
            if k == 0:  # from the start state only s[0] moves: skip to it at C speed
                j = piece.find(s[0], 0, limit)
                if j < 0:
                    continue
            while j < limit:
                c = piece[j]
                while k and s[k] != c:
                    k = f[k - 1]
                    moves += 1
                if s[k] == c:
                    k += 1
                moves += 1
                j += 1
                if k == n:
                    if best is None or (j, -n) < best:
                        best = (j, -n)
                    break
            state[i] = k
        self.moves += moves
        return None if best is None else (best[0], -best[1])


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), eos_ids: tuple[int, ...] = ()):
        self.decoder, self.stop, self.eos_ids = IncrementalDecoder(tokenizer), check_stop(stop), set(eos_ids)
        self.matcher = StopMatcher(self.stop) if self.stop else None
        self._pending = ""  # decoded, not sent: the tail that may still be the start of a stop string
        self.count = 0  # tokens pushed so far
        self._lock = threading.Lock()  # lazy events may be read on a thread other than the engine's

    def push(self, token: int, final: bool = False) -> tuple[str, bool]:
        """Add one token; returns (text to send now, whether a stop string ended the request)."""
        self.count += 1
        piece = self.decoder.push([token]) if token not in self.eos_ids else ""
        if final:
            piece += self.decoder.flush()
        if self.matcher is None:
            return piece, False
        text = self._pending + piece
        hit = self.matcher.feed(piece) if piece else None
        if hit is not None:  # the text ends where the stop string starts (inside ``text``: see ``held``)
            end, length = hit
            self._pending = ""
            return text[:len(text) - len(piece) + end - length], True
        keep = 0 if final else self.matcher.held
        self._pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def catch_up(self, ids: Sequence[int], upto: int, final: bool) -> str:
        """Push ``ids[count:upto]`` (the request's output so far; ``final`` on the last) and return the
        text they add. Called in token order; a later call includes what earlier unread ones held."""
        with self._lock:
            pieces = []
            while self.count < upto:
                piece, _ = self.push(ids[self.count], final=final and self.count + 1 == upto)
                pieces.append(piece)
            return "".join(pieces)
