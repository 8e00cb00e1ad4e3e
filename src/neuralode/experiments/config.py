"""Experiment configs: dataclasses, ``--set key=value`` overrides, and their JSON form.

An experiment's ``Config`` is a plain dataclass whose defaults are the full configuration and
whose ``quick()`` classmethod returns the quick one. Overrides from the command line arrive as
strings and are coerced to each field's annotated type, so a typo (an unknown key, ``lr=fast``)
fails before any training starts, with a message listing what is accepted.

Supported field types: ``int``, ``float``, ``bool`` (true/false/1/0/yes/no), ``str``, ``Path``,
``Literal[...]``, ``Optional[X]`` / ``X | None`` (``none`` or ``null`` gives ``None``) and
``tuple[...]`` / ``list[...]`` of those (comma separated: ``hidden=64,64``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

__all__ = [
    "apply_overrides",
    "coerce",
    "config_from_dict",
    "config_to_dict",
    "describe_fields",
    "field_types",
    "make_config",
    "parse_overrides",
]

C = TypeVar("C")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


def _check_config_class(config_cls: Any) -> type:
    cls = config_cls if isinstance(config_cls, type) else type(config_cls)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config must be a dataclass or dataclass instance, got {cls.__name__}")
    return cls


def field_types(config_cls: Any) -> dict[str, Any]:
    """Map each init field of a config dataclass to its resolved type annotation."""
    cls = _check_config_class(config_cls)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable forward reference: use what is there
        hints = {f.name: f.type if not isinstance(f.type, str) else Any for f in dataclasses.fields(cls)}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def describe_fields(config_cls: Any) -> str:
    """One line per field, ``name: type = default``, for error messages and ``--help``."""
    cls = _check_config_class(config_cls)
    types_ = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def default(name: str) -> str:
        if not isinstance(config_cls, type):
            return repr(getattr(config_cls, name))
        f = fields[name]
        if f.default is not dataclasses.MISSING:
            return repr(f.default)
        if f.default_factory is not dataclasses.MISSING:
            return repr(f.default_factory())
        return "(required)"

    return "\n".join(f"  {name}: {_type_name(tp)} = {default(name)}" for name, tp in types_.items())


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def coerce(text: str, tp: Any, key: str = "value") -> Any:
    """Convert the string ``text`` to type ``tp``; ``ValueError`` naming ``key`` when it cannot."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    stripped = text.strip()
    if tp is Any:
        return text
    if tp is type(None):
        if stripped.lower() in _NONE:
            return None
        raise ValueError(f"{key}={text!r}: expected none/null")
    if _is_union(tp):
        if type(None) in args and stripped.lower() in _NONE:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(text, option, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}={text!r}: expected {_type_name(tp)} ({'; '.join(errors)})")
    if origin is typing.Literal:
        for option in args:
            if str(option) == stripped:
                return option
        raise ValueError(f"{key}={text!r}: expected one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        items = [] if stripped == "" else [s.strip() for s in stripped.split(",")]
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ValueError(
                    f"{key}={text!r}: expected {len(args)} comma-separated values ({_type_name(tp)}), "
                    f"got {len(items)}"
                )
            values = [coerce(s, a, key) for s, a in zip(items, args)]
        else:
            item_tp = args[0] if args else Any
            values = [coerce(s, item_tp, key) for s in items]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = stripped.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{key}={text!r}: expected a bool (true/false/1/0)")
    if tp is int:
        try:
            return int(stripped.replace("_", ""))
        except ValueError:
            pass
        try:
            as_float = float(stripped)  # accept 1e4 for step counts, not 1.5
        except ValueError:
            as_float = math.nan
        if math.isfinite(as_float) and as_float == int(as_float):
            return int(as_float)
        raise ValueError(f"{key}={text!r}: expected an int")
    if tp is float:
        try:
            return float(stripped)
        except ValueError:
            raise ValueError(f"{key}={text!r}: expected a float") from None
    if tp is str:
        return text
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        return Path(text)
    raise ValueError(f"{key}: fields of type {_type_name(tp)} cannot be set from the command line")


def _split_item(item: str) -> tuple[str, str]:
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    return key.strip(), value


def parse_overrides(config_cls: Any, items: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (or a mapping) into typed values for ``config_cls``'s fields.

    Raises ``ValueError`` for an unknown key or a value of the wrong type; the message lists the
    valid keys with their types and defaults.
    """
    types_ = field_types(config_cls)
    pairs = list(items.items()) if isinstance(items, Mapping) else [_split_item(i) for i in items]
    out: dict[str, Any] = {}
    for key, raw in pairs:
        if key not in types_:
            raise ValueError(
                f"unknown config key {key!r} for {_check_config_class(config_cls).__name__}; "
                f"valid keys:\n{describe_fields(config_cls)}"
            )
        if isinstance(raw, str):
            try:
                out[key] = coerce(raw, types_[key], key)
            except ValueError as e:
                raise ValueError(f"{e}\nvalid keys:\n{describe_fields(config_cls)}") from None
        else:
            out[key] = raw
    return out


def apply_overrides(config: C, items: Iterable[str] | Mapping[str, Any]) -> C:
    """Return a copy of the dataclass instance ``config`` with the overrides applied."""
    if isinstance(config, type) or not dataclasses.is_dataclass(config):
        raise TypeError(f"config must be a dataclass instance, got {config!r}")
    values = parse_overrides(config, items)
    return dataclasses.replace(config, **values) if values else config


def make_config(config_cls: type[C], *, quick: bool = False, overrides: Iterable[str] | Mapping[str, Any] = ()) -> C:
    """Build the full (or, with ``quick=True``, the quick) config and apply ``overrides``."""
    _check_config_class(config_cls)
    if quick:
        quick_fn = getattr(config_cls, "quick", None)
        if not callable(quick_fn):
            raise TypeError(f"{config_cls.__name__} has no quick() classmethod")
        base = quick_fn()
        if not isinstance(base, config_cls):
            raise TypeError(f"{config_cls.__name__}.quick() must return a {config_cls.__name__}, got {base!r}")
    else:
        base = config_cls()
    return apply_overrides(base, overrides)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists, paths strings)."""
    from neuralode.io import to_jsonable

    _check_config_class(config)
    return to_jsonable({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def config_from_dict(config_cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config from :func:`config_to_dict` output (lists back to tuples, etc.)."""
    types_ = field_types(config_cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)} for {config_cls.__name__}")
    values = {}
    for key, value in data.items():
        tp = types_[key]
        origin = typing.get_origin(tp)
        if _is_union(tp) and value is not None:
            non_none = [a for a in typing.get_args(tp) if a is not type(None)]
            origin = typing.get_origin(non_none[0]) if len(non_none) == 1 else None
        if origin is tuple and isinstance(value, list):
            value = tuple(value)
        elif tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            value = float(value)
        elif tp is Path and isinstance(value, str):
            value = Path(value)
        values[key] = value
    return config_cls(**values)
