"""Generalized adversarial training with strength λ (Wu et al., NeurIPS 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, Terms, TrainingMethod


@METHODS.register("gat")
class GeneralizedAT(TrainingMethod):
    """Wu, Chen, Cai, He, Gu, "Do Wider Neural Networks Really Help Adversarial Robustness?"
    (NeurIPS 2021), eq. (1.1) with the clipping of Appendix D:

    ``L(θ; x, y) + λ · max(L(θ; x', y) − L(θ; x, y), 0)``,

    per batch (the batch-mean losses), with x' the training attack maximizing CE. The clipping
    keeps the regularizer non-negative when the inner maximization fails early in training
    (footnote 3). λ = 1 without clipping is Madry's objective and λ = 0.5 Goodfellow's (see
    ``pgd_at``); Wu et al. tune λ per width (Table 1: larger for wider models) or adapt it with
    WAR (``method.lam_schedule = "war"``).

    Default λ = 1.
    """

    default_lam = 1.0

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        nat = F.cross_entropy(model(x), y)
        adv = F.cross_entropy(model(x_adv), y)
        return Terms(base=nat, rob_reg=(adv - nat).clamp_min(0.0), nat_risk=nat)
