"""The control channel: one JSON line from a job (fd 3) into one typed message.

Rules: `parse` takes one line of text and returns exactly one message, or raises
`ControlError` whose `reason` is a sentence a job author can act on (it becomes
a job warning upstream). Nothing here touches the job; keys that are not part of
a message are ignored, two messages in one line are refused. The forms:

    {"progress": {"at": 3, "of": 10}, "message": "encoding"}   (may name a "step")
    {"progress": 42}   or   {"progress": {"pct": 42}}          (a percentage)
    {"step": "mux", "status": "running"}
    {"result": {...}}
    {"error": {"code": "...", "message": "...", "remediation": "..."}}   (and "step")
    {"spawn": {"template": "...", "params": {...}, "name": "..."}}
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import jsontext
from .jsontext import kind_of

__all__ = [
    "ControlError", "ErrorMsg", "Message", "Progress", "ResultMsg", "SpawnMsg", "StepMsg",
    "StepStatus", "parse",
]

# Longest excerpt of a bad line quoted back in a warning.
EXCERPT_CHARS = 80


class ControlError(ValueError):
    """A control line that is not a valid message; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepStatus(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


_STATUS_WORDS: dict[str, StepStatus] = {
    **{s.value.lower(): s for s in StepStatus},
    "started": StepStatus.RUNNING,
    "done": StepStatus.SUCCEEDED,
    "success": StepStatus.SUCCEEDED,
    "completed": StepStatus.SUCCEEDED,
    "error": StepStatus.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    at: float | None = None
    of: float | None = None
    pct: float | None = None  # 0..100 as sent, or 100*at/of when `of` > 0
    message: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMsg:
    name: str
    status: StepStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMsg:
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorMsg:
    code: str
    message: str
    remediation: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnMsg:
    template: str
    params: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None


Message = Progress | StepMsg | ResultMsg | ErrorMsg | SpawnMsg

_KINDS = ("progress", "step", "result", "error", "spawn")


def parse(line: str) -> Message:
    """One control line (without its newline) as a message; ControlError if invalid."""
    obj = _load(line)
    if not isinstance(obj, dict):
        _fail(f"a control line must be a JSON object, got {kind_of(obj)}: {_excerpt(line)}")
    kinds = [k for k in _KINDS if k in obj]
    if "step" in kinds and ("progress" in obj or "error" in obj):  # the step it belongs to
        kinds.remove("step")
    if not kinds:
        _fail(f"a control line needs one of {', '.join(_KINDS)}: {_excerpt(line)}")
    if len(kinds) > 1:
        _fail(f"a control line carries one message, this one has {' and '.join(kinds)}")
    match kinds[0]:
        case "progress":
            return _progress(obj)
        case "step":
            return _step(obj)
        case "result":
            return _result(obj)
        case "error":
            return _error(obj)
        case _:
            return _spawn(obj)


def _progress(obj: dict[str, Any]) -> Progress:
    value = obj["progress"]
    message = _opt_str(obj, "message", "progress")
    step = _opt_str(obj, "step", "progress")
    if isinstance(value, dict):
        message = _opt_str(value, "message", "progress") or message
        step = _opt_str(value, "step", "progress") or step
        at, of = _number(value, "at"), _number(value, "of")
        pct = _number(value, "pct")
        if pct is None:
            pct = _number(value, "percent")
        if at is None and pct is None:
            _fail('progress needs "at" (and "of") or "pct": {"progress": {"at": 3, "of": 10}}')
        if pct is None and at is not None and of:
            pct = 100.0 * at / of
        return Progress(at=at, of=of, pct=pct, message=message, step=step)
    pct = _number(obj, "progress")
    if pct is None:
        _fail('"progress" is a percentage or an object like {"at": 3, "of": 10}; got null')
    return Progress(pct=pct, message=message, step=step)


def _step(obj: dict[str, Any]) -> StepMsg:
    name = _req_str(obj, "step", "step")
    status = obj.get("status")
    if not isinstance(status, str) or status.lower() not in _STATUS_WORDS:
        choices = ", ".join(s.value.lower() for s in StepStatus)
        _fail(f"step {name!r} needs a \"status\", one of {choices}; got {status!r}")
    return StepMsg(name=name, status=_STATUS_WORDS[status.lower()])


def _result(obj: dict[str, Any]) -> ResultMsg:
    data = obj["result"]
    if not isinstance(data, dict):
        _fail(f'"result" must be a JSON object, got {kind_of(data)}')
    return ResultMsg(data=data)


def _error(obj: dict[str, Any]) -> ErrorMsg:
    value = obj["error"]
    step = _opt_str(obj, "step", "error")
    if isinstance(value, str):
        if not value:
            _fail('"error" is empty')
        return ErrorMsg(code="error", message=value, step=step)
    if not isinstance(value, dict):
        _fail(f'"error" must be an object with "code" and "message", got {kind_of(value)}')
    return ErrorMsg(
        code=_req_str(value, "code", "error"), message=_req_str(value, "message", "error"),
        remediation=_opt_str(value, "remediation", "error"),
        step=_opt_str(value, "step", "error") or step)


def _spawn(obj: dict[str, Any]) -> SpawnMsg:
    value = obj["spawn"]
    if not isinstance(value, dict):
        _fail(f'"spawn" must be an object with "template" and "params", got {kind_of(value)}')
    params = value.get("params", {})
    if not isinstance(params, dict):
        _fail(f'spawn "params" must be a JSON object, got {kind_of(params)}')
    return SpawnMsg(template=_req_str(value, "template", "spawn"), params=params,
                    name=_opt_str(value, "name", "spawn"))


# ---- helpers ----------------------------------------------------------------

def _load(line: str) -> Any:
    try:
        return jsontext.loads(line)
    except jsontext.JsonError as exc:
        _fail(f"control line is not valid JSON ({exc.reason}): {_excerpt(line)}")


def _number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(f'"{key}" must be a number, got {value!r}')
    if value < 0:
        _fail(f'"{key}" must not be negative, got {value!r}')
    return value


def _opt_str(obj: Mapping[str, Any], key: str, kind: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        _fail(f'{kind} "{key}" must be a string, got {kind_of(value)}')
    return value


def _req_str(obj: Mapping[str, Any], key: str, kind: str) -> str:
    value = _opt_str(obj, key, kind)
    if not value:
        _fail(f'{kind} needs a non-empty "{key}"')
    return value


def _excerpt(line: str) -> str:
    line = line.strip()
    if len(line) > EXCERPT_CHARS:
        line = line[:EXCERPT_CHARS] + "…"
    return repr(line)


def _fail(reason: str) -> NoReturn:
    raise ControlError(reason)
