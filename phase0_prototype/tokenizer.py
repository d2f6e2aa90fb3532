"""Text ↔ token ids: a Hugging Face ``tokenizer.json`` through ``tokenizers``, or a byte-level fallback.

The chat template (``tokenizer_config.json``'s ``chat_template`` or ``chat_template.jinja``) is rendered
the way transformers' ``apply_chat_template`` does: a sandboxed jinja2 environment with
``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter, the
``raise_exception`` and ``strftime_now`` globals, and the special tokens as variables. The rendered text is
then encoded without adding special tokens (the template writes them), as transformers does.

``random:*`` models have no vocabulary file, so they get ``ByteTokenizer``: ids 0–2 are
``<unk> <s> </s>`` and ids 3–258 are the 256 byte values; ids above (a random model's vocabulary is
larger) decode as ``⟨id⟩`` so generated text stays printable.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from phase0_prototype.errors import ModelError, first_line, read_json, read_text, require

# TinyLlama-1.1B-Chat-v1.0's template (Zephyr style), used when a model ships none.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)


def render_chat_template(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                         **variables: Any) -> str:
    """Render ``template`` exactly as transformers' ``apply_chat_template(..., tokenize=False)``."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **variables)
    except jinja2.exceptions.TemplateError as e:
        raise ModelError(f"chat template failed: {e}") from None


def read_chat_template(spec: str) -> str:
    """A chat template given by the user (vLLM's ``--chat-template``): a Jinja file's path or the template
    itself; checked by rendering one user turn, so a broken one fails at start, not on the first request."""
    from pathlib import Path

    path = Path(spec)
    if path.is_file():
        template = path.read_text()
    elif "{{" in spec or "{%" in spec:
        template = spec
    else:
        raise ModelError(f"--chat-template {spec}: no such file; give a Jinja file or the template itself")
    try:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    except ModelError as e:
        raise ModelError(f"--chat-template: {e}") from None
    return template


class Tokenizer:
    """The interface both tokenizers share."""

    bos_id: int | None
    eos_ids: tuple[int, ...]
    chat_template: str
    special_tokens: dict[str, str]

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        return render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                    **self.special_tokens)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)


class HFTokenizer(Tokenizer):
    """``tokenizer.json`` (+ ``tokenizer_config.json``) of a Hugging Face checkpoint."""

    def __init__(self, path: str | Path, bos_id: int | None = None, eos_ids: Sequence[int] = ()):
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(path)
        file = path / "tokenizer.json"
        try:
            self._tok = RustTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception for any malformed file
            raise ModelError(f"{file} cannot be loaded by tokenizers ({first_line(e)}): it is corrupt or "
                             "from a newer tokenizers; re-download it") from None
        cfg_file = path / "tokenizer_config.json"
        cfg = read_json(cfg_file) if cfg_file.is_file() else {}
        self.special_tokens = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            require(value is None or isinstance(value, str), cfg_file,
                    f"{key} is {value!r}, not a token string: fix the file or re-download it")
            if value is not None:
                self.special_tokens[key] = value
        jinja_file = path / "chat_template.jinja"
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        require(template is None or isinstance(template, str), cfg_file,
                "chat_template is not a string: fix the file or re-download it")
        if jinja_file.is_file():
            template = read_text(jinja_file)
        self.chat_template = template or DEFAULT_CHAT_TEMPLATE
        self.bos_id = self._token_id("bos_token", bos_id)
        eos = self._token_id("eos_token", None)
        self.eos_ids = tuple(eos_ids) or ((eos,) if eos is not None else ())

    def max_id(self) -> int:
        """The largest token id the vocabulary (added tokens included) can produce."""
        return max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1)

    def _token_id(self, key: str, fallback: int | None) -> int | None:
        token = self.special_tokens.get(key)
        found = self._tok.token_to_id(token) if token is not None else None
        return found if found is not None else fallback

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        # encode_batch releases the GIL while it works (encode holds it): a server tokenizing a long prompt
        # on a worker thread keeps answering other requests.
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens, for random models (no vocabulary file to read)."""

    OFFSET = 3

    def __init__(self, vocab_size: int):
        if vocab_size < 256 + self.OFFSET:
            raise ModelError(f"vocab_size {vocab_size} is too small for the byte tokenizer (needs ≥ 259)")
        self.vocab_size = vocab_size
        self.bos_id, self.eos_ids = 1, (2,)
        self.chat_template = DEFAULT_CHAT_TEMPLATE
        self.special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        # The chat template writes "</s>" as text; map it back to the EOS id like a real vocabulary would.
        ids = [self.bos_id] if add_special_tokens else []
        for i, piece in enumerate(text.split("</s>")):
            if i:
                ids.append(self.eos_ids[0])
            ids += [b + self.OFFSET for b in piece.encode("utf-8")]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            if self.OFFSET <= i < 256 + self.OFFSET:
                pending.append(i - self.OFFSET)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            if i >= 256 + self.OFFSET:
                out.append(f"⟨{i}⟩")
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


class StreamDecoder:
    """Turns a growing list of ids into printable text increments.

    Decoding one token at a time breaks multi-byte characters and SentencePiece's leading spaces, so
    we decode the whole generation each time and emit the new suffix, holding back a trailing
    replacement character (an incomplete UTF-8 sequence) until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end is shown as is)."""
        text = self.tokenizer.decode(self.ids)
        new, self.emitted = text[self.emitted:], len(text)
        return new


def load_tokenizer(path: str | Path | None, *, vocab_size: int, bos_id: int | None = None,
                   eos_ids: Sequence[int] = ()) -> Tokenizer:
    """The directory's ``tokenizer.json`` when present, else the byte tokenizer; a vocabulary with ids the
    model's embedding (``vocab_size`` rows) has no row for is refused."""
    if path is None or not (Path(path) / "tokenizer.json").is_file():
        return ByteTokenizer(vocab_size)
    tokenizer = HFTokenizer(path, bos_id=bos_id, eos_ids=eos_ids)
    top = tokenizer.max_id()
    require(top < vocab_size, Path(path) / "tokenizer.json", f"token ids reach {top} but config.json's "
            f"vocab_size is {vocab_size}: the tokenizer belongs to another model; use the checkpoint's own")
    return tokenizer
