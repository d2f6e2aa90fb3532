"""Parts of OpenAI's response bodies that read a finished or running request: its ``usage`` and its ``logprobs``
(chat's per-token objects, or completions' parallel lists), as the server sends them."""

from __future__ import annotations


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


def usage(r) -> dict:
    return {"prompt_tokens": len(r.prompt_ids), "completion_tokens": len(r.output_ids),
            "total_tokens": len(r.prompt_ids) + len(r.output_ids)}
