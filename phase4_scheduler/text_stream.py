"""Token ids -> text increments for one request, with stop strings.

Text is decoded incrementally over a short window (vLLM's ``detokenize_incrementally``): the tokens
since the last emitted boundary are decoded twice, with and without the newest ones, and the
difference is the new text — O(1) per token, where decoding the whole generation each time (phase 0's
``StreamDecoder``) is O(length) per token, milliseconds per step at 256 requests. Text that ends in
an incomplete UTF-8 sequence (U+FFFD) is held back until the next token completes it. A stop string
ends the request and is not part of the output (OpenAI's semantics); since it can arrive split over
several tokens, the tail of the text that could still be the start of a stop string is held back
until the next token decides. EOS ids end the request without adding text.

``catch_up`` turns the tokens of a request into text only when someone asks (the engine's events are
lazy for requests without stop strings: an offline run that never reads the text never decodes it).
"""

from __future__ import annotations

import threading
from typing import Sequence

from phase0_prototype.tokenizer import Tokenizer


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


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (), eos_ids: tuple[int, ...] = ()):
        self.decoder, self.stop, self.eos_ids = IncrementalDecoder(tokenizer), tuple(s for s in stop if s), set(eos_ids)
        self.text, self.sent = "", 0
        self.count = 0  # tokens pushed so far
        self._lock = threading.Lock()  # lazy events may be read on another thread (the server's event loop)

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def push(self, token: int, final: bool = False) -> tuple[str, bool]:
        """Add one token; returns (text to send now, whether a stop string ended the request)."""
        self.count += 1
        if token not in self.eos_ids:
            self.text += self.decoder.push([token])
        if final:
            self.text += self.decoder.flush()
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                return self._emit(len(self.text)), True
        if not self.stop:
            return self._emit(len(self.text)), False
        return self._emit(len(self.text) if final else len(self.text) - self._held_back()), False

    def catch_up(self, ids: Sequence[int], upto: int, final: bool) -> str:
        """Push ``ids[count:upto]`` (the request's output so far; ``final`` on the last) and return the
        text they add. Called in token order; a later call includes what earlier unread ones held."""
        with self._lock:
            pieces = []
            while self.count < upto:
                piece, _ = self.push(ids[self.count], final=final and self.count + 1 == upto)
                pieces.append(piece)
            return "".join(pieces)

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.sent)
        delta, self.sent = self.text[self.sent:upto], upto
        return delta
