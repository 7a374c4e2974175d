"""FGSM: one steepest-ascent step of size eps (Goodfellow, Shlens & Szegedy, ICLR 2015)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import ATTACKS, Attack, input_gradient
from .functional import LOSSES, clip_to_ball


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method, "Explaining and Harnessing Adversarial Examples", eq. (3);
    with ``random_start`` and ``alpha = 1.25·eps`` it is the FGSM of Wong, Rice & Kolter, "Fast is
    better than free" (ICLR 2020), Algorithm 3 (FGSM-RS).

    ``x_adv = clip(x + eps * sign(grad_x loss(f(x), y)))``; for L2 the step is the normalized
    gradient. One forward and one backward pass.

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        norm: ``"Linf"`` or ``"L2"``.
        loss: a registered attack loss (``"ce"`` default, ``"cw"``).
        random_start: start from a uniform random point of the ball (default False).
        alpha: the step length (default ``eps``; Wong et al. use ``1.25·eps`` from a random start).
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
        random_start: bool = False,
        alpha: float | None = None,
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        self.loss = loss
        self.loss_fn = LOSSES.get(loss)
        self.random_start = random_start
        self.alpha = self.eps if alpha is None else float(alpha)
        if self.alpha < 0:
            raise ConfigError("alpha", alpha, "must be >= 0")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = x
        if self.random_start:
            start = clip_to_ball(x + self.ball.random_init(x, self.eps), x, self.eps, self.ball)
        grad, _, _ = input_gradient(model, start, y, self.loss_fn)
        return clip_to_ball(start + self.ball.step(grad, self.alpha), x, self.eps, self.ball)
