"""loradock's adapter registry: SQLite metadata plus a content-addressed blob store.

Imports no torch, so `reg ls` answers instantly; the few functions that need a model
(preparing the default base, loading a base) import it when called.
"""

from .errors import (
    AdapterNotFound, AliasNotFound, BaseMismatch, BaseNotFound, Conflict, IntegrityError, InvalidAdapter,
    InvalidInput, InvalidName, InvalidRef, LoradockError, NotFound, VersionNotFound,
)
from .names import Ref, parse_ref, validate_name
from .store import Registry, default_home

__all__ = [
    "AdapterNotFound", "AliasNotFound", "BaseMismatch", "BaseNotFound", "Conflict", "IntegrityError",
    "InvalidAdapter", "InvalidInput", "InvalidName", "InvalidRef", "LoradockError", "NotFound", "Ref", "Registry",
    "VersionNotFound", "default_home", "parse_ref", "validate_name",
]
