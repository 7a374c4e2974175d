"""Training methods, one per file, behind :class:`TrainingMethod`."""

from . import awp, clean, fgsm_rs, gat, mart, pgd_at, trades  # noqa: F401  (registration)
from .base import (
    METHODS,
    EpochContext,
    Terms,
    TrainingMethod,
    frozen_batch_norm_statistics,
    measured_cross_entropy,
    scaled_attack_gradients,
)

__all__ = [
    "METHODS",
    "EpochContext",
    "Terms",
    "TrainingMethod",
    "frozen_batch_norm_statistics",
    "measured_cross_entropy",
    "scaled_attack_gradients",
]
