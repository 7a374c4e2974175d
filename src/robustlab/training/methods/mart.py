"""MART: misclassification-aware adversarial training (Wang et al., ICLR 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, Terms, TrainingMethod

# The reference code's constants: they keep the logarithms finite when a probability is 0 or 1
# (BCE's log(1 − p) and the KL's log p_adv) and the weight 1 − p_nat[y] positive.
BCE_SHIFT = 1.0001
LOG_FLOOR = 1e-12
WEIGHT_SHIFT = 1.0000001


def mart_bce(adv_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example boosted cross-entropy (BCE) of Wang et al., section 3:
    ``−log p_adv[y] − log(1 − max_{k≠y} p_adv[k])`` (with the reference's constants inside the
    second logarithm)."""
    probs = F.softmax(adv_logits, dim=1)
    others = probs.masked_fill(F.one_hot(y, probs.shape[1]).bool(), float("-inf"))
    margin = -torch.log(BCE_SHIFT - others.amax(dim=1) + LOG_FLOOR)
    return F.cross_entropy(adv_logits, y, reduction="none") + margin


def mart_weighted_kl(
    adv_logits: torch.Tensor, nat_logits: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-example misclassification-weighted KL, Wang et al. eq. (8)'s regularizer:
    ``KL(p_nat ‖ p_adv) · (1 − p_nat[y])``, with the reference's ``log(p_adv + 1e-12)`` and
    ``1.0000001 − p_nat[y]``. Nothing is detached: gradients flow through both distributions and
    the weight, as in the reference."""
    adv_probs = F.softmax(adv_logits, dim=1)
    nat_probs = F.softmax(nat_logits, dim=1)
    kl = F.kl_div(torch.log(adv_probs + LOG_FLOOR), nat_probs, reduction="none").sum(dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    return kl * (WEIGHT_SHIFT - true_probs)


@METHODS.register("mart")
class MART(TrainingMethod):
    """Wang, Zou, Yi, Bailey, Ma, Gu, "Improving Adversarial Robustness Requires Revisiting
    Misclassified Examples" (ICLR 2020), eq. (8), as the reference ``mart_loss``:

    ``(1/B) Σ_i [BCE(f(x'_i), y_i) + β · KL(p(x_i) ‖ p(x'_i)) · (1 − p_{y_i}(x_i))]``

    where ``BCE(p', y) = −log p'_y − log(1 − max_{k≠y} p'_k)`` (the boosted CE) and ``x'`` is
    PGD on CE from ``x + 0.001·N(0, 1)`` (the reference's start; ``attack.random_start`` and
    ``attack.loss`` are fixed to that; PGD clips that start to [0, 1] before its first gradient,
    the reference does not, which changes the first step's sign on a few pixels lying on a face
    of the box). β = λ: ``base`` is the BCE term and ``rob_reg`` the weighted KL, so WAR's
    schedule can drive β. Published defaults (the reference CIFAR-10
    scripts): β = 6, eps 0.031, step 0.007, 10 steps (``attack.alpha`` unset gives Madry's
    ``2.5·eps/steps``, 0.00775 at eps 0.031 and 10 steps); the reference has no L2 attack.

    Two forward passes in train mode, clean then adversarial, as the reference (so batch-norm
    statistics update as there). Reports ``nat_risk = CE(f(x), y)`` from the same clean logits
    (no extra pass), ``bce`` (the base) and ``adv_ce = CE(f(x'), y)``.

    Args:
        attack, lam, lam_schedule, track_terms: see :class:`TrainingMethod` (β = ``lam``,
            default 6).
    """

    default_lam = 6.0
    attack_defaults: ClassVar[dict[str, Any]] = {"random_start": "normal", "loss": "ce"}
    # The reference's mart_loss calls model.eval() before crafting, model.train() after.
    reference_bn_mode: ClassVar[str] = "eval"

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        nat_logits = model(x)
        adv_logits = model(x_adv)
        adv_ce = F.cross_entropy(adv_logits, y)
        bce = mart_bce(adv_logits, y).mean()
        rob_reg = mart_weighted_kl(adv_logits, nat_logits, y).mean()
        nat = F.cross_entropy(nat_logits.detach(), y)
        return Terms(base=bce, rob_reg=rob_reg, nat_risk=nat, parts={"bce": bce, "adv_ce": adv_ce})
