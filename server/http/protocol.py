"""The HTTP API's wire schema: OpenAI's request bodies (pydantic), and how each becomes the service's GenerateRequest.

Fields mirror OpenAI's (vLLM's `entrypoints/openai/protocol.py` is the model), plus vLLM's `top_k` and
`repetition_penalty`, plus one extension object, `loradock` (a per-request merge, a request id). Values are
checked once, by the service (`server/service.py`); here only what the wire adds: a field this engine cannot
honour is a 400 naming it, never silently ignored. Omitted sampling fields take the server's defaults, as
on gRPC (temperature 0 = greedy, `--default-max-new-tokens`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.errors import shown

from ..errors import BadRequest
from ..service_types import ChatMessage, GenerateRequest, SamplingParams, WeightedAdapter

# Fields OpenAI defines that this engine does not implement: refused unless they ask for nothing (their defaults).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
    "best_of": (None, 1), "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "functions": (None, []), "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "prompt_logprobs": (None, 0), "min_tokens": (None, 0),
}
ID_PREFIXES = ("chatcmpl-", "cmpl-")  # a response's `id` is one of these + the request id


def bad_param(param: str, message: str) -> BadRequest:
    """A 400 whose OpenAI error body names `param` (read by `errors.error_body`)."""
    error = BadRequest(message)
    error.param = param
    return error


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI adds fields often; unknown ones are ignored, UNSUPPORTED refused


class MergeEntry(_Body):
    adapter: str
    weight: float


class LoradockOptions(_Body):
    """The `loradock` extension object of a completion body."""

    merge: list[MergeEntry] = Field(default_factory=list, max_length=256)
    merge_method: str = ""
    merge_density: float = 0.0
    merge_majority_sign_method: str = ""
    request_id: str = ""


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    loradock: LoradockOptions = Field(default_factory=LoradockOptions)

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise bad_param("prompt", f"prompt is a list of {len(self.prompt)} prompts; send one prompt per request")
        return self.prompt[0]


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class LoadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
    lora_path: str | None = None
    pin: bool = False


class UnloadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)


class FeedbackRequest(_Body):
    request_id: str = Field(min_length=1)
    score: float = 0.0
    label: str = ""

    def bare_request_id(self) -> str:
        """The service's request id, from it or from a response's `id` (`cmpl-<request id>`)."""
        for prefix in ID_PREFIXES:
            if self.request_id.startswith(prefix):
                return self.request_id[len(prefix):]
        return self.request_id


def generate_request(body: CompletionRequest | ChatRequest, base_name: str, routing_header: str,
                     max_tokens_limit: int) -> GenerateRequest:
    """The service's request for an OpenAI body: `model` is an adapter ref, or the base's name for the bare base."""
    _refuse_unsupported(body)
    max_new = body.max_new_tokens()
    if max_new is not None and not 1 <= max_new <= max_tokens_limit:
        name = "max_completion_tokens" if isinstance(body, ChatRequest) and body.max_completion_tokens is not None else "max_tokens"
        raise bad_param(name, f"{name}={max_new}: allowed 1..{max_tokens_limit} (--max-new-tokens-limit)")
    ext = body.loradock
    if ext.merge and body.model != base_name:
        raise bad_param("model", f"model={shown(body.model)} with loradock.merge: set model to the base's name "
                                 f"({base_name!r}); the merge names the adapters")
    if isinstance(body, ChatRequest):
        prompt, messages = "", [ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
    else:
        prompt, messages = body.text(), []
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return GenerateRequest(
        adapter="" if body.model == base_name else body.model, prompt=prompt, messages=messages,
        params=SamplingParams(max_new_tokens=max_new or 0, temperature=_or(body.temperature), top_p=_or(body.top_p),
                              top_k=body.top_k or 0, seed=body.seed or 0, stop=stop,
                              repetition_penalty=_or(body.repetition_penalty)),
        routing_key=body.user or routing_header, merge=[WeightedAdapter(m.adapter, m.weight) for m in ext.merge],
        merge_method=ext.merge_method, merge_density=ext.merge_density,
        merge_majority_sign_method=ext.merge_majority_sign_method, request_id=ext.request_id, protocol="http",
    )


def _or(value: float | None) -> float:
    return 0.0 if value is None else value


def _refuse_unsupported(body: _Sampling) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value not in (None, 0):
            raise bad_param(name, f"{name}={value}: not supported by this server's engine (only 0); "
                                  "use repetition_penalty instead")
    if body.n not in (None, 1):
        raise bad_param("n", f"n={body.n}: this server returns one choice per request; send {body.n} requests "
                             "(with different seeds) instead" if body.n and body.n > 1 else f"n={body.n}: must be 1")
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED and value not in UNSUPPORTED[name]:
            raise bad_param(name, f"{name}={shown(value, 64)}: not supported by this server; leave it out")
