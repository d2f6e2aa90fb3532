"""A phase-0 ``Engine.generate`` (push: it calls ``on_tokens`` with each chunk) as a pull iterator.

The engine runs in a worker thread and hands each chunk of new ids to a queue; the caller iterates.
When the caller stops early (a stop string matched, the consumer broke out, Ctrl-C) the iterator sets a
flag and the worker's next ``on_tokens`` returns True, which ends ``generate`` at that chunk. Only one
thread touches the engine at a time: the caller waits on the queue while the worker runs, so a CUDA
graph captured on the worker's first call sees no other CUDA work.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator


def token_chunks(engine, prompt_ids: list[int], max_new_tokens: int, sampling, *, stop_on_eos: bool) -> Iterator[list[int]]:
    """Lists of new token ids, in order, as ``engine.generate`` produces them (phase 0's chunking:
    every ``sync_every`` tokens on a GPU). Exceptions of the engine are re-raised here."""
    chunks: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def on_tokens(chunk) -> bool:
        if not cancel.is_set():
            chunks.put(("tokens", chunk[0].tolist()))
        return cancel.is_set()  # True ends ``generate`` at this chunk

    def work() -> None:
        try:
            engine.generate(prompt_ids, max_new_tokens, sampling, on_tokens=on_tokens, stop_on_eos=stop_on_eos)
            chunks.put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            chunks.put(("error", e))

    worker = threading.Thread(target=work, name="titaninfer-generate", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = chunks.get()
            if kind == "tokens":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        cancel.set()
        worker.join()
