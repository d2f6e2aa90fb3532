"""``titaninfer chat``: an interactive conversation through the model's chat template.

Each line read from stdin is a user turn; the reply streams to stdout and joins the history, so the next
turn sees the conversation (rendered by the tokenizer's template, as transformers' ``apply_chat_template``
would). When the history no longer fits the context, the oldest exchanges are dropped (the system message
stays); a single turn too long for the context is refused with one line and the chat goes on.
``/reset`` clears the history, ``/exit`` (or end of input, or Ctrl-C) ends the chat with exit code 0.
"""

from __future__ import annotations

import sys
from typing import TextIO

from phase0_prototype.errors import ModelError

HELP = "type a message; /reset clears the history, /exit or Ctrl-D ends the chat"


def fit_history(engine, system: str | None, history: list[dict], max_tokens: int) -> list[int]:
    """Token ids of the conversation, dropping the oldest exchanges until prompt + reply fit the context."""
    while True:
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = engine.encode(messages)
        if len(ids) + max_tokens <= engine.max_model_len or len(history) <= 1:
            return ids
        del history[:2]  # the oldest user turn and its reply


def run_chat(engine, sampling, *, max_tokens: int, system: str | None = None, stdin: TextIO = sys.stdin,
             stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    interactive = stdin.isatty()
    if interactive:
        print(f"[chat with {engine.model.name}; {HELP}]", file=stderr)
    history: list[dict] = []
    try:
        while True:
            if interactive:
                stderr.write("> ")
                stderr.flush()
            line = stdin.readline()
            if not line:  # end of input
                break
            message = line.strip()
            if not message:
                continue
            if message == "/exit":
                break
            if message == "/reset":
                history.clear()
                print("[history cleared]", file=stderr)
                continue
            turn = {"role": "user", "content": message}
            try:  # a turn that cannot fit even alone is refused, and the history stays as it was
                engine.check_request(fit_history(engine, system, [turn], max_tokens), max_tokens)
            except ModelError as e:
                print(f"error: {e}", file=stderr)
                continue
            history.append(turn)
            ids = fit_history(engine, system, history, max_tokens)
            pieces = []
            for delta in engine.stream(ids, sampling, max_tokens=max_tokens):
                pieces.append(delta.text)
                stdout.write(delta.text)
                stdout.flush()
            stdout.write("\n")
            stdout.flush()
            history.append({"role": "assistant", "content": "".join(pieces).strip()})
    except KeyboardInterrupt:
        stdout.write("\n")
    return 0
