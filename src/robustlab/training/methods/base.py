"""The training-method interface: ``method(model, x, y) -> {"loss": ..., <named parts>}``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ...attacks import Attack
from ...errors import ConfigError
from ...registry import Registry

METHODS: Registry[Callable[..., TrainingMethod]] = Registry("method", "method.name")


class TrainingMethod(ABC):
    """One adversarial-training objective.

    A method maps a training batch to its loss and the loss's named parts; the training loop
    (generic for every method) does the backward pass and the optimizer step. The model is in
    train mode when the method is called; the attack sets its own mode (``attack.bn_mode``) and
    restores train mode after.

    Args:
        attack: the training attack (``None`` for methods that need none).
        lam: robust-regularization strength λ (``None``: the method's published default).

    Returns (from ``__call__``):
        ``{"loss": scalar with graph, <part>: detached scalar, ...}``.
    """

    default_lam: ClassVar[float | None] = None
    needs_attack: ClassVar[bool] = True

    def __init__(self, attack: Attack | None = None, lam: float | None = None) -> None:
        if self.needs_attack and attack is None:
            raise ConfigError("attack", None, f"{type(self).__name__} needs a training attack")
        lam = self.default_lam if lam is None else lam
        if lam is not None and lam < 0:
            raise ConfigError("method.lam", lam, "must be >= 0")
        self.attack = attack
        self.lam = lam

    @abstractmethod
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Loss and named parts for one batch."""
