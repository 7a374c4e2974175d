"""TRADES: natural risk plus β times the KL divergence to the clean prediction."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...attacks import Attack
from ...attacks.trades_kl import trades_kl
from ..lam_schedules import LambdaSchedule
from .base import METHODS, Terms, TrainingMethod


@METHODS.register("trades")
class TRADES(TrainingMethod):
    """Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between
    Robustness and Accuracy" (ICML 2019), section 4 and Algorithm 1, as the reference
    ``trades_loss``:

    ``CE(f(x), y) + β · (1/B) Σ_i KL(softmax f(x_i) ‖ softmax f(x'_i))``,

    with ``x'`` the ``trades-kl`` training attack (``attack.*`` keys; batch norm in eval mode by default, as
    the reference) and β = λ, so WAR's schedule can drive it (Wu et al. 2021 train TRADES with λ
    from {6, …, 21}). Published defaults (the reference scripts; β is 1/λ in the paper's
    notation): CIFAR-10 β = 6, eps 0.031, step 0.007, 10 steps; MNIST β = 1, eps 0.3, step 0.01,
    40 steps. Set the attack's with ``attack.eps``/``alpha``/``steps``; ``attack.alpha`` unset
    gives Madry's ``2.5·eps/steps`` (0.00775 at eps 0.031 and 10 steps, not 0.007).

    The KL's clean distribution is not detached (gradients flow through both arguments, as in
    the reference). Its clean logits are those of the natural-risk term: the reference runs the
    clean batch a second time in train mode for the KL, which gives identical outputs (batch
    statistics of the same batch), hence the same loss and the same parameter gradients, but
    updates batch-norm running statistics twice (clean, adversarial, clean). Here they are
    updated once per pass (clean, adversarial): that is the one side effect that differs, and
    ``reference_passes = true`` restores the reference's three passes. (A model with dropout
    would also draw different masks in the reference's two clean passes.)

    Reports ``nat_risk = base = CE(f(x), y)`` and ``rob_reg`` = the batch-mean KL.

    Args:
        attack, lam, lam_schedule, track_terms: see :class:`TrainingMethod` (β = ``lam``,
            default 6).
        detach_clean: detach the KL's clean distribution (a constant target, as some
            reimplementations do); default False, as the reference.
        reference_passes: a second clean forward pass for the KL target, as the reference, so
            batch-norm running statistics match it exactly; default False.
    """

    default_lam = 6.0
    attack_name = "trades-kl"
    # The reference's trades_loss calls model.eval() before crafting, model.train() after.
    reference_bn_mode: ClassVar[str] = "eval"

    @classmethod
    def default_alpha(cls, eps: float, steps: int, norm: str = "Linf") -> float:
        """Madry's 2.5·eps/steps for L-inf (TRADES' CIFAR step 0.007 at eps 0.031 is 2.26·eps/steps);
        for L2 the reference's SGD learning rate on δ, 2·eps/steps."""
        return 2 * eps / steps if norm == "L2" else 2.5 * eps / steps

    def __init__(
        self,
        attack: Attack | None = None,
        lam: float | None = None,
        lam_schedule: LambdaSchedule | None = None,
        track_terms: bool = True,
        detach_clean: bool = False,
        reference_passes: bool = False,
    ) -> None:
        super().__init__(attack, lam, lam_schedule, track_terms)
        self.detach_clean = detach_clean
        self.reference_passes = reference_passes

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        logits = model(x)
        nat = F.cross_entropy(logits, y)
        adv_logits = model(x_adv)
        # The reference's order of passes: clean (CE), adversarial, clean again (KL target).
        target = model(x) if self.reference_passes else logits
        if self.detach_clean:
            target = target.detach()
        rob_reg = trades_kl(adv_logits, F.softmax(target, dim=1)).sum() / x.shape[0]
        return Terms(base=nat, rob_reg=rob_reg, nat_risk=nat)
