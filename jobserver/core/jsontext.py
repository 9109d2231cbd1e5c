"""Reading JSON the server did not write: one decoder for request bodies and control lines.

Rules: `loads` is how a request body (`api/common.json_body`) and a job's control
line (`core/control`) become Python data; nothing else calls `json.loads` on
outside input. It returns only what every later stage (the store, argv, each
wire encoding) can carry: text without lone surrogates, finite numbers,
integers of at most `MAX_INT_DIGITS` digits (Python's own limit on converting
an int to and from text, which would otherwise raise deep in a handler), no
NaN or Infinity. Anything else raises `JsonError` with a short `reason` and,
where one value is to blame, its `path` as a client would write it
(`params.seconds`, `items[2]`). Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = ["MAX_INT_DIGITS", "JsonError", "kind_of", "loads"]

# Longest object key quoted in a path.
MAX_KEY_IN_PATH = 64
# Python's default int <-> str limit (sys.get_int_max_str_digits): longer
# integers cannot be rendered into argv, the store or a response.
MAX_INT_DIGITS = 4300


class JsonError(ValueError):
    """Text that is not JSON the server accepts; `kind` is syntax, depth,
    number or surrogate; `path` names the value to blame, when there is one."""

    def __init__(self, reason: str, *, kind: str, path: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.path = path


@dataclass(frozen=True, slots=True)
class _Refused:
    """Stands in for a number that cannot be kept, until its path is known."""

    reason: str


def loads(text: str) -> Any:
    """The JSON document in `text`; JsonError if it is not one the server accepts."""
    refused: list[_Refused] = []

    def parse_int(literal: str) -> int | _Refused:
        digits = len(literal.lstrip("-"))
        if digits <= MAX_INT_DIGITS:
            try:
                return int(literal)
            except ValueError:  # the interpreter's limit is set lower
                pass
        limit = min(MAX_INT_DIGITS, sys.get_int_max_str_digits() or MAX_INT_DIGITS)
        refused.append(_Refused(f"is an integer of {digits} digits; at most {limit} "
                                f"are accepted"))
        return refused[-1]

    def parse_float(literal: str) -> float | _Refused:
        value = float(literal)
        if math.isfinite(value):
            return value
        refused.append(_Refused("is a number too large to represent"))
        return refused[-1]

    try:
        data = json.loads(text, parse_int=parse_int, parse_float=parse_float,
                          parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonError(f"{exc.msg} at line {exc.lineno} column {exc.colno}",
                        kind="syntax") from None
    except RecursionError:
        raise JsonError("nested too deeply", kind="depth") from None
    if refused:
        found = _first(data, lambda v: isinstance(v, _Refused))
        path, value = found if found is not None else ("", refused[0])
        _fail(value.reason, "number", path)
    if "\\u" in text:
        # An unpaired \udXXX escape parses to a lone surrogate, which UTF-8
        # (argv, the store, every stream) cannot carry.
        found = _first(data, _lone_surrogate)
        if found is not None:
            _fail("has an unpaired surrogate escape, which UTF-8 cannot carry", "surrogate",
                  found[0])
    return data


def kind_of(value: Any) -> str:
    """What a decoded value is, in JSON's words, for an error message."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"


def _reject_constant(name: str) -> NoReturn:
    raise JsonError(f"{name} is not allowed", kind="syntax")


def _fail(reason: str, kind: str, path: str) -> NoReturn:
    raise JsonError(f"{path or 'the document'} {reason}", kind=kind, path=path or None)


def _lone_surrogate(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first(data: Any, wanted: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """(path, value) of a value for which `wanted` is true (a key counts as its
    object's), walked without recursion: the document may be as deep as json allows."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if wanted(value):
            return path, value
        if isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if wanted(key):
                    return path, key
                stack.append((_join(path, key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _join(path: str, key: str) -> str:
    if len(key) > MAX_KEY_IN_PATH:
        key = key[:MAX_KEY_IN_PATH] + "..."
    return f"{path}.{key}" if path else key
