"""Health checks as the operator configures them: one `[health.NAME]` table each.

Rules: a check probes one component in exactly one way — `command` (argv run
without a shell: exit 0 is up), `tcp` ("host:port" accepts a connection) or
`http` (an http:// URL answers 2xx/3xx to a GET) — every `interval` seconds,
and a probe that has not answered within `timeout` counts as down. The names
`api` and `database` are the server's own checks and cannot be configured.
Parsing only: the service that runs checks is jobserver/health.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

BUILTIN = ("api", "database")
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 5.0
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_KINDS = ("command", "tcp", "http")


class HealthCheckError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    name: str  # the component: `vector_db` is reported as `vector_db_status`
    command: tuple[str, ...] = ()
    tcp: tuple[str, int] | None = None
    http: str | None = None
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT


def parse_health_checks(doc: Any) -> tuple[HealthCheck, ...]:
    """The `[health]` table of the config file, one check per sub-table."""
    if not isinstance(doc, Mapping):
        raise HealthCheckError("health must be a table of [health.NAME] tables")
    return tuple(parse_health_check(name, table) for name, table in doc.items())


def parse_health_check(name: str, table: Any) -> HealthCheck:
    where = f"health.{name}"
    if not _NAME.fullmatch(name) or name in BUILTIN:
        raise HealthCheckError(f"{where}: a component name is lower-case letters, digits "
                               f"and _, and not one of {', '.join(BUILTIN)}")
    if not isinstance(table, Mapping):
        raise HealthCheckError(f"{where} must be a table")
    unknown = set(table) - {*_KINDS, "interval", "timeout"}
    if unknown:
        raise HealthCheckError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    kinds = [k for k in _KINDS if k in table]
    if len(kinds) != 1:
        raise HealthCheckError(f"{where}: give exactly one of command, tcp, http")
    interval = _seconds(table, "interval", DEFAULT_INTERVAL, where)
    timeout = _seconds(table, "timeout", DEFAULT_TIMEOUT, where)
    value = table[kinds[0]]
    if kinds[0] == "command":
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise HealthCheckError(f"{where}.command must be a non-empty list of strings")
        return HealthCheck(name=name, command=tuple(value), interval=interval, timeout=timeout)
    if kinds[0] == "tcp":
        return HealthCheck(name=name, tcp=_host_port(value, where), interval=interval,
                           timeout=timeout)
    if not isinstance(value, str) or urlsplit(value).scheme != "http" \
            or not urlsplit(value).hostname:
        raise HealthCheckError(f"{where}.http must be an http:// URL")
    return HealthCheck(name=name, http=value, interval=interval, timeout=timeout)


def _seconds(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise HealthCheckError(f"{where}.{key} must be a positive number of seconds")
    return float(value)


def _host_port(value: Any, where: str) -> tuple[str, int]:
    if isinstance(value, str):
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    raise HealthCheckError(f'{where}.tcp must be "host:port"')
