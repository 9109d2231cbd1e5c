"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from .base import (
    DatabaseUnavailable,
    Expired,
    IdempotencyRecord,
    IncompatibleDatabase,
    JobFilter,
    RetentionRule,
    Store,
    StoreStatistics,
)

__all__ = ["DatabaseUnavailable", "Expired", "IdempotencyRecord", "IncompatibleDatabase",
           "JobFilter", "RetentionRule", "Store", "StoreStatistics"]
