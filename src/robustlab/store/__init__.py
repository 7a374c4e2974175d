"""The SQLite results store (runs, per-epoch metrics, evaluations)."""

from .sqlite import DEFAULT_STORE, SCHEMA_VERSION, ResultsStore, RunRecord

__all__ = ["DEFAULT_STORE", "SCHEMA_VERSION", "ResultsStore", "RunRecord"]
