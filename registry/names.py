"""Names and references: `NAME`, `NAME:N`, `NAME@ALIAS`.

Names are validated before they touch the database or the file system, so a name can
never be a path (no `/`, no `..`, no upper case, no spaces, at most 64 characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName, InvalidRef

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_RULE = "lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters, no '..'"


def validate_name(name: str, what: str = "adapter name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidName(f"invalid {what} {name!r}: use {NAME_RULE}")
    return name


@dataclass(frozen=True)
class Ref:
    """A parsed reference. Exactly one of `version` and `alias` is set, or neither (bare name)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(text: str) -> Ref:
    """Parse `NAME`, `NAME:N` or `NAME@ALIAS`; anything else raises `InvalidRef` naming the text."""
    if not isinstance(text, str) or not text:
        raise InvalidRef(f"invalid reference {text!r}: expected NAME, NAME:N or NAME@ALIAS")
    if text.count(":") + text.count("@") > 1:
        raise InvalidRef(f"invalid reference {text!r}: expected NAME, NAME:N or NAME@ALIAS")
    try:
        if ":" in text:
            name, number = text.split(":")
            if not number.isdigit() or int(number) < 1:
                raise InvalidRef(f"invalid version {number!r} in reference {text!r}: versions are integers from 1")
            return Ref(validate_name(name), version=int(number))
        if "@" in text:
            name, alias = text.split("@")
            return Ref(validate_name(name), alias=validate_name(alias, "alias"))
        return Ref(validate_name(text))
    except InvalidName as exc:
        raise InvalidRef(f"invalid reference {text!r}: {exc}") from None
