"""The server's settings: one frozen Config, from defaults < TOML < env < flags.

Rules: `load_config` is the only place that reads the config file and the
`JOBSERVER_*` environment; everything else is handed a Config. A setting's
name is the same in all three sources (`port` = `[server] port` =
`JOBSERVER_PORT` = `--port`). Bad settings raise ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .core.health import HealthCheck, HealthCheckError, parse_health_checks
from .core.templates import Template, TemplateError, parse_template


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    # Default: the user's data dir (`default_data_dir`), never the working directory.
    data_dir: Path = field(default_factory=lambda: default_data_dir(os.environ))
    config_file: Path | None = None
    # A postgresql:// URL: keep jobs in that PostgreSQL database; None: SQLite
    # in data_dir. Never printed (repr=False; logs show it through `redact_url`).
    database_url: str | None = field(default=None, repr=False)
    # Jobs run at once; the rest wait QUEUED in FIFO order.
    slots: int = 4
    allow_adhoc: bool = True
    kill_grace: float = 5.0
    max_line_bytes: int = 65536
    # A job's log past this (characters, a newline each) keeps its first half
    # and a rolling tail (core/logcap.py); 0: no cap. Templates may set their own.
    max_log_bytes: int = 64 << 20
    # Retention (housekeeping.py): finished, unpinned jobs older than this many
    # days, or beyond the newest retention_max_jobs, are removed; 0: keep them.
    retention_days: float = 0.0
    retention_max_jobs: int = 0
    # How often housekeeping looks for jobs to remove (seconds).
    retention_interval: float = 300.0
    max_body_bytes: int = 1024 * 1024
    log_snippet_lines: int = 20
    # Streaming.
    ws_max_message_bytes: int = 65536
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    # Connections and requests (dataplane/limits.py): every request head must
    # arrive within handshake_timeout of its first byte, its body within
    # body_timeout of the head; an idle keep-alive connection closes after
    # keep_alive_timeout (longer than the pools of common clients keep an idle
    # connection, httpx's 5 s and aiohttp's 15 s, so they never reuse one just
    # as it is being closed).
    handshake_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 20.0
    max_connections: int = 10_000
    max_connections_per_client: int = 1_000
    sse_heartbeat: float = 15.0
    # A subscriber further behind than this many events leaves the live path.
    max_lag_events: int = 100_000  # events; outbox.MAX_BACKLOG_BYTES bounds the bytes
    # Extra allowed WebSocket origins; same host and localhost always are.
    allowed_origins: tuple[str, ...] = ()
    # The jobs dialect.
    legacy_template: str = "render-legacy"
    anonymous_loopback: bool = False
    anonymous_user: str = "local"
    # The async dialect: the smallest `interval_ms` a client gets (the spec's 1000).
    async_min_interval_ms: int = 1000
    # The multiplex dialect (/ws): its limits and clocks.
    multiplex_max_connections: int = 10  # per user, across the server
    multiplex_messages_per_minute: int = 100  # per connection
    multiplex_max_subscriptions: int = 50  # per connection
    multiplex_idle_timeout: float = 1800.0  # no client message but pongs for this long
    multiplex_ping_interval: float = 30.0
    multiplex_pong_timeout: float = 10.0
    multiplex_status_interval: float = 30.0  # system_status_update while subscribed
    # Health checks: the built-in api/database ones, and [health.NAME] tables.
    health_interval: float = 30.0
    health_timeout: float = 5.0
    health_checks: tuple[HealthCheck, ...] = ()
    # The live dialect: progress tokens (RS256). The PEM private key, else a key
    # file, else `progress.key` made in the data directory; OSEH_PROGRESS_JWT_SECRET
    # is read as progress_jwt_secret (never printed: repr=False).
    progress_jwt_secret: str | None = field(default=None, repr=False)
    progress_key_file: Path | None = None
    progress_token_ttl: float = 86400.0
    live_batch_window: float = 0.05  # seconds events wait to be sent together
    live_auth_timeout: float = 10.0  # a client that sends no `authorize` in time is dropped
    live_stream_retention: float = 1800.0  # a finished job's stream, after its last event
    # Seconds an Idempotency-Key of a submit is remembered (api/idempotency.py).
    idempotency_ttl: float = 86400.0
    # Several nodes on one PostgreSQL database (cluster.py): each node stamps its
    # heartbeat this often (seconds); one whose stamp is older than node_dead_after
    # is declared dead and its jobs rescued by another node.
    node_heartbeat_interval: float = 2.0
    node_dead_after: float = 15.0
    # The database gone this long (seconds, retrying) fails the node's writes clearly.
    database_lost_after: float = 60.0
    templates: Mapping[str, Template] = field(default_factory=dict)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """$XDG_DATA_HOME/jobserver, else ~/.local/share/jobserver (the XDG base
    directory rule: a relative XDG_DATA_HOME is ignored)."""
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "jobserver"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "jobserver"


def redact_url(url: str) -> str:
    """A database URL without its password (in the user part or the query), for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = "&".join("password=***" if q.lower().startswith("password=") else q
                     for q in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_SERVER_KEYS = {f.name: f for f in dataclasses.fields(Config)
                if f.name not in ("templates", "health_checks")}


def _coerce(name: str, value: Any) -> Any:
    default = getattr(Config(), name)
    try:
        if name in ("data_dir", "config_file", "progress_key_file"):
            return Path(value)
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: bad value {value!r}") from None


def example_config_text() -> str:
    return resources.files("jobserver").joinpath("examples/templates.toml").read_text("utf-8")


def load_templates(doc: Mapping[str, Any]) -> dict[str, Template]:
    out: dict[str, Template] = {}
    for name, table in dict(doc.get("templates", {})).items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"templates.{name} must be a table")
        try:
            out[name] = parse_template(name, table)
        except TemplateError as exc:
            raise ConfigError(str(exc)) from None
    return out


def load_config(
    flags: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the Config. `flags` holds command-line values (None = not given)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    env = {
        name: environ[f"JOBSERVER_{name.upper()}"]
        for name in _SERVER_KEYS
        if f"JOBSERVER_{name.upper()}" in environ
    }
    if "OSEH_PROGRESS_JWT_SECRET" in environ and "progress_jwt_secret" not in env:
        env["progress_jwt_secret"] = environ["OSEH_PROGRESS_JWT_SECRET"]
    config_file = flags.get("config_file") or env.get("config_file")
    if config_file is not None:
        path = Path(config_file)
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    else:
        doc = tomllib.loads(example_config_text())
    settings: dict[str, Any] = {}
    for source in (dict(doc.get("server", {})), env, flags):
        for name, value in source.items():
            if name not in _SERVER_KEYS:
                raise ConfigError(f"unknown setting {name!r}")
            settings[name] = _coerce(name, value)
    if config_file is not None:
        settings["config_file"] = Path(config_file)
    settings.setdefault("data_dir", default_data_dir(environ))
    if not settings.get("database_url"):  # empty: SQLite, as when unset
        settings.pop("database_url", None)
    try:
        checks = parse_health_checks(doc.get("health", {}))
    except HealthCheckError as exc:
        raise ConfigError(str(exc)) from None
    config = Config(**settings, templates=load_templates(doc), health_checks=checks)
    if config.database_url is not None and not config.database_url.startswith(
            ("postgresql://", "postgres://")):
        raise ConfigError("setting 'database_url': must be a postgresql:// URL")
    if not 0 <= config.port <= 65535:
        raise ConfigError("setting 'port': must be 0..65535")
    if config.slots < 1:
        raise ConfigError("setting 'slots': must be at least 1")
    for name in ("handshake_timeout", "body_timeout", "keep_alive_timeout",
                 "max_connections", "max_connections_per_client", "retention_interval"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"setting {name!r}: must be more than 0")
    for name in ("progress_token_ttl", "live_batch_window", "live_auth_timeout",
                 "live_stream_retention", "node_heartbeat_interval", "node_dead_after",
                 "database_lost_after"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"setting {name!r}: must be positive")
    for name in ("max_log_bytes", "retention_days", "retention_max_jobs"):
        if getattr(config, name) < 0:
            raise ConfigError(f"setting {name!r}: must be 0 (off) or more")
    return config
