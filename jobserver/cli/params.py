"""`key=value` words typed by the template's declared params.

Rules: the types come from GET /api/v1/templates, never guessed from the text:
"60" is sent as 60 to an int param and as "60" to a string one. A word that
does not parse, or names no param, is an error naming the param. Values from
`--param-file` (a JSON object) keep their JSON types; `key=value` words win.
The server checks bounds and required params and names the param in its 422.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core import jsontext
from .client import EXIT_USAGE, CliError

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def convert(param: Mapping[str, Any], text: str) -> Any:
    name, kind = param["name"], param.get("type", "string")
    if kind == "int":
        try:
            return int(text, 10)
        except ValueError:
            raise CliError(f"bad param {name}: {text!r} is not an integer", EXIT_USAGE) from None
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise CliError(f"bad param {name}: {text!r} is not a number", EXIT_USAGE)
        return value
    if kind == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise CliError(f"bad param {name}: {text!r} is not true or false", EXIT_USAGE)
    if kind == "choice" and text not in param.get("choices", ()):
        raise CliError(f"bad param {name}: {text!r} is not one of "
                       f"{', '.join(param.get('choices', ()))}", EXIT_USAGE)
    return text


def read_param_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --param-file {path}: {exc}", EXIT_USAGE) from None
    try:
        doc = jsontext.loads(text)
    except ValueError as exc:
        raise CliError(f"--param-file {path} is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(doc, dict):
        raise CliError(f"--param-file {path} must hold a JSON object", EXIT_USAGE)
    return doc


def build(template: Mapping[str, Any], words: Sequence[str], *,
          param_file: str | None = None) -> dict[str, Any]:
    declared = {p["name"]: p for p in template.get("params", ())}
    params = read_param_file(param_file) if param_file else {}
    for word in words:
        name, sep, text = word.partition("=")
        if not sep or not name:
            raise CliError(f"bad param {word!r}: write it as name=value", EXIT_USAGE)
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise CliError(f"bad param {name}: template {template['name']} has no such param "
                           f"(its params: {known})", EXIT_USAGE)
        params[name] = convert(declared[name], text)
    return params
