"""TRADES' inner maximization: the KL divergence from the clean prediction, ascended."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import ATTACKS, Attack, input_gradient
from .functional import LossFn, clip_to_ball

# The reference code's start: x + START_STD · N(0, 1), a tiny Gaussian nudge off x where the
# KL divergence and its gradient would both be exactly zero.
START_STD = 0.001


def trades_kl(logits: torch.Tensor, clean_probs: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(p_clean ‖ softmax(logits)) = Σ_k p_clean,k (log p_clean,k − log p_k)``.

    This is what the reference's ``nn.KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))`` computes
    (before its sum over the batch): the clean distribution is the *first* argument of the KL,
    the adversarial one the second. Classes with ``p_clean = 0`` contribute 0.
    """
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="none").sum(dim=1)


@ATTACKS.register("trades-kl")
class TradesKL(Attack):
    """The inner maximization of TRADES, Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically
    Principled Trade-off between Robustness and Accuracy" (ICML 2019), Algorithm 1 (and the
    reference ``trades_loss``): ``max_{x' ∈ B(x, eps)} KL(f(x) ‖ f(x'))`` from
    ``x' = x + 0.001·N(0, 1)``, the clean distribution ``softmax(f(x))`` computed once per call in
    the attack's mode (the reference recomputes it at every step, identically in eval mode).

    - L-inf: ``x' ← Proj_{B(x, eps) ∩ [0,1]}(x' + alpha · sign(∇ KL))``, the reference's loop.
    - L2: the reference's variant, SGD on δ with step ``alpha`` (the reference's
      ``lr = 2·eps/steps``) along the per-example normalized gradient, a random Gaussian
      direction (not normalized, as in the reference) for an example whose gradient is exactly
      zero, then δ clipped to the image box and rescaled into the L2 ball, in that order.

    The gradient is that of the KL summed over the batch (the reference's ``size_average=False``),
    so each example's step depends on its own KL only (in eval mode). As in the reference, the
    start is not projected: the first gradient is taken at ``x + 0.001·N(0, 1)`` even where that
    leaves [0, 1]; every later iterate, and the result, is in the ball and in [0, 1].

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255; TRADES' CIFAR-10 setting is 0.031, MNIST's 0.3).
        alpha: step size. Default: L-inf ``2.5·eps/steps`` (Madry et al.'s rule, as PGD; TRADES'
            CIFAR-10 script uses 0.007 for eps 0.031 and 10 steps, ≈ 2.26·eps/steps, and its MNIST
            script 0.01 for 0.3 and 40 steps); L2 ``2·eps/steps`` (the reference's SGD rate).
        steps: iterations (default 10, TRADES' CIFAR-10 setting).
        norm: ``"Linf"`` or ``"L2"``.
        model_mode: ``"eval"`` (default, as the reference) or ``"train"``.
        check_inputs: verify images are in [0, 1] and labels in range (one host sync per call).

    The labels are not used by the algorithm (only checked); the attack is untargeted in the
    sense of moving the prediction away from the clean one, whatever the label.

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``.

    Example:
        >>> attack = create_attack("trades-kl", eps=0.031, alpha=0.007, steps=10)
        >>> x_adv = attack(model, x, y)
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "Linf",
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        if steps <= 0:
            raise ConfigError("steps", steps, "must be > 0")
        self.steps = int(steps)
        default_rate = 2.0 if norm == "L2" else 2.5
        self.alpha = default_rate * self.eps / self.steps if alpha is None else float(alpha)
        if self.alpha <= 0 and self.eps > 0:
            raise ConfigError("alpha", alpha, "must be > 0")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean_probs = F.softmax(model(x), dim=1)

        def loss_fn(logits: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
            return trades_kl(logits, clean_probs)

        noise = START_STD * torch.randn_like(x)
        if self.norm == "L2":
            return self._l2(model, x, y, noise, loss_fn)
        x_adv = x + noise
        for _ in range(self.steps):
            grad, _, _ = input_gradient(model, x_adv, y, loss_fn)
            x_adv = clip_to_ball(x_adv + self.ball.step(grad, self.alpha), x, self.eps, self.ball)
        return x_adv

    def _l2(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        delta: torch.Tensor,
        loss_fn: LossFn,
    ) -> torch.Tensor:
        """The reference's L2 loop, on the perturbation δ (starting at ``delta``)."""
        per_example = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.steps):
            grad, _, _ = input_gradient(model, x + delta, y, loss_fn)
            # A zero gradient has no direction: the reference substitutes a Gaussian one (chosen
            # with torch.where rather than a branch, so no host sync).
            stuck = (self.ball.norm(grad) == 0).view(per_example)
            step = torch.where(
                stuck, self.alpha * torch.randn_like(grad), self.ball.step(grad, self.alpha)
            )
            delta = (x + (delta + step)).clamp(0.0, 1.0) - x
            delta = self.ball.project(delta, self.eps)
        return (x + delta).clamp(0.0, 1.0)
