"""Stop strings: the incremental check against a brute-force reference over the whole text, on random
token streams whose stops often arrive split over several tokens; its work bounded by the stop
lengths, never by the text length; and the bounds on a request's stops."""

from __future__ import annotations

import random

import pytest

from phase0_prototype.errors import ModelError
from phase4_scheduler.text_stream import (
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    StopMatcher,
    TextStream,
    check_stop,
)


class PieceTokenizer:
    """Token id i decodes to ``vocab[i]``: the text of a stream is exactly the join of its pieces."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)


def reference(text: str, stops: list[str]) -> tuple[int, int] | None:
    """(start, end) of the stop completed first in ``text`` (the longest of those ending together)."""
    hits = [(at + len(s), -len(s)) for s in stops if (at := text.find(s)) >= 0]
    if not hits:
        return None
    end, neg = min(hits)
    return end + neg, end


def held_reference(text: str, stops: list[str]) -> int:
    """The longest suffix of ``text`` that is a proper prefix of a stop."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


@pytest.mark.parametrize("seed", range(6))
def test_incremental_check_equals_the_whole_text_reference(seed):
    rng = random.Random(seed)
    alphabet = "ab" if seed % 2 else "abc "
    vocab = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(40)]
    tok = PieceTokenizer(vocab)
    for _ in range(60):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 5))]
        ids = [rng.randrange(len(vocab)) for _ in range(rng.randint(1, 30))]
        stream = TextStream(tok, stops)
        sent, stopped_at = "", None
        for i, t in enumerate(ids):
            final = i == len(ids) - 1
            piece, stopped = stream.push(t, final=final)
            sent += piece
            so_far = tok.decode(ids[:i + 1])
            if stopped:
                stopped_at = i
                break
            # nothing that may still become a stop string is sent, and nothing else is held back
            assert sent == (so_far if final else so_far[:len(so_far) - held_reference(so_far, stops)])
        whole = tok.decode(ids)
        hit = reference(whole, stops)
        if hit is None:
            assert stopped_at is None and sent == whole
        else:
            start, end = hit
            assert sent == whole[:start]
            # it stops at the token that completes the stop string, not later
            assert stopped_at == next(i for i in range(len(ids)) if len(tok.decode(ids[:i + 1])) >= end)


def test_a_stop_split_over_many_tokens_and_a_false_start():
    tok = PieceTokenizer(["Let", " th", "e", "re", " be", " l", "ight", "Let there"])
    stream = TextStream(tok, ["there be light"])
    out = [stream.push(t) for t in [7, 1, 2, 3, 4, 5, 6]]  # "Let there" then " there be light"
    assert "".join(p for p, _ in out) == "Let there "
    assert [s for _, s in out] == [False] * 6 + [True]


def test_the_work_per_token_is_bounded_by_the_stop_lengths_not_the_text():
    """100 stops of 10,000 characters over a 12,000-character text: KMP's moves per piece stay within
    2 x piece x stops + sum of the stop lengths, and in all within 2 x characters x stops — a search of
    the text so far (or the quadratic held-back scan it replaces) would count millions per piece."""
    rng = random.Random(0)
    stops = ["a" * 9_999 + c for c in (chr(0x100 + i) for i in range(100))]
    matcher = StopMatcher(tuple(stops))
    total, sum_len, reset = 0, sum(map(len, stops)), False
    while total < 12_000:
        piece = "a" * rng.randint(1, 6)
        if total > 10_500 and not reset:  # every automaton is 9,999 deep: "b" sends them all back to 0
            piece, reset = piece + "b", True
        before = matcher.moves
        assert matcher.feed(piece) is None
        assert matcher.moves - before <= 2 * len(piece) * len(stops) + sum_len
        assert matcher.held <= 9_999
        total += len(piece)
    assert matcher.moves <= 2 * total * len(stops)


def test_text_held_back_stays_within_the_longest_stop():
    """The stream keeps only the undecided tail, never the whole text (per-token work independent of it)."""
    tok = PieceTokenizer(["ab", "a", "b", "x"])
    stops = ["a" * (MAX_STOP_LENGTH - 1) + "x", "ab" * 200 + "q"]
    stream = TextStream(tok, stops)
    rng = random.Random(1)
    for _ in range(5_000):
        stream.push(rng.choice([0, 0, 1, 1, 2]))
        assert len(stream._pending) < MAX_STOP_LENGTH


def test_stop_bounds():
    assert check_stop(["a", "", "a", "b"]) == ("a", "b")
    with pytest.raises(ModelError, match="stop strings exceed the limit"):
        check_stop([str(i) for i in range(MAX_STOP_STRINGS + 1)])
    with pytest.raises(ModelError, match="characters exceeds the limit"):
        check_stop(["x" * (MAX_STOP_LENGTH + 1)])
    with pytest.raises(ModelError, match="list of strings"):
        check_stop("stop")
    assert check_stop(["x" * MAX_STOP_LENGTH] * MAX_STOP_STRINGS) == ("x" * MAX_STOP_LENGTH,)
