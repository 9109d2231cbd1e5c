"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from .base import IdempotencyRecord, JobFilter, Store, StoreStatistics

__all__ = ["IdempotencyRecord", "JobFilter", "Store", "StoreStatistics"]
