"""Plain records returned by the registry (rows turned into dataclasses with JSON decoded)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field


@dataclass
class FileRecord:
    path: str
    size: int
    sha256: str


@dataclass
class Version:
    """One immutable adapter version."""

    id: int
    adapter: str
    number: int
    manifest_digest: str
    base_name: str
    base_digest: str
    peft_type: str
    task_type: str | None
    rank: int | None
    alpha: float | None
    target_modules: list[str] | None
    adapter_config: dict
    size_bytes: int
    creator: str
    message: str
    parent: int | None
    run_id: str | None
    created_at: str
    deleted_at: str | None = None
    files: list[FileRecord] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.adapter}:{self.number}"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Version":
        data = dict(row)
        data["target_modules"] = json.loads(data["target_modules"]) if data["target_modules"] else None
        data["adapter_config"] = json.loads(data["adapter_config"] or "{}")
        return cls(**data)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ref"] = self.ref
        return out


@dataclass
class AdapterSummary:
    name: str
    versions: int
    latest: int | None
    aliases: dict[str, int]
    updated_at: str | None


@dataclass
class AliasEvent:
    id: int
    adapter: str
    alias: str
    action: str
    old_version: int | None
    new_version: int | None
    actor: str
    at: str


@dataclass
class PushResult:
    version: Version
    created: bool
    warnings: list[str] = field(default_factory=list)
