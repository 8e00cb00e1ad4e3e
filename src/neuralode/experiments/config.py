"""Experiment configs: dataclasses, ``--set key=value`` overrides, and their JSON form.

An experiment's ``Config`` is a plain dataclass whose defaults are the full configuration and
whose ``quick()`` classmethod returns the quick one. Overrides from the command line arrive as
strings and are coerced to each field's annotated type, so a typo (an unknown key, ``lr=fast``)
fails before any training starts, with a message listing what is accepted.

Supported field types: ``int``, ``float``, ``bool`` (true/false/1/0/yes/no), ``str``, ``Path``,
``Literal[...]``, ``Optional[X]`` / ``X | None`` (``none`` or ``null`` gives ``None``) and
``tuple[...]`` / ``list[...]`` of those (comma separated: ``hidden=64,64``).

Validation
----------
:func:`make_config` ends with :func:`validate_config`, so a bad value is refused before any work
starts, with a message naming the field, the value and what is accepted. Three layers:

1. **Types**: every value must match its field's annotation (a float for a ``float`` field, no NaN
   or infinity unless the default is infinite, ...).
2. **Ranges**: a field may declare what it accepts with :func:`setting`
   (``steps: int = setting(3000, ge=1)``, ``schedule: str = setting("cosine", choices=("cosine",
   "constant"))``). Fields that declare nothing get the conventions of :data:`CONVENTIONS`, by
   name: counts (``steps``, ``batch_size``, ``n_*``, ``*_every``, ``hidden`` ...) are >= 1,
   learning rates and tolerances > 0, fractions in [0, 1], ``method`` a known solver,
   ``gradient`` a known gradient method, and every int >= 0.
3. **The config's own check**: a ``validate(self)`` method on the config class, for what only the
   experiment knows (a data set name, one field bounded by another). It raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
    "setting",
    "validate_config",
    "Accepts",
    "CONVENTIONS",
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
    return dataclasses.replace(config, **values) if values else config  # type: ignore[type-var]


def make_config(config_cls: type[C], *, quick: bool = False, overrides: Iterable[str] | Mapping[str, Any] = ()) -> C:
    """Build the full (or, with ``quick=True``, the quick) config, apply ``overrides``, validate it.

    Raises ``ValueError``/``TypeError`` naming the field, the value and what is accepted
    (:func:`validate_config`).
    """
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
    config = apply_overrides(base, overrides)
    validate_config(config)
    return config


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


# ------------------------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class Accepts:
    """What a config field accepts beyond its type.

    Numeric bounds (``ge``, ``gt``, ``le``, ``lt``) apply to a number and to every item of a
    tuple/list; ``choices`` lists the accepted values (of a string: also each comma-separated
    item when ``comma_list`` is set); ``check`` is any predicate with ``describe`` saying what
    it accepts. ``None`` is accepted wherever the annotation allows it.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    comma_list: bool = False
    check: Callable[[Any], bool] | None = None
    describe: str = ""

    def text(self) -> str:
        """What is accepted, for messages: ``an int >= 1``-style fragments."""
        parts = []
        for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if v is not None:
                parts.append(f"{op} {v:g}")
        if self.choices is not None:
            what = "comma-separated items of" if self.comma_list else "one of"
            parts.append(f"{what} {', '.join(map(repr, self.choices))}")
        if self.describe:
            parts.append(self.describe)
        return " and ".join(parts)


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: Iterable[Any] | None = None, comma_list: bool = False,
            check: Callable[[Any], bool] | None = None, describe: str = "", help: str = "") -> Any:
    """A dataclass field that declares what it accepts; :func:`validate_config` enforces it.

    Example::

        @dataclass
        class Config:
            steps: int = setting(3000, ge=1, help="Adam steps")
            schedule: str = setting("cosine", choices=("cosine", "constant"))
            variants: str = setting("plain,rnode", choices=("plain", "rnode"), comma_list=True)
    """
    accepts = Accepts(ge=ge, gt=gt, le=le, lt=lt, choices=None if choices is None else tuple(choices),
                      comma_list=comma_list, check=check, describe=describe)
    metadata = {"accepts": accepts, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _known_method(value: Any) -> bool:
    from neuralode.methods import method_names

    return value in method_names()


def _known_gradient(value: Any) -> bool:
    from neuralode.gradient import resolve_gradient

    try:
        resolve_gradient(value)
    except (ValueError, TypeError):
        return False
    return True


def _method_names() -> str:
    from neuralode.methods import method_names

    return "a solver method: " + ", ".join(method_names())


def _gradient_names() -> str:
    from neuralode.adjoint import SHORTHANDS

    return "a gradient method: " + ", ".join(["direct", *SHORTHANDS])


_COUNT = Accepts(ge=1)
_POSITIVE = Accepts(gt=0)
_NONNEGATIVE = Accepts(ge=0)
_FRACTION = Accepts(ge=0, le=1)

CONVENTIONS: tuple[tuple[tuple[str, ...], tuple[type, ...], Accepts | Callable[[], Accepts]], ...] = (
    # (name patterns, value types the rule applies to, what is accepted). The first match wins.
    (("*seed*",), (int,), _NONNEGATIVE),
    (("steps", "*_steps", "iters", "iterations", "*_iters", "epochs", "*_epochs", "batch_size", "*_batch_size",
      "*_batch", "n_*", "*_every", "hidden", "*_hidden", "units", "latent", "dim", "grid", "panels",
      "threads", "*_blocks", "*_samples", "*_images", "*_points", "*_snapshots", "*_window", "*_examples",
      "*_patients", "*_counts", "max_*", "*_times", "*_size", "latent_dim"), (int,), _COUNT),
    (("lr", "lr_*", "*_lr", "rtol", "atol", "*_rtol", "*_atol", "epochs", "*_epochs", "*_every", "step_size",
      "*_step", "T", "t1", "t_max", "*_hours", "time_scale", "obs_std", "horizons"), (float,), _POSITIVE),
    (("*_frac", "p_*", "split"), (float,), _FRACTION),
    (("weight_decay", "*_weight", "*_std"), (float,), _NONNEGATIVE),
    (("method", "*_method"), (str,),
     lambda: Accepts(check=_known_method, describe=_method_names())),
    (("gradient",), (str,), lambda: Accepts(check=_known_gradient, describe=_gradient_names())),
    (("*",), (int,), _NONNEGATIVE),
)


def _convention(name: str, value: Any) -> Accepts | None:
    for patterns, kinds, rule in CONVENTIONS:
        if isinstance(value, kinds) and not isinstance(value, bool) and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return rule() if callable(rule) and not isinstance(rule, Accepts) else rule  # type: ignore[return-value]
    return None


def _expect(tp: Any) -> str:
    name = _type_name(tp)
    return {"int": "an int", "float": "a float", "str": "a string", "bool": "a bool (true/false)"}.get(name, name)


def _type_ok(value: Any, tp: Any, allow_inf: bool) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if _is_union(tp):
        return any(_type_ok(value, a, allow_inf) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_type_ok(v, a, allow_inf) for v, a in zip(value, args))
        item = args[0] if args else Any
        return all(_type_ok(v, item, allow_inf) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (math.isfinite(value) or (allow_inf and not math.isnan(value))))
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        return isinstance(value, (str, Path))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _accepted(value: Any, rule: Accepts) -> bool:
    for v in _items(value):
        if v is None:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if rule.ge is not None and not v >= rule.ge:
                return False
            if rule.gt is not None and not v > rule.gt:
                return False
            if rule.le is not None and not v <= rule.le:
                return False
            if rule.lt is not None and not v < rule.lt:
                return False
        if rule.choices is not None:
            if rule.comma_list and isinstance(v, str):
                parts = [p.strip() for p in v.split(",")]
                if not parts or any(p not in rule.choices for p in parts):
                    return False
            elif v not in rule.choices:
                return False
        if rule.check is not None and not rule.check(v):
            return False
    return True


def _quick_values(cls: type) -> dict[str, Any]:
    quick_fn = getattr(cls, "quick", None)
    if not callable(quick_fn):
        return {}
    try:
        q = quick_fn()
    except Exception:  # noqa: BLE001 - a broken quick() is reported by make_config, not here
        return {}
    return {f.name: getattr(q, f.name, None) for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(q) else {}


def validate_config(config: Any) -> None:
    """Check every field of a config instance, then its own ``validate()`` if it has one.

    Raises ``TypeError`` for a value of the wrong type and ``ValueError`` for one out of range,
    each naming the field, the value and what is accepted (see the module docstring).
    """
    cls = _check_config_class(config)
    if isinstance(config, type):
        raise TypeError(f"validate_config needs a config instance, got the class {cls.__name__}")
    types_ = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    quick = _quick_values(cls)
    for name, tp in types_.items():
        value = getattr(config, name)
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        own = [v for v in (default, quick.get(name, None)) if v is not None]  # values the experiment uses
        allow_inf = any(isinstance(v, float) and math.isinf(v) for v in own)
        if not _type_ok(value, tp, allow_inf):
            kind = "a finite number" if tp is float and isinstance(value, float) else _expect(tp)
            raise TypeError(f"config field {name}={value!r} is not accepted: expected {kind} "
                            f"({cls.__name__}.{name}: {_type_name(tp)})")
        rule = f.metadata.get("accepts") if f.metadata else None
        if rule is None:
            for v in _items(value):
                if v is not None:
                    rule = _convention(name, v)
                    break
            # A convention never overrules the experiment: 0 in its own default or quick config
            # means "off" (eval_every=0, warmup_steps=0), and a rule its own values break is dropped.
            if rule in (_COUNT, _POSITIVE) and any(_items(v) and 0 in _items(v) for v in own):
                rule = _NONNEGATIVE
            if rule is not None and not all(_accepted(v, rule) for v in own):
                rule = None
        if rule is not None and not _accepted(value, rule):
            each = "each item " if isinstance(value, (tuple, list)) else ""
            raise ValueError(f"config field {name}={value!r} is not accepted: {each}must be {rule.text()}")
    check = getattr(config, "validate", None)
    if callable(check):
        check()
