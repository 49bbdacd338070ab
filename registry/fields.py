"""A dataclass field that carries its help text: one place defines a setting's default, help, flag and range.

Config and option dataclasses (trainer/config.py, load_tests/run.py, server/options.py) declare each
setting with `documented(...)`; a CLI reads the help back with `help_texts(cls)` (or builds its flags
from the fields, cli/common.py:with_options_of), as PEFT's `LoraConfig` keeps `metadata={"help": ...}`
per field and litgpt's `TrainArgs` turns each field into a flag. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def documented(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
               flag: str | None = None, minimum: float | None = None) -> Any:
    """A `dataclasses.field` with `default` (or `factory` for mutable defaults) and `help` in its metadata.

    `flag`: the command-line name when it is not the field's (`grace` for `grace_s`); `minimum`: the smallest
    value `range_problems` accepts, so the check lives beside the default it guards.
    """
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if minimum is not None:
        metadata["minimum"] = minimum
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_texts(cls: type) -> dict[str, str]:
    """Field name -> help text, for every field of the dataclass `cls`."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def flag_name(f: dataclasses.Field) -> str:
    """The field's command-line flag: `--max-batch-size` for `max_batch_size`, or its `flag=` when given."""
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def range_problems(obj: Any) -> list[str]:
    """One message per field of the dataclass instance `obj` below its `minimum`, naming the flag and the value."""
    problems = []
    for f in dataclasses.fields(obj):
        minimum = f.metadata.get("minimum")
        value = getattr(obj, f.name)
        if minimum is None or value is None or value >= minimum:
            continue
        bound = "0 or more" if minimum == 0 else f"at least {minimum:g}"
        problems.append(f"{flag_name(f)} must be {bound}, got {value}")
    return problems
