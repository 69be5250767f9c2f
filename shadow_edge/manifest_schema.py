"""Reading an untrusted manifest.json: bounded JSON, then every field typed and bounded.

bundle.py declares the schema (its dataclasses, the bounds of their fields and the keys of the
free-form sections it reads); this module enforces it. A manifest comes from anywhere a bundle
does, so nothing in it is used before it is checked: its size, its nesting depth (before the
parser recurses), the digits of every integer (before int() works on them), non-finite numbers,
and then the type and range of every field the runtime reads. Every failure is a BundleError
that names the field. Imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from .errors import BundleError

MAX_MANIFEST_BYTES = 32 << 20  # a 1024-layer manifest is a few MB
MAX_DEPTH = 32  # real manifests nest 6 deep; Python's parser recurses once per level
MAX_INT_DIGITS = 19  # int64
MAX_ITEMS = 1 << 16  # entries of any list or object
MAX_STRING = 1 << 20  # characters (chat templates are the long ones)
INT64 = (-(2**63), 2**63 - 1)

Bounds = tuple[float, float]  # inclusive
# "Owner.field" -> bounds of that number (each item's for a list); "Owner.field" -> {key: type}
# for a free-form section whose known keys are typed
Limits = Mapping[str, Bounds]
Sections = Mapping[str, Mapping[str, Any]]

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def loads(raw: bytes, where: str) -> Any:
    """Parse manifest bytes, refusing what would make the parser recurse or compute without bound."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where} has {len(raw)} bytes, more than a manifest may ({MAX_MANIFEST_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where} is not valid JSON ({exc})") from None
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise BundleError(f"{where} nests {depth} levels deep, more than a manifest may ({MAX_DEPTH})")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{where} is not valid JSON ({exc})") from None


def nesting_depth(text: str) -> int:
    """The deepest nesting of [] and {} outside strings, without recursing (a depth pre-scan)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise BundleError(f"manifest has a {len(digits)}-digit number: not a count, size or id")
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BundleError(f"manifest has the number {text[:40]}, which is not finite")
    return value


def _constant(name: str) -> Any:
    raise BundleError(f"manifest has {name}, which JSON does not allow")


# -- typed fields ----------------------------------------------------------------------------------


def build(cls: type, data: Any, limits: Limits, sections: Sections, path: str = "manifest") -> Any:
    """An instance of dataclass `cls` from JSON data, every field checked against its type hint
    and `limits`; fields the class does not know are ignored (newer optional fields)."""
    return _build(cls, data, path, cls.__name__, limits, sections)


def _build(hint: Any, value: Any, path: str, key: str, limits: Limits, sections: Sections) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None) and _fits(arg, value):
                return _build(arg, value, path, key, limits, sections)
        raise _wrong(path, " or ".join(_what(a) for a in args), value)
    if not _fits(hint, value):
        raise _wrong(path, _what(hint), value)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, path, limits, sections)
    if origin is list:
        _check_count(path, value)
        return [_build(args[0], v, f"{path}[{i}]", key, limits, sections) for i, v in enumerate(value)]
    if origin is dict:
        _check_count(path, value)
        out = {k: _build(args[1], v, f"{path}.{k}", key, limits, sections) for k, v in value.items()}
        for name, sub in sections.get(key, {}).items():  # the known keys of a free-form section
            if name in out:
                out[name] = _build(sub, out[name], f"{path}.{name}", f"{key}.{name}", limits, sections)
        return out
    if hint is str and len(value) > MAX_STRING:
        raise BundleError(f"manifest field {path} is a string of {len(value)} characters (at most {MAX_STRING})")
    if hint in (int, float):
        low, high = limits.get(key, INT64)
        if not low <= value <= high:
            raise BundleError(f"manifest field {path} is {value}, outside {low:g}..{high:g}")
        return float(value) if hint is float else value
    return value


def _dataclass(cls: type, value: dict, path: str, limits: Limits, sections: Sections) -> Any:
    hints = _hints(cls)
    given = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            given[f.name] = _build(
                hints[f.name], value[f.name], f"{path}.{f.name}", f"{cls.__name__}.{f.name}", limits, sections
            )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BundleError(f"manifest field {path}.{f.name} is missing")
    return cls(**given)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(hint: Any, value: Any) -> bool:
    """Whether a JSON value has the kind `hint` asks for (bool is no number; an int is a float)."""
    kind = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(kind) or kind is dict:
        return isinstance(value, dict)
    if kind in (int, float):
        return isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_count(path: str, value: list | dict) -> None:
    if len(value) > MAX_ITEMS:
        raise BundleError(f"manifest field {path} has {len(value)} entries (at most {MAX_ITEMS})")


def _what(hint: Any) -> str:
    kind = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(kind) or kind is dict:
        return "an object"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    return names.get(kind, "null" if kind is type(None) else str(kind))


def _wrong(path: str, what: str, value: Any) -> BundleError:
    shown = {dict: "an object", list: "a list"}.get(type(value)) or repr(value)[:60]
    return BundleError(f"manifest field {path} must be {what}, got {shown}")
