"""Typed settings from YAML mappings, for the config sections and every plug-in's ``Params``.

Public so that third-party plug-ins check their parameters the way built-ins do: a
frozen dataclass built field by field from its mapping, each mistake one ConfigError
line that names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

from mpi_kvbench.errors import ConfigError


def did_you_mean(name: str, valid: Iterable[Any]) -> str:
    """The closest valid name as a hint, or the list of valid names when none is close."""
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(name), valid, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid)}"


def unknown(where: str, key: Any, valid: Iterable[Any]) -> ConfigError:
    """The error for a setting nobody knows."""
    return ConfigError(f"{where}: unknown setting; {did_you_mean(key, valid)}")


def build_dataclass(cls: type, section: Any, where: str) -> Any:
    """Builds a frozen dataclass from a mapping, checking names and types field by field,
    then runs its ``check()``. A field without a default must be in the mapping."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {section!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in section.items():
        if key not in fields:
            raise unknown(f"{where}.{key}", key, fields)
        factory = fields[key].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            default = factory()
            if isinstance(default, dict):
                value = {**default, **value}   # one key of a default mapping, as elsewhere
        values[key] = coerce(value, hints[key], f"{where}.{key}")
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: missing; give it a value")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check()
    return obj


#: The largest integer any setting takes: what a C ``int64`` holds (seeds, counts, sizes).
INT_MAX = 2**63 - 1


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` names (int is accepted for float, an integral float
    such as ``1e9`` for int), or a ConfigError. Numbers must be finite and integers fit in
    64 bits; strings, mapping keys and values must hold no NUL byte."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in kinds:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}={value!r}: expected {_hint_name(kinds)}, not a boolean")
    for kind in kinds:
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return finite(value, where)
        if kind is int and isinstance(value, float) and value.is_integer() and bool not in kinds:
            return bounded(int(value), where)
        if kind in (int, str, bool, dict, list) and isinstance(value, kind):
            return clean(value, where)
    raise ConfigError(f"{where}={value!r}: expected {_hint_name(kinds)}")


def finite(value: Any, where: str) -> float:
    """``value`` as a finite float; NaN and infinity compare false to every bound, so
    they are refused here, before any range check could let them through."""
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ConfigError(f"{where}={value!r}: give a finite number")
    return out


def bounded(value: int, where: str) -> int:
    if not -INT_MAX <= value <= INT_MAX:
        raise ConfigError(f"{where}={value}: too large; give a number below 2**63")
    return value


def clean(value: Any, where: str) -> Any:
    """Checks a value read from a config, recursively: finite numbers, 64-bit integers,
    no NUL byte in a string (the OS cuts a path there, or refuses it)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bounded(value, where)
    if isinstance(value, float):
        return finite(value, where)
    if isinstance(value, str):
        if "\0" in value:
            raise ConfigError(f"{where}={value!r}: holds a NUL byte; remove it")
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            clean(k, f"{where}.{k}")
            clean(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            clean(v, f"{where}[{i}]")
    return value


def _hint_name(kinds: tuple) -> str:
    return " or ".join(getattr(k, "__name__", str(k)) for k in kinds)


def positive(obj: Any, section: str, names: Iterable[str]) -> None:
    for n in names:
        if not getattr(obj, n) > 0:   # NaN too
            raise ConfigError(f"{section}.{n}={getattr(obj, n)!r}: must be greater than 0")


def non_negative(obj: Any, section: str, names: Iterable[str]) -> None:
    for n in names:
        if not getattr(obj, n) >= 0:   # NaN too
            raise ConfigError(f"{section}.{n}={getattr(obj, n)!r}: must not be negative")


def choice(obj: Any, section: str, name: str, valid: Iterable[str]) -> None:
    valid = tuple(valid)
    if getattr(obj, name) not in valid:
        raise ConfigError(f"{section}.{name}={getattr(obj, name)!r}: use one of {', '.join(valid)}")


MAX_NAME_BYTES = 200   # a folder name (255 at most) with room for a "-<run id>" suffix


def plain_name(where: str, value: str, *, allow_empty: bool = False) -> None:
    """A name that becomes one folder: no '/', no NUL, not '.' or '..', not too long."""
    if (not value and not allow_empty) or "/" in value or "\0" in value or value in (".", ".."):
        raise ConfigError(f"{where}={value!r}: give a plain name without '/' or NUL")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"{where}: {len(value.encode())} bytes is too long for a folder name;"
                          f" use at most {MAX_NAME_BYTES}")


def at_most(obj: Any, section: str, limits: dict[str, float]) -> None:
    """Upper bounds where a larger value would exhaust threads, memory or integer ranges
    long after the configuration was accepted."""
    for n, limit in limits.items():
        if getattr(obj, n) > limit:
            raise ConfigError(f"{section}.{n}={getattr(obj, n)!r}: too large; give at most {limit:,}")
