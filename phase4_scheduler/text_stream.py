"""Token ids -> text increments for one request, with stop strings.

Text is decoded incrementally (phase 0's ``StreamDecoder`` holds back incomplete UTF-8). A stop string
ends the request and is not part of the output (OpenAI's semantics); since it can arrive split over
several tokens, the tail of the text that could still be the start of a stop string is held back
until the next token decides. EOS ids end the request without adding text.
"""

from __future__ import annotations

from phase0_prototype.tokenizer import StreamDecoder, Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (), eos_ids: tuple[int, ...] = ()):
        self.decoder, self.stop, self.eos_ids = StreamDecoder(tokenizer), tuple(s for s in stop if s), set(eos_ids)
        self.text, self.sent = "", 0

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
        if token not in self.eos_ids:
            self.text += self.decoder.push([token])
        if final:
            self.text += self.decoder.flush()
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                return self._emit(len(self.text)), True
        return self._emit(len(self.text) if final else len(self.text) - self._held_back()), False

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.sent)
        delta, self.sent = self.text[self.sent:upto], upto
        return delta
