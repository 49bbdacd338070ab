"""The HTTP API's wire schema: OpenAI's request bodies (pydantic), and how each becomes a service request.

A completion body becomes the InferenceService's GenerateRequest (`generate_request`), a fine-tuning job body the
job queue's SubmitRequest (`job_submit_request`, at the end).

Fields mirror OpenAI's (vLLM's `entrypoints/openai/protocol.py` is the model), plus vLLM's `top_k` and
`repetition_penalty`, plus one extension object, `loradock` (a per-request merge, a request id). Values are
checked once, by the service (`server/service.py`); here only what the wire adds: a field this engine cannot
honour is a 400 naming it, never silently ignored. Omitted sampling fields take the server's defaults, as
on gRPC (temperature 0 = greedy, `--default-max-new-tokens`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.errors import InvalidName, shown
from registry.jobs import SubmitRequest
from registry.names import validate_name

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
    correction: str = ""  # the response it should have given (kept only while the adapter's capture is on)

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


# --- OpenAI's fine-tuning API: POST /v1/fine_tuning/jobs ---------------------------------------------------------------
# A job body is strict where a completion body is lenient: a training setting this server would silently ignore
# trains something other than what was asked, so every field it does not take is a 400 naming it.

DEFAULT_LEARNING_RATE = 2e-4  # trainer/config.py's `learning_rate` default; `learning_rate_multiplier` scales it
DATASET_TYPE = "chat"  # OpenAI's chat format ({"messages": [...]}) is the trainer's `chat` dataset type
HYPERPARAMETER_RANGES = {"n_epochs": (1, 50), "batch_size": (1, 256)}  # OpenAI's own ranges
MAX_LEARNING_RATE_MULTIPLIER = 1000.0  # 2e-4 x 1000 = 0.2: beyond it no LoRA run is sane (the trainer takes < 1)
MAX_SEED = 2**31 - 1
METADATA_LIMITS = (16, 64, 512)  # OpenAI's: keys per object, characters per key, characters per value
MAX_INTEGRATIONS = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    """OpenAI's supervised hyperparameters; each is "auto" (our default) or a number, checked by `job_settings`."""

    n_epochs: Any = "auto"
    batch_size: Any = "auto"
    learning_rate_multiplier: Any = "auto"


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(_Strict):
    type: str
    supervised: SupervisedMethod | None = None
    dpo: Any = None
    reinforcement: Any = None


class WandbIntegration(_Strict):
    project: str = Field(min_length=1)
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Integration(_Strict):
    type: str
    wandb: WandbIntegration | None = None


class FineTuningJobRequest(_Strict):
    """`client.fine_tuning.jobs.create(...)`: what `job_submit_request` maps onto a training config."""

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = None


def job_submit_request(body: FineTuningJobRequest, training_bytes: bytes, validation_bytes: bytes | None = None
                       ) -> SubmitRequest:
    """The job queue's SubmitRequest for an OpenAI job body: its config (trainer/config.py keys) and its datasets.

    `model` is the registered base, `training_file` the dataset (its bytes sent with the job, as a remote submission
    sends them), `validation_file` the held-out data (`test_datasets`; without it the trainer holds out a seeded
    10 % of the training file), `suffix` the adapter name (default `<model>-ft`), the hyperparameters `num_epochs`,
    `micro_batch_size` and `learning_rate` (= 2e-4 x the multiplier); "auto" or none leaves the trainer's default.
    The OpenAI fields are kept in the job's `extra["openai"]`, which the job object is shaped from.
    """
    _refuse_unsupported_job_fields(body)
    adapter = _suffix_name(body.suffix) if body.suffix is not None else default_adapter_name(body.model)
    config: dict[str, Any] = {"base_model": body.model, "datasets": [{"path": body.training_file, "type": DATASET_TYPE}],
                              "push": {"name": adapter}, **job_settings(body)}
    files = {body.training_file: training_bytes}
    if body.validation_file is not None:
        if body.validation_file == body.training_file:
            raise bad_param("validation_file", f"validation_file={shown(body.validation_file)} is the training file: "
                                               "held-out data must be other examples (or leave it out for a split)")
        config["test_datasets"] = [{"path": body.validation_file, "type": DATASET_TYPE}]
        files[body.validation_file] = validation_bytes
    if body.seed is not None:
        if not 0 <= body.seed <= MAX_SEED:
            raise bad_param("seed", f"seed={body.seed}: allowed 0..{MAX_SEED}")
        config["seed"] = body.seed
    integrations = [i.model_dump(exclude_none=True) for i in body.integrations or []]
    if integrations:
        wandb = body.integrations[0].wandb
        config["report_to"] = ["wandb"]
        config.update({f"wandb_{key}": value for key, value in (("project", wandb.project), ("entity", wandb.entity),
                                                                ("name", wandb.name)) if value is not None})
    openai = {"training_file": body.training_file, "validation_file": body.validation_file, "suffix": body.suffix,
              "metadata": _metadata(body.metadata), "integrations": integrations,
              "hyperparameters": _requested_hyperparameters(body).model_dump()}
    return SubmitRequest(config=config, files=files, source="openai", extra={"openai": openai})


def _suffix_name(suffix: str) -> str:
    """The suffix as the adapter name the result is pushed under (checked as every adapter name is)."""
    try:
        return validate_name(suffix, "suffix")
    except InvalidName as exc:
        raise bad_param("suffix", str(exc)) from None


def default_adapter_name(model: str) -> str:
    """`<model>-ft` as an adapter name (lower case; characters a name cannot hold become `-`)."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", model.rsplit("/", 1)[-1].lower())
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")[:61]
    return f"{stem}-ft" if stem else "fine-tuned"


def job_settings(body: FineTuningJobRequest) -> dict[str, Any]:
    """The training config keys the hyperparameters set; "auto" (or leaving one out) keeps the trainer's default."""
    hyper, where = _requested_hyperparameters(body), _hyperparameters_param(body)
    settings: dict[str, Any] = {}
    for name, key in (("n_epochs", "num_epochs"), ("batch_size", "micro_batch_size")):
        value = getattr(hyper, name)
        if value != "auto":
            low, high = HYPERPARAMETER_RANGES[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise bad_param(f"{where}.{name}", f"{where}.{name}={shown(value)}: expected \"auto\" or an integer "
                                                   f"{low}..{high}")
            settings[key] = value
    multiplier = hyper.learning_rate_multiplier
    if multiplier != "auto":
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or \
                not 0 < multiplier <= MAX_LEARNING_RATE_MULTIPLIER:
            raise bad_param(f"{where}.learning_rate_multiplier",
                            f"{where}.learning_rate_multiplier={shown(multiplier)}: expected \"auto\" or a number in "
                            f"(0, {MAX_LEARNING_RATE_MULTIPLIER:g}] (it scales our learning rate {DEFAULT_LEARNING_RATE:g})")
        settings["learning_rate"] = DEFAULT_LEARNING_RATE * multiplier
    return settings


def _requested_hyperparameters(body: FineTuningJobRequest) -> Hyperparameters:
    supervised = body.method.supervised if body.method is not None else None
    in_method = supervised.hyperparameters if supervised is not None else None
    if in_method is not None and body.hyperparameters is not None:
        raise bad_param("hyperparameters", "hyperparameters and method.supervised.hyperparameters are both set: give "
                                           "them once (OpenAI deprecates the top-level field in favour of method)")
    return in_method or body.hyperparameters or Hyperparameters()


def _hyperparameters_param(body: FineTuningJobRequest) -> str:
    return "hyperparameters" if body.hyperparameters is not None else "method.supervised.hyperparameters"


def _refuse_unsupported_job_fields(body: FineTuningJobRequest) -> None:
    method = body.method
    if method is not None:
        if method.type != "supervised":
            raise bad_param("method.type", f"method.type={shown(method.type)}: only \"supervised\" fine-tuning is "
                                           "supported")
        for name in ("dpo", "reinforcement"):
            if getattr(method, name) is not None:
                raise bad_param(f"method.{name}", f"method.{name}: only supervised fine-tuning is supported; leave it out")
    integrations = body.integrations or []
    if len(integrations) > MAX_INTEGRATIONS:
        raise bad_param("integrations", f"integrations: {len(integrations)} given; a job reports to at most "
                                        f"{MAX_INTEGRATIONS} (a W&B run)")
    for i, integration in enumerate(integrations):
        if integration.type != "wandb":
            raise bad_param(f"integrations[{i}].type", f"integrations[{i}].type={shown(integration.type)}: only "
                                                       "\"wandb\" is supported")
        if integration.wandb is None:
            raise bad_param(f"integrations[{i}].wandb", f"integrations[{i}].wandb: required for type \"wandb\" "
                                                        "({project, entity, name})")
        if integration.wandb.tags:
            raise bad_param(f"integrations[{i}].wandb.tags", f"integrations[{i}].wandb.tags: not supported (the run "
                                                             "is named, not tagged); leave it out")


def _metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    keys, key_chars, value_chars = METADATA_LIMITS
    if len(metadata) > keys:
        raise bad_param("metadata", f"metadata has {len(metadata)} keys; at most {keys}")
    for key, value in metadata.items():
        if len(key) > key_chars:
            raise bad_param("metadata", f"metadata key {shown(key)}: at most {key_chars} characters")
        if len(value) > value_chars:
            raise bad_param(f"metadata.{key}", f"metadata.{key}: {len(value)} characters; at most {value_chars}")
    return metadata
