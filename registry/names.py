"""Names and references: `NAME`, `NAME:N`, `NAME@ALIAS`.

Names are validated before they touch the database or the file system, so a name can
never be a path (no `/`, no `..`, no upper case, no spaces, at most 64 characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput, InvalidName, InvalidRef, shown

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_PATTERN = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also accepts '１' and '²'
MAX_VERSION = 2**63 - 1  # SQLite's largest INTEGER
# A training run's id, as the trainer makes them (a job's run is named after the job): a plain name, never a path.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
NAME_RULE = "lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters, no '..'"


def validate_name(name: str, what: str = "adapter name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidName(f"invalid {what} {shown(name)}: use {NAME_RULE}")
    return name


def check_run_id(run_id: str, hint: str = "") -> str:
    """`run_id` if it is a plain run name; else InvalidInput naming it (`hint`: where to find the right ones)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or run_id in (".", ".."):
        raise InvalidInput(f"run id {shown(run_id)}: expected a plain name like arith-20250101-120000-ab12cd "
                           f"(letters, digits, '.', '_' and '-'; at most 200){hint}")
    return run_id


def check_version_number(number: object, where: str = "version") -> int:
    """A version number as the registry stores it: an int from 1 to 2**63-1 (SQLite's INTEGER); else `InvalidRef`."""
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_VERSION:
        raise InvalidRef(f"invalid {where} {shown(number)}: versions are integers from 1 to {MAX_VERSION}")
    return number


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
        raise InvalidRef(f"invalid reference {shown(text)}: expected NAME, NAME:N or NAME@ALIAS")
    if text.count(":") + text.count("@") > 1:
        raise InvalidRef(f"invalid reference {shown(text)}: expected NAME, NAME:N or NAME@ALIAS")
    try:
        if ":" in text:
            name, number = text.split(":")
            if not VERSION_PATTERN.fullmatch(number) or not 1 <= int(number) <= MAX_VERSION:
                raise InvalidRef(f"invalid version {shown(number)} in reference {shown(text)}: versions are integers "
                                 f"from 1 to {MAX_VERSION}, in ASCII digits")
            return Ref(validate_name(name), version=int(number))
        if "@" in text:
            name, alias = text.split("@")
            return Ref(validate_name(name), alias=validate_name(alias, "alias"))
        return Ref(validate_name(text))
    except InvalidName as exc:
        raise InvalidRef(f"invalid reference {shown(text)}: {exc}") from None
