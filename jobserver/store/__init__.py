"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from .base import Expired, JobFilter, RetentionRule, Store, StoreStatistics

__all__ = ["Expired", "JobFilter", "RetentionRule", "Store", "StoreStatistics"]
