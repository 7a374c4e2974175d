"""PGD: projected gradient ascent from a random start (Madry et al., ICLR 2018)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import ATTACKS, Attack, input_gradient
from .functional import LOSSES, TARGET_SELECTIONS, TARGETED_LOSSES, clip_to_ball


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected Gradient Descent, "Towards Deep Learning Models Resistant to Adversarial
    Attacks" (Madry, Makelov, Schmidt, Tsipras, Vladu; ICLR 2018), section 2.1, eq. (2.1):
    ``x_{t+1} = Proj_{B(x, eps) ∩ [0,1]}(x_t + alpha * step(grad_x loss(f(x_t), y)))`` where
    ``step`` is ``sign`` for L-inf and the normalized gradient for L2.

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        alpha: step size (default ``2.5 * eps / steps``, Madry et al.; 2/255 for 8/255 and 10 steps).
        steps: iterations (default 10).
        norm: ``"Linf"`` or ``"L2"``.
        random_start: ``True`` (default): a uniform random point of the ball (Madry et al.);
            ``"normal"``: ``x + 0.001·N(0, 1)``, the start of TRADES' and MART's reference code;
            ``False``: ``x`` itself.
        restarts: independent runs; per example, the first run that changes the prediction is
            kept, else the one with the highest loss (default 1).
        loss: a registered attack loss: ``"ce"`` (default), ``"cw"`` (margin) or ``"dlr"``
            (Croce & Hein 2020, eq. 5; targeted: eq. 6).
        targeted: move each point towards a target class instead of away from its label; a
            point counts as fooled when it is classified as its target (default False).
        target: how targets are chosen from the clean logits: ``"random"`` (default),
            ``"least_likely"`` or ``"most_likely"`` (the most likely wrong class).
        model_mode: ``"eval"`` (default) or ``"train"``.

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``.

    Example:
        >>> attack = create_attack("pgd", eps=8 / 255, steps=20)
        >>> x_adv = attack(model, x, y)
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "Linf",
        random_start: bool | str = True,
        restarts: int = 1,
        loss: str = "ce",
        targeted: bool = False,
        target: str = "random",
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        if steps <= 0:
            raise ConfigError("steps", steps, "must be > 0")
        if restarts <= 0:
            raise ConfigError("restarts", restarts, "must be > 0")
        self.steps = int(steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else float(alpha)
        if self.alpha <= 0 and self.eps > 0:
            raise ConfigError("alpha", alpha, "must be > 0")
        if random_start not in (True, False, "uniform", "normal"):
            raise ConfigError("random_start", random_start, "true, false or 'normal'")
        self.random_start = random_start
        self.restarts = int(restarts)
        self.loss = loss
        self.targeted = targeted
        self.target = target
        self.select_target = TARGET_SELECTIONS.get(target)
        self.loss_fn = TARGETED_LOSSES.get(loss) if targeted else LOSSES.get(loss)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss_fn, succeeded = self.loss_fn, None
        if self.targeted:
            with torch.no_grad():
                targets = self.select_target(model(x), y)
            self.info["targets"] = targets

            def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                return self.loss_fn(logits, labels, targets)

            def succeeded(logits: torch.Tensor) -> torch.Tensor:
                return logits.argmax(1) == targets

        if self.restarts == 1:
            return self._ascend(model, x, y, loss_fn)
        succeeded = succeeded or (lambda logits: logits.argmax(1) != y)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            x_adv = self._ascend(model, x, y, loss_fn)
            with torch.no_grad():
                logits = model(x_adv)
                loss = loss_fn(logits, y)
                now_fooled = succeeded(logits)
            # A point already fooled keeps its example; otherwise fooling beats a higher loss.
            take = ~fooled & (now_fooled | (loss > best_loss))
            best = torch.where(take.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_loss = torch.where(take, loss, best_loss)
            fooled |= now_fooled
        return best

    def _ascend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
        """One run of projected gradient ascent on ``loss_fn``."""
        x_adv = x
        if self.random_start == "normal":
            # As TRADES' and MART's code: the first gradient is taken at the unclipped point.
            x_adv = x + 0.001 * torch.randn_like(x)
        elif self.random_start:
            x_adv = clip_to_ball(x + self.ball.random_init(x, self.eps), x, self.eps, self.ball)
        if self.norm == "Linf":
            # The L-inf ball intersected with the image box is a box: precompute its corners so
            # each step is one clamp (the same point as projecting, then clipping to [0, 1]).
            low, high = (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)
            for _ in range(self.steps):
                grad, _, _ = input_gradient(model, x_adv, y, loss_fn)
                x_adv = torch.clamp(x_adv + grad.sign_().mul_(self.alpha), low, high)
            return x_adv
        for _ in range(self.steps):
            grad, _, _ = input_gradient(model, x_adv, y, loss_fn)
            x_adv = clip_to_ball(x_adv + self.ball.step(grad, self.alpha), x, self.eps, self.ball)
        return x_adv
