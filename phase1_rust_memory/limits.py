"""The integer ranges every phase-1 type accepts: ``rust/src/limits.rs`` in Python, word for word.

Pool sizes are bounded before anything is allocated (block ids are 31-bit, so every id is a valid
int32 in the kernels' block tables; a block holds at most 2**16 tokens, so slots stay below 2**47).
Ids and counts must fit the Rust type they cross pyo3 as (u64 sequence ids and token counts, u32
block ids): a value outside is a ``ValueError`` naming the argument, its value, the range and the fix,
in the Rust extension and the Python reference alike; a non-integer is a ``TypeError`` in both.
"""

from __future__ import annotations

import operator

MAX_BLOCKS = (1 << 31) - 1
MAX_BLOCK_SIZE = 1 << 16
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1  # also usize on the 64-bit platforms the wheel is built for


class IntSpec:
    """One integer argument's range; ``check`` returns the value as an int or raises. ``argument``:
    a parameter of its own (pyo3 prefixes its TypeError with the name), not an item of a list."""

    __slots__ = ("name", "lo", "hi", "hint", "argument")

    def __init__(self, name: str, lo: int, hi: int, hint: str, *, argument: bool = True):
        self.name, self.lo, self.hi, self.hint, self.argument = name, lo, hi, hint, argument

    def error(self, value: int) -> ValueError:
        return ValueError(f"{self.name} must be an integer in [{self.lo}, {self.hi}], got {value}: "
                          f"{self.hint}")

    def check(self, value) -> int:
        if type(value) is not int:  # as pyo3 converts: bools and numpy ints pass, floats do not
            try:
                value = operator.index(value)
            except TypeError as e:
                raise TypeError(f"argument '{self.name}': {e}" if self.argument else str(e)) from None
        if not self.lo <= value <= self.hi:
            raise self.error(value)
        return value


_SEQ = "sequence ids are unsigned 64-bit integers"
_BLOCK = "block ids are unsigned 32-bit integers"

NUM_GPU_BLOCKS = IntSpec("num_gpu_blocks", 1, MAX_BLOCKS,
                         "size the GPU KV pool in blocks (ids are 31-bit: larger blocks hold more tokens)")
BLOCK_SIZE = IntSpec("block_size", 1, MAX_BLOCK_SIZE, "pass the tokens per KV block, 16 is the usual choice")
NUM_CPU_BLOCKS = IntSpec("num_cpu_blocks", 0, MAX_BLOCKS, "size the CPU swap pool in blocks (0: no swapping)")
NUM_BLOCKS = IntSpec("num_blocks", 0, MAX_BLOCKS, "size the pool in blocks (ids are 31-bit)")
SEQ_ID = IntSpec("seq_id", 0, U64_MAX, _SEQ)
SEQ_IDS = IntSpec("each of seq_ids", 0, U64_MAX, _SEQ, argument=False)
PARENT_ID = IntSpec("parent_id", 0, U64_MAX, _SEQ)
CHILD_ID = IntSpec("child_id", 0, U64_MAX, _SEQ)
NUM_TOKENS = IntSpec("num_tokens", 0, U64_MAX, "a token count is an unsigned 64-bit integer")
TOKEN_IDS = IntSpec("each of token_ids", 0, U32_MAX, "token ids are unsigned 32-bit integers", argument=False)
BLOCK = IntSpec("block", 0, U32_MAX, _BLOCK)
START = IntSpec("start", 0, U32_MAX, _BLOCK)
RUN_LENGTH = IntSpec("n", 0, U64_MAX, "a run length is an unsigned 64-bit integer")


def check_ids(seq_ids) -> list[int]:
    """A batch of sequence ids as a list, each checked (any iterable, as the Rust binding takes)."""
    check = SEQ_IDS.check
    return [check(s) for s in seq_ids]


def check_tokens(token_ids) -> list[int]:
    """Token ids (prefix caching's block contents) as a list, each checked."""
    check = TOKEN_IDS.check
    return [check(t) for t in token_ids]
