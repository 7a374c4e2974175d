"""Training methods, one per file, behind :class:`TrainingMethod`."""

from . import clean, pgd_at  # noqa: F401  (registration)
from .base import METHODS, TrainingMethod

__all__ = ["METHODS", "TrainingMethod"]
