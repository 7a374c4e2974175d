"""Generalized adversarial training with strength λ (Wu et al., NeurIPS 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, Terms, TrainingMethod


@METHODS.register("gat")
class GeneralizedAT(TrainingMethod):
    """Wu, Chen, Cai, He, Gu, "Do Wider Neural Networks Really Help Adversarial Robustness?"
    (NeurIPS 2021), eq. (1.1) with the clipping of Appendix D:

    ``E_i[ L(θ; x_i, y_i) + λ · max(L(θ; x'_i, y_i) − L(θ; x_i, y_i), 0) ]``,

    with x' the training attack maximizing CE. The clip is *per example*, inside the
    expectation, as Appendix D writes it: an example whose attack failed (L(x'_i) < L(x_i))
    contributes 0 to the regularizer instead of a negative amount that would cancel other
    examples' terms (clipping the difference of the batch means almost never fires). It keeps
    the regularizer non-negative when the inner maximization fails early in training (footnote
    3). λ = 1 without clipping is Madry's objective and λ = 0.5 Goodfellow's (see ``pgd_at``);
    Wu et al. tune λ per width (Table 1: larger for wider models) or adapt it with WAR
    (``method.lam_schedule = "war"``, whose ratio l_nat / l_rob uses this clipped l_rob).

    Reports ``nat_risk`` (the batch-mean CE on x), ``rob_reg`` (the batch mean of the clipped
    per-example differences) and ``clipped_share``, the share of the batch's examples whose
    difference was negative and clipped to 0 (``train_clipped_share`` per epoch, the share of
    the epoch's examples).

    Default λ = 1. Batch norm crafts in train mode by default (``attack.bn_mode = "auto"``), as
    ``pgd_at``: Wu et al. adapt the public PGD-AT code.
    """

    default_lam = 1.0
    reference_bn_mode: ClassVar[str] = "train"

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        nat = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
        gap = adv - nat
        clipped = (gap < 0).float().mean()
        return Terms(
            base=nat.mean(),
            rob_reg=gap.clamp_min(0.0).mean(),
            nat_risk=nat.mean(),
            parts={"clipped_share": clipped},
        )
