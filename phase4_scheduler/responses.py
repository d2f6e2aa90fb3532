"""Parts of OpenAI's response bodies that read finished or running engine requests: ``usage``, ``logprobs``
(chat's per-token objects, or completions' parallel lists), and ``ParentRequest``, the ``n`` engine requests
behind one OpenAI request whose ``n`` choices they are."""

from __future__ import annotations


class ParentRequest:
    """One OpenAI request of ``n`` choices fanned out into ``n`` engine requests (its children, vLLM V1's
    ``ParentRequest``): choice ``i`` is child ``i``, sampled alone with its own seed (``seed + i``) and
    scheduled like any request (with prefix caching, the children share the prompt's KV blocks). The
    parent gathers their events (``index``), remembers which finished and, while streaming, how many of
    each child's token logprobs were sent already."""

    def __init__(self, children: list):
        self.children = children
        self._index = {r.request_id: i for i, r in enumerate(children)}
        self.done: set[int] = set()  # choices whose finished event arrived
        self.logprobs_sent = [0] * len(children)

    def index(self, request) -> int:
        return self._index[request.request_id]

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.children)

    def unfinished_ids(self) -> list[int]:
        """Engine ids of the children still running (to abort when the request fails or its client leaves)."""
        return [r.request_id for i, r in enumerate(self.children) if i not in self.done]

    def usage(self) -> dict:
        """The prompt counted once, the completion tokens of every choice (as OpenAI and vLLM)."""
        prompt = len(self.children[0].prompt_ids)
        completion = sum(len(r.output_ids) for r in self.children)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def logprobs_body(tok, r, start: int, chat: bool, end: int | None = None) -> dict:
    """OpenAI's ``logprobs`` of ``r``'s output tokens ``[start, end)`` (EOS left out, as from the text): chat's
    ``{"content": [{token, logprob, bytes, top_logprobs}]}`` or completions' ``{tokens, token_logprobs,
    top_logprobs, text_offset}``. A token's string is its own decode."""
    entries = [(t, e) for t, e in zip(r.output_ids[start:end], r.token_logprobs[start:end], strict=False)
               if t not in r.eos_ids]

    def text(t: int) -> str:
        return tok.decode([t])

    if chat:
        return {"content": [{"token": text(t), "logprob": lp, "bytes": list(text(t).encode()),
                             "top_logprobs": [{"token": text(i), "logprob": v, "bytes": list(text(i).encode())}
                                              for i, v in top]} for t, (lp, top) in entries]}
    offsets, at = [], 0
    for t, _ in entries:
        offsets.append(at)
        at += len(text(t))
    return {"tokens": [text(t) for t, _ in entries], "token_logprobs": [lp for _, (lp, _) in entries],
            "top_logprobs": [{text(i): v for i, v in top} for _, (_, top) in entries], "text_offset": offsets}


def answer_choice(tok, r, index: int, text: str, chat: bool) -> dict:
    """Choice ``index`` of a whole answer: engine request ``r`` finished with ``text``."""
    choice = {"index": index, "finish_reason": r.finish_reason,
              "logprobs": logprobs_body(tok, r, 0, chat) if r.logprobs is not None else None}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return choice


def chunk_choice(tok, parent: ParentRequest, index: int, text: str | None, finish: str | None, chat: bool,
                 first: bool = False) -> dict:
    """Choice ``index`` of a stream chunk: ``text`` and the token logprobs not sent yet; ``first``: the chunk
    that opens the choice (chat's role, or completions' echo), without logprobs."""
    r, lp = parent.children[index], None
    if r.logprobs is not None and not first:
        upto = len(r.token_logprobs)
        lp = logprobs_body(tok, r, parent.logprobs_sent[index], chat, upto)
        parent.logprobs_sent[index] = upto
    if chat:
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": lp}
    return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": lp}
