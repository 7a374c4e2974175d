"""Training: methods (one per file), the generic loop, schedules, checkpoints.

>>> method = create_method("pgd_at", attack=create_attack("pgd", eps=8 / 255, steps=10))
>>> out = method(model, x, y)   # {"loss": ..., "adv_loss": ...}
"""

from __future__ import annotations

from typing import Any

from ..attacks import Attack
from .methods import METHODS, TrainingMethod

__all__ = ["METHODS", "TrainingMethod", "create_method", "list_methods", "method_default_lam"]


def list_methods(pattern: str | None = None) -> list[str]:
    """Names of the registered training methods."""
    return METHODS.names(pattern)


def create_method(
    name: str, attack: Attack | None = None, lam: float | None = None, **kwargs: Any
) -> TrainingMethod:
    """Build the training method ``name`` with its training ``attack`` and strength ``lam``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
    """
    return METHODS.create(name, attack=attack, lam=lam, **kwargs)


def method_default_lam(name: str) -> float | None:
    """The published default λ of method ``name``."""
    return METHODS.get(name).default_lam
