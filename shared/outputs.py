"""What the engine returns: a finished request, a streamed increment, and what the last ``generate`` did."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    prompt_ids: list[int]
    token_ids: list[int]  # new tokens, up to and including an EOS
    text: str  # EOS and stop strings excluded
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    ttft_s: float | None = None  # arrival to first token


@dataclass
class Delta:
    """A streamed increment: new text (may be empty while a stop string is undecided) and its ids."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # set on the last delta


@dataclass
class RunStats:
    """What the last ``generate`` did: which path ran, and how full the KV memory it reserved was."""

    path: str
    requests: int
    new_tokens: int
    seconds: float
    kv_utilisation: float | None  # live token slots / reserved KV slots, mean over decode steps
    notes: list[str] = field(default_factory=list)
