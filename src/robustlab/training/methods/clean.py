"""Standard (non-adversarial) training: empirical risk minimization with cross-entropy."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, Terms, TrainingMethod, measured_cross_entropy


@METHODS.register("clean")
class Clean(TrainingMethod):
    """Empirical risk minimization, ``min_θ E[CE(f_θ(x), y)]`` (λ = 0 in Wu et al. eq. 1.1).

    The loss is the natural risk alone. With ``track_terms`` (the default) the robust
    regularization ``CE(f(x_adv), y) − CE(f(x), y)`` of eq. (1.1) is measured with the training
    attack but not optimized, so clean runs report the same two terms as adversarial ones
    (Wu et al. Figure 1); this costs one attack per batch, and ``method.track_terms = false``
    turns it off.
    """

    default_lam = 0.0
    needs_attack = False
    # No reference crafts here: the attack only measures the regularization term, and in eval
    # mode that measurement leaves batch-norm statistics (hence training) untouched.
    reference_bn_mode: ClassVar[str] = "eval"

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return super().craft(model, x, y) if self.track_terms else None

    def objective(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, y: torch.Tensor
    ) -> Terms:
        nat = F.cross_entropy(model(x), y)
        rob_reg = None if x_adv is None else measured_cross_entropy(model, x_adv, y) - nat.detach()
        return Terms(base=nat, rob_reg=rob_reg, nat_risk=nat, optimize_rob_reg=False)
