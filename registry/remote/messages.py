"""The one converter between the registry's records and the Registry service's messages, by field name.

Both sides of the wire use it: the servicer turns what the local registry returns (dataclasses such as
`Version`, or the dicts of `describe`, `diff`, rollout reports) into messages with `to_message`; the client
turns messages back with `to_python` (plain dicts and lists, in the message's field order, which is the local
dict's key order) and `to_record` (a dataclass, from its type hints). So `reg ... --json` prints the same bytes
remotely as locally, and no RPC needs a converter of its own.

The rules, also stated in proto/loradock/v1/registry.proto for clients in other languages:
  - a field is read from a dict key or an attribute of the same name (properties included: `Version.ref`);
    a dict key with no field, or a dataclass field with no field, is an error, never silently dropped;
  - `optional` scalars and message fields: unset <-> None;
  - a message with a single repeated field stands for that list (`StringList`, `VersionList`...);
  - a repeated message with exactly the fields `key` and `value` is an ordered dict;
  - `JsonValue` <-> any JSON value, ints kept apart from floats, objects in their key order.
"""

from __future__ import annotations

import dataclasses
import types
import typing

JSON_VALUE = "loradock.v1.JsonValue"
_INT64 = range(-(2**63), 2**63)


# --- records -> messages ------------------------------------------------------------------------------------

def to_message(value, message_class):
    """`value` (a dataclass, a dict, a list for a one-list message, any JSON value for JsonValue) as a message."""
    message = message_class()
    _fill(message, value)
    return message


def _fill(message, value) -> None:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == JSON_VALUE:
        return _fill_json(message, value)
    only = _single_repeated(descriptor)
    if only is not None:
        return _fill_field(message, only, value)
    names = [f.name for f in descriptor.fields]
    if isinstance(value, dict):
        known = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        known = {f.name: None for f in dataclasses.fields(value)}
    else:
        raise TypeError(f"{descriptor.name}: cannot be made from {type(value).__name__}")
    extra = [k for k in known if k not in names]
    if extra:
        raise TypeError(f"{descriptor.name} has no field for {extra} (proto/loradock/v1/registry.proto is behind the record)")
    for field in descriptor.fields:
        _fill_field(message, field, value[field.name] if isinstance(value, dict) else getattr(value, field.name))


def _fill_field(message, field, value) -> None:
    if field.is_repeated:
        container = getattr(message, field.name)
        if field.message_type is None:
            container.extend(value)
        elif _is_entry(field.message_type):
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = container.add(key=key)
                _fill_field(entry, value_field, item)
        else:
            for item in value:
                _fill(container.add(), item)
    elif value is None:
        if not field.has_presence:
            raise TypeError(f"{message.DESCRIPTOR.name}.{field.name} is None, but the field is not optional")
    elif field.message_type is not None:
        sub = getattr(message, field.name)
        sub.SetInParent()
        _fill(sub, value)
    else:
        setattr(message, field.name, value)


def _fill_json(message, value) -> None:
    if value is None:
        message.null_value = 0
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int) and value in _INT64:
        message.int_value = value
    elif isinstance(value, (int, float)):
        message.double_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, (list, tuple, dict)):
        sub = message.object_value if isinstance(value, dict) else message.list_value
        sub.SetInParent()  # an empty list or object is still one
        _fill(sub, value)
    else:
        raise TypeError(f"{type(value).__name__} {value!r} is not a JSON value")


# --- messages -> Python -------------------------------------------------------------------------------------

def to_python(message):
    """A message as plain Python: a dict in field order, a list (one-list messages) or a JSON value."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == JSON_VALUE:
        kind = message.WhichOneof("kind")
        if kind in (None, "null_value"):
            return None
        return to_python(getattr(message, kind)) if kind in ("list_value", "object_value") else getattr(message, kind)
    only = _single_repeated(descriptor)
    if only is not None:
        return _field_value(message, only)
    return {field.name: _field_value(message, field) for field in descriptor.fields}


def _field_value(message, field):
    value = getattr(message, field.name)
    if field.is_repeated:
        if field.message_type is None:
            return list(value)
        if _is_entry(field.message_type):
            value_field = field.message_type.fields_by_name["value"]
            return {entry.key: _field_value(entry, value_field) for entry in value}
        return [to_python(item) for item in value]
    if field.has_presence and not message.HasField(field.name):
        return None
    return to_python(value) if field.message_type is not None else value


def to_record(cls: type, data: dict):
    """The dataclass `cls` from `to_python`'s dict, nested records included (from `cls`'s type hints).

    Keys that are not fields of `cls` are what the record derives itself (`Version.ref`, `VerifyReport.ok`,
    a rollout arm's label) and are left out."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _typed(hints[f.name], data[f.name])
                  for f in dataclasses.fields(cls) if f.init and f.name in data})


def _typed(hint, value):
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value) if len(inner) == 1 else value
    if origin is list and args:
        return [_typed(args[0], item) for item in value]
    if origin is dict and len(args) == 2:
        return {key: _typed(args[1], item) for key, item in value.items()}
    if dataclasses.is_dataclass(hint):
        return to_record(hint, value)
    return value


# --- the conventions -----------------------------------------------------------------------------------------

def _single_repeated(descriptor):
    """The only field of a message that stands for a list (or an ordered dict), else None."""
    return descriptor.fields[0] if len(descriptor.fields) == 1 and descriptor.fields[0].is_repeated else None


def _is_entry(descriptor) -> bool:
    return [f.name for f in descriptor.fields] == ["key", "value"]
