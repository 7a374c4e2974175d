"""Standard (non-adversarial) training: empirical risk minimization with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, TrainingMethod


@METHODS.register("clean")
class Clean(TrainingMethod):
    """Empirical risk minimization, ``min_θ E[CE(f_θ(x), y)]`` (λ = 0 in Wu et al. eq. 1.1).

    Returns ``loss`` (= ``nat_loss``), the mean cross-entropy on the clean batch.
    """

    default_lam = 0.0
    needs_attack = False

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(model(x), y)
        return {"loss": loss, "nat_loss": loss.detach()}
