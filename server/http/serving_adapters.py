"""GET /v1/models, vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter, and POST /v1/feedback.

Model ids are what `model` accepts: the base's name, and for every adapter with versions trained on this base
its bare NAME (the latest version, or its rollout), each NAME@ALIAS and each live NAME:N. As in vLLM, an
adapter's `root` is what it is loaded from (here the version it resolves to) and its `parent` the base.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from registry.errors import NotFound, shown

from ..options import ServerOptions
from ..service import InferenceService
from .protocol import FeedbackRequest, LoadAdapterRequest, UnloadAdapterRequest, bad_param


def model_cards(service: InferenceService) -> list[dict]:
    base, registry = service.base, service.registry
    loaded = set(service.cache.entries)
    cards = [_card(base.name, base.name, None, int(service.started), {
        "version": "", "base": base.name, "base_digest": base.weights_digest, "quantization": service.quantization,
        "loaded": True})]
    for summary in registry.list_adapters():
        versions = {v.number: v for v in registry.list_versions(summary.name) if v.base_digest == base.weights_digest}
        if not versions:
            continue
        ids = [(summary.name, summary.latest)] + [(f"{summary.name}@{a}", n) for a, n in sorted(summary.aliases.items())]
        ids += [(v.ref, n) for n, v in sorted(versions.items())]
        for model_id, number in ids:
            v = versions.get(number)
            if v is None:
                continue  # this name resolves to a version on another base: not servable here
            cards.append(_card(model_id, v.ref, base.name, _epoch(v.created_at), {
                "version": v.ref, "base": v.base_name, "base_digest": v.base_digest, "peft_type": v.peft_type,
                "rank": v.rank or 0, "size_bytes": v.size_bytes, "loaded": v.ref in loaded}))
    return cards


def _card(model_id: str, root: str, parent: str | None, created: int, loradock: dict) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "loradock", "root": root,
            "parent": parent, "permission": [], "loradock": loradock}


def _epoch(timestamp: str) -> int:
    try:
        return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def load_adapter(service: InferenceService, options: ServerOptions, body: LoadAdapterRequest) -> dict:
    """Load `lora_name` (a registry ref) into a slot; with `lora_path` (and --allow-path-adapters), push that
    directory to the registry as `lora_name` first, then load the version it became."""
    ref = body.lora_name
    if body.lora_path is not None:
        ref = _push_path(service, options, body.lora_name, body.lora_path)
    loaded = service.load_adapter(ref, body.pin)
    info = loaded.adapter
    return {"object": "lora_adapter", "lora_name": body.lora_name, "version": info.version, "loaded": True,
            "pinned": info.pinned, "already_loaded": loaded.already_loaded, "load_ms": loaded.load_ms,
            "message": f"Success: LoRA adapter '{body.lora_name}' added successfully ({info.version})."}


def _push_path(service: InferenceService, options: ServerOptions, name: str, lora_path: str) -> str:
    if not options.allow_path_adapters:
        raise bad_param("lora_path", "lora_path is refused: this server loads adapters from its registry by name "
                                     "(lora_name: NAME, NAME:N or NAME@ALIAS); start it with --allow-path-adapters to "
                                     "let admins load a directory the server can read")
    path = Path(lora_path).expanduser().resolve()
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise bad_param("lora_path", f"lora_path={shown(lora_path)}: not a directory this server can read")
    return service.registry.push(path, name, base=service.base.name, message="loaded by POST /v1/load_lora_adapter").version.ref


def unload_adapter(service: InferenceService, body: UnloadAdapterRequest) -> dict:
    if not service.unload_adapter(body.lora_name):
        raise NotFound(f"lora_name={shown(body.lora_name)} is not loaded (loaded: "
                       f"{', '.join(sorted(service.cache.entries)) or 'none'})")
    return {"object": "lora_adapter", "lora_name": body.lora_name, "unloaded": True,
            "message": f"Success: LoRA adapter '{body.lora_name}' removed successfully."}


def record_feedback(service: InferenceService, body: FeedbackRequest) -> dict:
    record = service.record_feedback(body.bare_request_id(), body.score, body.label, body.correction)
    return {"object": "feedback", "recorded": True, "request_id": record.request_id, "adapter": record.adapter,
            "version": record.version, "variant": record.arm}

