"""PGD adversarial training (Madry et al., ICLR 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...attacks import Attack
from ..lam_schedules import LambdaSchedule
from .base import METHODS, Terms, TrainingMethod, measured_cross_entropy


@METHODS.register("pgd_at")
class PGDAT(TrainingMethod):
    """Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", eq. (2.1):
    ``min_θ E[max_{δ ∈ B(ε)} CE(f_θ(x + δ), y)]``, the inner maximum approximated by the
    training attack (PGD, ``attack.steps`` steps from a random start).

    With λ ≠ 1 the loss is Wu et al. 2021 eq. (1.1) without clipping,
    ``CE(f(x), y) + λ (CE(f(x_adv), y) − CE(f(x), y)) = (1 − λ) CE_nat + λ CE_adv``:
    λ = 1 is Madry's objective (the default), λ = 0.5 Goodfellow et al.'s. At λ = 1 the clean
    pass is only measured (no gradient, no batch-norm update) when ``track_terms``, so the update
    is exactly Madry's; ``method.track_terms = false`` skips it.

    The training attack crafts with batch norm in train mode by default (``attack.bn_mode =
    "auto"``), as the reference of Rice et al. (locuslab/robust_overfitting, ``train_cifar.py``:
    the model is put in train mode at the epoch's start and ``attack_pgd`` keeps it there).
    """

    default_lam = 1.0
    reference_bn_mode: ClassVar[str] = "train"

    def __init__(
        self,
        attack: Attack | None = None,
        lam: float | None = None,
        lam_schedule: LambdaSchedule | None = None,
        track_terms: bool = True,
    ) -> None:
        super().__init__(attack, lam, lam_schedule, track_terms)
        self._decide_objective()

    def _decide_objective(self) -> None:
        # Decided once, not per step: reading λ (a device tensor once the schedule has run) in
        # every iteration would be a host-device synchronization per step (two with AWP).
        self.madry = not self.adapts_lam and float(self.lam_schedule.value) == 1.0

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._decide_objective()

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        adv = F.cross_entropy(model(x_adv), y)
        if self.madry:
            nat = measured_cross_entropy(model, x, y) if self.track_terms else None
            rob_reg = adv.detach() - nat if nat is not None else None
            return Terms(base=adv, rob_reg=rob_reg, nat_risk=nat, optimize_rob_reg=False)
        nat = F.cross_entropy(model(x), y)
        return Terms(base=nat, rob_reg=adv - nat, nat_risk=nat)
