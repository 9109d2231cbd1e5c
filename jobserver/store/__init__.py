"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from .base import Expired, IdempotencyRecord, JobFilter, RetentionRule, Store, StoreStatistics

__all__ = ["Expired", "IdempotencyRecord", "JobFilter", "RetentionRule", "Store",
           "StoreStatistics"]
