"""Persistence behind one interface, `Store`; SQLite is the embedded default,
PostgreSQL the one several servers share (`database_url`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import (
    DatabaseUnavailable,
    Expired,
    IdempotencyRecord,
    IncompatibleDatabase,
    JobFilter,
    RetentionRule,
    Store,
    StoreStatistics,
    WriteFenced,
)

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["DatabaseUnavailable", "Expired", "IdempotencyRecord", "IncompatibleDatabase",
           "JobFilter", "RetentionRule", "Store", "StoreStatistics", "WriteFenced"]

log = logging.getLogger("jobserver.store")


def open_store(config: Config, *, observe_commit: Callable[[float], None] | None = None,
               node: str | None = None) -> Store:
    """The store `config` names (not yet running): PostgreSQL at `database_url`
    (writing as `node`: see postgres_blocking.py's fencing), else SQLite in the
    data directory."""
    from ..config import redact_url

    if config.database_url is not None:
        from .postgres import PostgresStore

        log.info("PostgreSQL at %s", redact_url(config.database_url))
        return PostgresStore(config.database_url, observe_commit=observe_commit,
                             lost_after=config.database_lost_after, node=node)
    from .sqlite import SqliteStore

    path = config.data_dir / "jobserver.db"
    log.info("SQLite at %s", path)
    return SqliteStore(path, observe_commit=observe_commit)
