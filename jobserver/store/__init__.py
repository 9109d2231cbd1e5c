"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from .base import JobFilter, Store, StoreStatistics

__all__ = ["JobFilter", "Store", "StoreStatistics"]
