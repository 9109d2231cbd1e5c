"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from .base import (
    Expired,
    IdempotencyRecord,
    IncompatibleDatabase,
    JobFilter,
    RetentionRule,
    Store,
    StoreStatistics,
)

__all__ = ["Expired", "IdempotencyRecord", "IncompatibleDatabase", "JobFilter", "RetentionRule",
           "Store", "StoreStatistics"]
