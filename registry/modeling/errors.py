"""The modeling room's errors, each with its entry in the one error table (registry/errors.py)."""

from __future__ import annotations

from ..errors import InvalidInput, LoradockError


class AdapterIncompatible(LoradockError):
    """An adapter the multi-LoRA server cannot apply to its base: wrong kind, wrong modules or wrong shapes."""

    grpc_status, http_status = "FAILED_PRECONDITION", 422


class MergeError(InvalidInput):
    """A merge that cannot be made: an unknown method, no adapters, ranks that do not fit, a non-LoRA adapter."""


class ModelLoadError(LoradockError):
    """A base model that cannot be loaded as asked (bad quantization name, missing files...)."""
