"""What the load generator sends: prompts from examples/*.jsonl, a seeded mix of adapters, routing keys."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidInput
from registry.names import parse_ref

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MIXES = ("random", "round-robin")


@dataclass(frozen=True)
class AdapterChoice:
    ref: str        # NAME, NAME:N or NAME@ALIAS, as sent
    weight: float   # relative share in the random mix


@dataclass(frozen=True)
class RequestSpec:
    adapter: str
    prompt: str
    routing_key: str


def parse_adapters(spec: str) -> list[AdapterChoice]:
    """`arith,shout=3,load-00:1` -> choices; a bare item has weight 1. The message names the bad item."""
    choices = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        ref, _, weight = item.partition("=")
        try:
            parse_ref(ref)
        except Exception as exc:
            raise InvalidInput(f"--adapters item {item!r}: {exc}") from None
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise InvalidInput(f"--adapters item {item!r}: the weight after '=' must be a number") from None
        if not w > 0:
            raise InvalidInput(f"--adapters item {item!r}: the weight must be positive")
        choices.append(AdapterChoice(ref, w))
    if not choices:
        raise InvalidInput(f"--adapters {spec!r}: give at least one adapter name")
    return choices


def _user_text(row: dict) -> str | None:
    """The user's side of one dataset line (alpaca, messages/conversations, or completion form)."""
    if "instruction" in row:
        return "\n\n".join(s for s in (row.get("instruction"), row.get("input")) if s)
    turns = row.get("messages") or row.get("conversations")
    if turns:
        users = [t.get("content") or t.get("value") for t in turns if t.get("role", t.get("from")) in ("user", "human")]
        return users[-1] if users else None
    return row.get("prompt")


def load_prompts(source: Path | None = None, limit: int = 1000) -> list[str]:
    """User prompts from a JSONL file, or every *.jsonl in a directory (default: examples/)."""
    source = Path(source or EXAMPLES)
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    prompts = []
    for path in files:
        if not path.is_file():
            raise InvalidInput(f"--prompts {str(path)!r}: no such file")
        for line in path.read_text().splitlines():
            if line.strip():
                text = _user_text(json.loads(line))
                if text:
                    prompts.append(text)
    if not prompts:
        raise InvalidInput(f"--prompts {str(source)!r}: no prompts found (JSONL in alpaca, messages or completion form)")
    return prompts[:limit]


class Workload:
    """A seeded, thread-safe stream of requests: which adapter, which prompt, which routing key."""

    def __init__(self, adapters: list[AdapterChoice], prompts: list[str], keys: int = 10_000, mix: str = "random", seed: int = 0):
        if mix not in MIXES:
            raise InvalidInput(f"--mix {mix!r}: use one of {', '.join(MIXES)}")
        self.adapters = adapters
        self.prompts = prompts
        self.keys = keys
        self.mix = mix
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._turn = 0

    def next(self) -> RequestSpec:
        with self._lock:
            if self.mix == "round-robin":
                adapter = self.adapters[self._turn % len(self.adapters)].ref
            else:
                adapter = self._rng.choices(self.adapters, weights=[a.weight for a in self.adapters])[0].ref
            self._turn += 1
            prompt = self._rng.choice(self.prompts)
            key = f"user-{self._rng.randrange(self.keys)}" if self.keys else ""
        return RequestSpec(adapter, prompt, key)
