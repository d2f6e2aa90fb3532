"""OpenAI request bodies (pydantic), the answers' shapes and the error JSON: what the server accepts and
how it refuses.

Every field is range-checked here, so nothing out of range reaches the tokenizer or the engine thread:
the seed fits int64 (torch's generator), counts and priorities fit their integer types, stop strings are
within ``text_stream``'s limits, and every string is encodable as UTF-8 (JSON lets a client send a lone
surrogate such as ``"\\ud800"``, which Python decodes but cannot encode: the tokenizer and the JSON reply
would fail on it). A refusal is a 400 whose ``param`` names the field (``messages.0.content``,
``stop.1``). A field that takes several JSON types (``prompt``, ``stop``) is checked as the type it was
sent as, so the message speaks of that type. The token ids of a prompt are checked against the model's
vocabulary by the server (the vocabulary is the model's, not the protocol's).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

from phase0_prototype.sampling import SEED_RANGE
from phase4_scheduler.logits_processing import LogitsProcessing
from phase4_scheduler.text_stream import MAX_STOP_LENGTH, MAX_STOP_STRINGS

# Integer bounds are written as exclusive powers of two (lt=2**63, not le=2**63 - 1): FastAPI's OpenAPI
# schema holds bounds as floats, and only those survive the conversion exactly.
INT64 = (-2**63, 2**63)  # [min, max)
INT32_MAX = 2**31 - 1  # max_tokens, top_k: far above any context; the engine's context check is the precise one
MAX_PROMPT_TOKEN_IDS = 1 << 20  # a token-id prompt; the server's context check is the precise one
MAX_MODEL_NAME = 256
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs
MAX_N = 128  # choices per request (OpenAI's limit): each is an engine request of its own


def _utf8(text):
    """Refuses a string with a lone surrogate (before pydantic's own string check, whose message is vaguer)."""
    try:
        if isinstance(text, str):
            text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError("invalid_unicode", "lone surrogate at character {at} is not valid Unicode: "
                                  "send UTF-8 text", {"at": e.start}) from None
    return text


Text = Annotated[str, BeforeValidator(_utf8)]
StopString = Annotated[str, Field(max_length=MAX_STOP_LENGTH), BeforeValidator(_utf8)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


def _prompt_kind(value) -> str | None:
    """Which branch of ``prompt`` the value was sent as (None: none, refused)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "texts" if value and isinstance(value[0], str) else "ids"
    return None


def _stop_kind(value) -> str | None:
    return "text" if isinstance(value, str) else "texts" if isinstance(value, list) else None


Prompt = Annotated[
    Union[Annotated[Text, Tag("text")],
          Annotated[list[TokenId], Tag("ids"), Field(min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)],
          Annotated[list[Text], Tag("texts"), Field(min_length=1, max_length=1)]],  # one prompt per request
    Discriminator(_prompt_kind, custom_error_type="prompt_type",
                  custom_error_message="give a string, a list of one string or a list of token ids")]
Stop = Annotated[
    Union[Annotated[StopString, Tag("text")],
          Annotated[list[StopString], Tag("texts"), Field(max_length=MAX_STOP_STRINGS)]],
    Discriminator(_stop_kind, custom_error_type="stop_type",
                  custom_error_message="give a string or a list of strings")]


def unsupported(*accepted: Any, fix: str) -> Any:
    """A field this server does not serve: its neutral values (``accepted``) pass, anything else is a 400
    naming the field — a client that asks for it learns so, instead of a silent different answer."""

    def check(value: Any) -> Any:
        if any(value == a and type(value) is type(a) or value is a for a in accepted):
            return value
        raise PydanticCustomError("unsupported", f"not supported by this server: {fix}")

    return Annotated[Any, BeforeValidator(check)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False  # one last chunk with no choices and the request's usage


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Annotated[str, Field(max_length=MAX_MODEL_NAME), BeforeValidator(_utf8)]
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)  # chat's newer name; wins
    stream_options: StreamOptions | None = None
    # Sent by real clients, not served (yet): refused by name unless neutral.
    echo: unsupported(None, False, fix="omit it, or send false") = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)  # only = n (vLLM V1 dropped best_of): the server checks
    # Logits processing (``logits_processing``): OpenAI's penalties and bias, vLLM's repetition_penalty, min_tokens.
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=INT32_MAX)
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]] | None = \
        Field(default=None, max_length=MAX_LOGIT_BIAS)
    min_tokens: int = Field(default=0, ge=0, le=INT32_MAX)
    tools: unsupported(None, [], fix="omit it (no tool calling)") = None
    tool_choice: unsupported(None, "none", fix="omit it (no tool calling)") = None
    functions: unsupported(None, [], fix="omit it (no function calling)") = None
    function_call: unsupported(None, "none", fix="omit it (no function calling)") = None
    response_format: unsupported(None, {"type": "text"}, fix='omit it, or send {"type": "text"}') = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=INT32_MAX)  # an extension (vLLM's): 0 = off
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], lt=SEED_RANGE[1] + 1)
    stop: Stop | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=MAX_N)  # choices: n engine requests of one prompt (seeds seed, seed+1, ...)
    priority: int = Field(default=0, ge=INT64[0], lt=INT64[1])  # an extension: lower is served first
    ignore_eos: bool = False  # an extension for benchmarks: run to max_tokens

    def processing(self) -> LogitsProcessing:
        bias = tuple((int(t), b) for t, b in (self.logit_bias or {}).items())
        return LogitsProcessing(self.presence_penalty, self.frequency_penalty, self.repetition_penalty, bias,
                                self.min_tokens)

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(SamplingFields):
    prompt: Prompt
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # each token's, and the k most likely
    echo: bool = False  # the answer's text starts with the prompt's

    def logprobs_k(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    type: Literal["text"]  # image and audio parts: this is a text model
    text: Text


class ChatMessage(BaseModel):
    """A chat turn. ``developer`` (OpenAI's newer name for ``system``) and ``tool`` (a tool's result, given to
    the model as a user turn: no tool calling here) become roles the chat templates know; a content given as
    a list of text parts is their concatenation."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[Text, Annotated[list[TextPart], Field(min_length=1)]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self) -> dict[str, str]:
        return {"role": {"developer": "system", "tool": "user"}.get(self.role, self.role), "content": self.text()}


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# (A text part's own ``text`` is left out: it is also the tag of the string branch of ``prompt`` and ``stop``.)
_FIELDS = {name for m in (CompletionRequest, ChatRequest, ChatMessage, StreamOptions) for name in m.model_fields}
_FIELDS.add("type")


# ---------------------------------------------------------------------- answers (documentation only)
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


# ---------------------------------------------------------------------- refusing
class ApiError(HTTPException):
    """A refusal in OpenAI's error JSON (``body``), raised anywhere while handling a request (an
    ``HTTPException``, so FastAPI passes it on even from inside its body reading). ``type_`` defaults
    to ``server_error`` for 5xx, ``invalid_request_error`` otherwise."""

    def __init__(self, status: int, message: str, *, type_: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(status, message, headers)
        type_ = type_ or ("server_error" if status >= 500 else "invalid_request_error")
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # it may quote a lone surrogate
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status_code, headers=self.headers)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """The first pydantic error as (one line, param): ('max_tokens: Input should be ...', 'max_tokens').

    ``param`` keeps the field names and list indices of the error's location (not the union branch tags
    or FastAPI's ``body``); a body that is not JSON names no param."""
    if not errors:
        return "invalid request body: send a JSON object", None
    e = errors[0]
    if e.get("type") == "json_invalid":  # its loc holds the character offset, which is no param
        at = e["loc"][-1] if e.get("loc") else "?"
        return (f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')} at character {at}): "
                "send a JSON object"), None
    loc = [str(x) for x in e.get("loc", ()) if isinstance(x, int) or x in _FIELDS]
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    if param is None and e.get("type") in ("model_attributes_type", "dict_type"):
        msg = "the body must be a JSON object"
    return (f"{param}: {msg}" if param else msg), param
