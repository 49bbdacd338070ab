"""A vLLM LoRA resolver for loradock registries: `vllm serve BASE --enable-lora` with this plugin installed serves
`NAME`, `NAME:N` and `NAME@ALIAS` from a loradock registry, fetched on first use and digest-verified.

vLLM calls a resolver for a request whose `model` it does not know, when VLLM_ALLOW_RUNTIME_LORA_UPDATING is on.
This one asks loradock's CLI which version the ref names (`reg show REF --json`), refuses a version trained on
another base than LORADOCK_BASE (when set), and pulls that exact version into LORADOCK_VLLM_CACHE/NAME/N with
`reg pull` (every file's sha256 checked; nothing is written there until the whole version is). The registry is
whatever `reg` is pointed at: LORADOCK_REGISTRY (grpc://...) with LORADOCK_TOKEN, or LORADOCK_HOME.

Settings (environment): LORADOCK_REG (the `reg` executable, default `reg` on PATH), LORADOCK_VLLM_CACHE (default
~/.cache/loradock-vllm), LORADOCK_BASE (the registered base vLLM serves), and `reg`'s own LORADOCK_* variables.

vLLM keeps a resolved name for the life of the server: `NAME` and `NAME@ALIAS` go on serving the version they
first resolved to after a push or an alias move, until `POST /v1/unload_lora_adapter` drops the name (the next
request resolves it again). `NAME:N` never changes. `reg serve --engine vllm` does not have this limit: loradock
resolves each request itself and asks vLLM for the exact version.
"""

from __future__ import annotations

from .resolver import LoradockResolver, register

__all__ = ["LoradockResolver", "register"]
