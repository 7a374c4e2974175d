"""FGSM: one steepest-ascent step of size eps (Goodfellow, Shlens & Szegedy, ICLR 2015)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ATTACKS, Attack, input_gradient
from .functional import LOSSES, clip_to_ball


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method, "Explaining and Harnessing Adversarial Examples", eq. (3).

    ``x_adv = clip(x + eps * sign(grad_x loss(f(x), y)))``; for L2 the step is the normalized
    gradient. One forward and one backward pass.

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        norm: ``"Linf"`` or ``"L2"``.
        loss: a registered attack loss (``"ce"`` default, ``"cw"``).
        model_mode: ``"eval"`` (default) or ``"train"``.

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``.

    Example:
        >>> attack = create_attack("fgsm", eps=8 / 255)
        >>> x_adv = attack(model, x, y)
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "Linf",
        loss: str = "ce",
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        self.loss = loss
        self.loss_fn = LOSSES.get(loss)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad, _, _ = input_gradient(model, x, y, self.loss_fn)
        return clip_to_ball(x + self.ball.step(grad, self.eps), x, self.eps, self.ball)
