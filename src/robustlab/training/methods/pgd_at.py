"""PGD adversarial training (Madry et al., ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, TrainingMethod


@METHODS.register("pgd_at")
class PGDAT(TrainingMethod):
    """Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", eq. (2.1):
    ``min_θ E[max_{δ ∈ B(ε)} CE(f_θ(x + δ), y)]``, the inner maximum approximated by the
    training attack (PGD, ``attack.steps`` steps from a random start).

    With λ ≠ 1 the loss is Wu et al. 2021 eq. (1.1) without clipping,
    ``CE(f(x), y) + λ (CE(f(x_adv), y) - CE(f(x), y)) = (1 - λ) CE_nat + λ CE_adv``:
    λ = 1 is Madry's objective (the default), λ = 0.5 Goodfellow et al.'s. The clean forward
    pass is skipped when λ = 1, so the default costs exactly one attack plus one update.

    Returns ``loss``, ``adv_loss`` and, when λ ≠ 1, ``nat_loss``.
    """

    default_lam = 1.0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        x_adv = self.attack(model, x, y)
        if self.lam == 1.0:
            adv_loss = F.cross_entropy(model(x_adv), y)
            return {"loss": adv_loss, "adv_loss": adv_loss.detach()}
        nat_loss = F.cross_entropy(model(x), y)
        adv_loss = F.cross_entropy(model(x_adv), y)
        loss = (1 - self.lam) * nat_loss + self.lam * adv_loss
        return {"loss": loss, "nat_loss": nat_loss.detach(), "adv_loss": adv_loss.detach()}
