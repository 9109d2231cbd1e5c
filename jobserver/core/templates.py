"""Job templates: typed parameters, validation, and argv/env rendering.

Rules: a template is parsed from plain data (the TOML tables of the config);
parameters are validated against their declared type and bounds and reach the
process only as whole argv elements, substrings of argv elements, or env vars,
never as shell text. `{name}` is a placeholder; `{{` and `}}` are literal braces.
A few placeholders are built in (`BUILTINS`) and cannot be param names:
`{python}` is the server's own interpreter, so a bundled template runs
`{python} -m jobserver...` whatever `python3` is on the job's PATH.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .jsontext import kind_of

PARAM_TYPES = ("string", "int", "float", "bool", "choice")
LOG_CAP_ACTIONS = ("keep", "kill")
MAX_STRING_PARAM = 4096
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# Placeholders every template may use, rendered the same for every job.
BUILTINS: Mapping[str, str] = {"python": sys.executable or "python3"}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_-]*)\}")


class TemplateError(ValueError):
    """A template definition is malformed (a config problem)."""


class ParamError(ValueError):
    """A submitted parameter is invalid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    description: str = ""
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()

    def validate(self, value: Any) -> str | int | float | bool:
        """The value as its declared type. Strict: a value must already be that JSON
        type (`"60"` is not an int, `"true"` not a bool); an int may be written
        `60.0`, and a float param takes an integer."""
        where = f"params.{self.name}"
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            raise ParamError(where, f"must be a boolean (true or false), got {_kind(value)}")
        if self.type in ("int", "float"):
            number = _number(value, integer=self.type == "int")
            if number is None:
                kind = "an integer" if self.type == "int" else "a number"
                got = (repr(value) if isinstance(value, float) and math.isfinite(value)
                       else _kind(value))  # 1.5 for an int: say which number
                raise ParamError(where, f"must be {kind}, got {got}")
            if self.min is not None and number < self.min:
                raise ParamError(where, f"must be at least {_fmt(self.min)}")
            if self.max is not None and number > self.max:
                raise ParamError(where, f"must be at most {_fmt(self.max)}")
            return number
        if not isinstance(value, str):
            raise ParamError(where, f"must be a string, got {_kind(value)}")
        if self.type == "choice":
            if value not in self.choices:
                raise ParamError(where, f"must be one of {', '.join(self.choices)}")
            return value
        if len(value) > MAX_STRING_PARAM:
            raise ParamError(where, f"is longer than {MAX_STRING_PARAM} characters")
        if "\x00" in value:
            raise ParamError(where, "must not contain NUL")
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise ParamError(where, f"must match {self.pattern}")
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        for key in ("default", "pattern", "min", "max"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices:
            out["choices"] = list(self.choices)
        if self.description:
            out["description"] = self.description
        return out


def _number(value: Any, *, integer: bool) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if integer:
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        return value
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        return None


def _kind(value: Any) -> str:
    """What a param value is, for an error message: a short string is quoted."""
    if isinstance(value, str) and len(value) <= 20:
        return f"the string {value!r}"
    return kind_of(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSpec:
    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    name: str
    description: str = ""
    argv: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    kind: str = "job"
    steps: tuple[StepSpec, ...] = ()
    roles: tuple[str, ...] = ("admin", "user")
    requeue_on_restart: bool = False
    # A retry of a failed job starts at the step that failed.
    resumable: bool = False
    # For bodies handed to the job whole (the jobs dialect's legacy body): the
    # JSON document is written to a file in the job's work dir, named by
    # JOBSERVER_INPUT_FILE, and also fed on stdin when this is true.
    stdin_input: bool = False
    # No output line or control message for this long ends the job as the
    # timeout does, with outcome "idle".
    idle_timeout: float | None = None
    # Log caps (None: the server's max_log_bytes): past them the head and a
    # rolling tail are kept; "kill" ends the job as well (outcome "log_cap").
    max_log_bytes: int | None = None
    on_log_cap: str = "keep"  # keep | kill
    # Retention of this template's finished jobs (None: the server's settings).
    retention_days: float | None = None
    retention_max_jobs: int | None = None

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Checked, typed params with defaults filled in; ParamError otherwise."""
        if not isinstance(raw, Mapping):
            raise ParamError("params", "must be an object")
        known = {p.name for p in self.params}
        for key in raw:
            if key not in known:
                raise ParamError(f"params.{key}", "is not a parameter of this template")
        out: dict[str, Any] = {}
        for p in self.params:
            if key_present(raw, p.name):
                out[p.name] = p.validate(raw[p.name])
            elif p.default is not None:
                out[p.name] = p.default
            elif p.required:
                raise ParamError(f"params.{p.name}", "is required")
        return out

    def render_argv(self, argv: Sequence[str], params: Mapping[str, Any]) -> list[str]:
        return [substitute(arg, params) for arg in argv]

    def render_env(self, params: Mapping[str, Any]) -> dict[str, str]:
        return {k: substitute(v, params) for k, v in self.env.items()}

    def plan(self, params: Mapping[str, Any]) -> list[tuple[str | None, list[str]]]:
        """The commands to run in order: (step name or None, argv)."""
        if self.steps:
            return [(s.name, self.render_argv(s.argv, params)) for s in self.steps]
        return [(None, self.render_argv(self.argv, params))]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "params": [p.describe() for p in self.params],
            "steps": [s.name for s in self.steps],
            "timeout": self.timeout,
            "roles": list(self.roles),
        }


def key_present(raw: Mapping[str, Any], key: str) -> bool:
    return key in raw and raw[key] is not None


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def substitute(text: str, params: Mapping[str, Any]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        name = m.group(1)
        if name in BUILTINS:
            return BUILTINS[name]
        return _render(params[name]) if key_present(params, name) else ""

    return _PLACEHOLDER.sub(one, text)


def placeholders(text: str) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)}


def parse_template(name: str, table: Mapping[str, Any]) -> Template:
    """A Template from one TOML table; TemplateError names what is wrong."""
    if not _NAME.match(name):
        raise TemplateError(f"template name {name!r} is not a valid name")
    try:
        params = tuple(_parse_param(n, t) for n, t in dict(table.get("params", {})).items())
        steps = tuple(
            StepSpec(name=str(s["name"]), argv=_argv(s["argv"], f"{name}.steps"))
            for s in table.get("steps", ())
        )
        argv = _argv(table["argv"], name) if "argv" in table else ()
    except (KeyError, TypeError) as exc:
        raise TemplateError(f"template {name!r}: missing or bad field {exc}") from None
    if not argv and not steps:
        raise TemplateError(f"template {name!r} needs argv or steps")
    known = {p.name for p in params}
    used: set[str] = set()
    for arg in (*argv, *(a for s in steps for a in s.argv), *dict(table.get("env", {})).values()):
        used |= placeholders(str(arg))
    used -= BUILTINS.keys()
    if used - known:
        raise TemplateError(f"template {name!r} uses undeclared params: {sorted(used - known)}")
    timeout = table.get("timeout")
    on_log_cap = str(table.get("on_log_cap", "keep"))
    if on_log_cap not in LOG_CAP_ACTIONS:
        raise TemplateError(f"template {name!r}: on_log_cap must be one of {LOG_CAP_ACTIONS}")
    return Template(
        name=name,
        description=str(table.get("description", "")),
        argv=argv,
        params=params,
        env={str(k): str(v) for k, v in dict(table.get("env", {})).items()},
        cwd=table.get("cwd"),
        timeout=float(timeout) if timeout is not None else None,
        kind=str(table.get("kind", "job")),
        steps=steps,
        roles=tuple(table.get("roles", ("admin", "user"))),
        requeue_on_restart=bool(table.get("requeue_on_restart", False)),
        resumable=bool(table.get("resumable", False)),
        stdin_input=bool(table.get("stdin_input", False)),
        idle_timeout=_positive(table, "idle_timeout", name, float),
        max_log_bytes=_positive(table, "max_log_bytes", name, int),
        on_log_cap=on_log_cap,
        retention_days=_positive(table, "retention_days", name, float),
        retention_max_jobs=_positive(table, "retention_max_jobs", name, int),
    )


def _positive(table: Mapping[str, Any], key: str, name: str,
              kind: type[int] | type[float]) -> Any:
    """An optional setting that must be a number above 0 (None when absent)."""
    value = table.get(key)
    if value is None:
        return None
    number = _number(value, integer=kind is int)
    if number is None or number <= 0:
        raise TemplateError(f"template {name!r}: {key} must be a number above 0")
    return kind(number)


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise TemplateError(f"{where}: argv must be a non-empty list of strings")
    return tuple(value)


def _parse_param(name: str, table: Mapping[str, Any]) -> Param:
    if not _NAME.match(name):
        raise TemplateError(f"param name {name!r} is not a valid name")
    if name in BUILTINS:
        raise TemplateError(f"param name {name!r} is reserved: {{{name}}} is built in")
    type_ = str(table.get("type", "string"))
    if type_ not in PARAM_TYPES:
        raise TemplateError(f"param {name!r}: type must be one of {PARAM_TYPES}")
    choices = tuple(str(c) for c in table.get("choices", ()))
    if type_ == "choice" and not choices:
        raise TemplateError(f"param {name!r}: a choice needs choices")
    param = Param(
        name=name,
        type=type_,
        required=bool(table.get("required", False)),
        default=None,
        description=str(table.get("description", "")),
        pattern=table.get("pattern"),
        min=table.get("min"),
        max=table.get("max"),
        choices=choices,
    )
    if table.get("default") is not None:
        try:
            default = param.validate(table["default"])
        except ParamError as exc:
            raise TemplateError(f"param {name!r}: default {exc.message}") from None
        param = Param(**{**{f: getattr(param, f) for f in param.__slots__}, "default": default})
    return param
