"""A dataclass field that carries its help text: one place defines a setting's default and its help.

Config and option dataclasses (trainer/config.py, load_tests/run.py, server/options.py) declare each
setting with `documented(...)`; a CLI reads the help back with `help_texts(cls)`, as PEFT's
`LoraConfig` keeps `metadata={"help": ...}` per field. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def documented(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A `dataclasses.field` with `default` (or `factory` for mutable defaults) and `help` in its metadata."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def help_texts(cls: type) -> dict[str, str]:
    """Field name -> help text, for every field of the dataclass `cls`."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
