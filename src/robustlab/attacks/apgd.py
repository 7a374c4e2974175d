"""APGD: Auto-PGD with a step size that adapts to the loss (Croce & Hein, ICML 2020).

The iteration (Algorithm 1 of the paper) lives in :func:`apgd_run`, and the driver that runs it
on the points not yet fooled lives in :class:`APGDBase`; both are shared with APGD-T
(``apgd_t.py``), which only changes the loss and adds one run per target class.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import ATTACKS, Attack, input_gradient, register_preset
from .functional import LOSSES, LossFn, ThreatModel, clip_to_ball

APGD_LOSSES = ("ce", "dlr")
# Momentum weight of Algorithm 1 (alpha = 0.75): the new point is 0.75 of the projected
# gradient step plus 0.25 of the previous displacement. The first iteration has no momentum.
MOMENTUM = 0.75
# The step starts at 2 * eps (Algorithm 1, eta^(0) = 2 eps): the first iterates explore the
# whole ball, then the checkpoints halve it where progress stalls.
INITIAL_STEP = 2.0

# One run's loss, chosen by the driver for the points still attacked (their indices in the batch).
LossForRun = Callable[[torch.Tensor], LossFn]


def apgd_checkpoints(steps: int) -> list[int]:
    """Iteration counts after which APGD checks its step size (section 3.2).

    The paper's checkpoints are ``w_j = ceil(p_j * N_iter)`` (``N_iter`` is ``steps``) with
    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``: a first
    phase of 22% of the budget, then phases shrinking by 3% down to 6%. As in the reference
    implementation the lengths are computed in whole iterations (``int(0.22 * N_iter)`` etc., at
    least 1), so that a budget of 100 gives the paper's 22, 41, 57, 70, 80, 87, 93, 99. For
    budgets that are not multiples of 100 the two differ (50 iterations: 11, 21, 30, 38, 45 here
    and in the reference, 11, 21, 29, 35, 40, 44, 47, 50 by the formula); we follow the
    reference, whose numbers are published.
    """
    first = max(int(0.22 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    checkpoints, length, at = [], first, first
    while at <= steps:
        checkpoints.append(at)
        length = max(length - shrink, shortest)
        at += length
    return checkpoints


def _linf_start(x: torch.Tensor) -> torch.Tensor:
    return 2 * torch.rand_like(x) - 1


# Random start of the reference: a uniform (L-inf) or Gaussian (L2) direction rescaled onto the
# sphere of radius eps, so the first iterate already uses the whole budget.
_START_DIRECTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Linf": _linf_start,
    "L2": torch.randn_like,
}


def random_start(x: torch.Tensor, eps: float, ball: ThreatModel) -> torch.Tensor:
    """APGD's starting point: ``x + eps * t / ||t||`` for a random ``t``, clipped to [0, 1]."""
    direction = _START_DIRECTIONS[ball.name](x)
    scale = eps / ball.norm(direction).clamp_min(1e-12)
    return (x + direction * scale.view(-1, *([1] * (x.dim() - 1)))).clamp(0.0, 1.0)


@dataclass
class APGDRun:
    """What one APGD run returns, per example of the batch it was given.

    Attributes:
        x_best: the iterate with the highest loss (where the checkpoints restart from).
        loss_best: its loss.
        x_adv: the last misclassified iterate, where ``fooled``; meaningless elsewhere.
        fooled: some iterate was misclassified.
        step_size: the step size at the start and after each checkpoint, (checkpoints + 1, B).
    """

    x_best: torch.Tensor
    loss_best: torch.Tensor
    x_adv: torch.Tensor
    fooled: torch.Tensor
    step_size: torch.Tensor


def apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    eps: float,
    ball: ThreatModel,
    steps: int = 100,
    rho: float = 0.75,
    eot_iter: int = 1,
) -> APGDRun:
    """One run of APGD (Croce & Hein 2020, Algorithm 1) maximizing ``loss_fn(model(x'), y)``.

    Every iteration takes a projected steepest-ascent step of per-example size ``eta`` and mixes
    it with the previous displacement (momentum 0.75). At each checkpoint of
    :func:`apgd_checkpoints`, an example's step is halved and its iterate moved back to its best
    point when (1) its loss increased in at most ``rho`` of the iterations since the last
    checkpoint, or (2) its step was not halved at the last checkpoint and its best loss has not
    improved since. All decisions are per example and tensor-valued: no host synchronisation.
    """
    view = (-1, *([1] * (x.dim() - 1)))
    x_adv = random_start(x, eps, ball)
    grad, logits, loss = input_gradient(model, x_adv, y, loss_fn, eot_iter)
    fooled = logits.argmax(1) != y
    x_fooled = x_adv  # the reference's x_best_adv; only read where ``fooled``
    x_best, loss_best, grad_best = x_adv, loss, grad
    step = torch.full((x.shape[0],), INITIAL_STEP * eps, dtype=x.dtype, device=x.device)
    step_sizes = [step]

    checkpoints = set(apgd_checkpoints(steps))
    last_checkpoint = 0
    increases = torch.zeros_like(loss)  # iterations since the last checkpoint where f went up
    # Condition 1 counts f(x^(i+1)) > f(x^(i)) from the starting point on, as the paper writes;
    # the reference's first comparison reads a not-yet-written buffer entry (0) instead of f(x^0).
    loss_prev = loss
    # The reference treats the start as a checkpoint where the step was reduced, so condition 2
    # can only fire from the second checkpoint on.
    reduced_at_checkpoint = torch.ones_like(fooled)
    loss_best_at_checkpoint = loss_best
    x_prev = x_adv

    for i in range(steps):
        weight = MOMENTUM if i > 0 else 1.0
        z = clip_to_ball(x_adv + step.view(view) * ball.step(grad, 1.0), x, eps, ball)
        x_next = x_adv + weight * (z - x_adv) + (1 - weight) * (x_adv - x_prev)
        x_prev, x_adv = x_adv, clip_to_ball(x_next, x, eps, ball)

        grad, logits, loss = input_gradient(model, x_adv, y, loss_fn, eot_iter)
        misclassified = logits.argmax(1) != y
        fooled = fooled | misclassified
        x_fooled = torch.where(misclassified.view(view), x_adv, x_fooled)
        improved = loss > loss_best
        x_best = torch.where(improved.view(view), x_adv, x_best)
        grad_best = torch.where(improved.view(view), grad, grad_best)
        loss_best = torch.where(improved, loss, loss_best)
        increases = increases + (loss > loss_prev).to(loss.dtype)
        loss_prev = loss

        if i + 1 in checkpoints:
            # Condition 1 (the paper writes "<"; the reference uses "<=", which decides ties).
            oscillating = increases <= rho * (i + 1 - last_checkpoint)
            stalled = ~reduced_at_checkpoint & (loss_best <= loss_best_at_checkpoint)
            reduce = oscillating | stalled
            step = torch.where(reduce, step / 2, step)
            # Restart the halved examples from their best point, with its gradient.
            x_adv = torch.where(reduce.view(view), x_best, x_adv)
            grad = torch.where(reduce.view(view), grad_best, grad)
            reduced_at_checkpoint, loss_best_at_checkpoint = reduce, loss_best
            increases = torch.zeros_like(increases)
            last_checkpoint = i + 1
            step_sizes.append(step)

    return APGDRun(x_best, loss_best, x_fooled, fooled, torch.stack(step_sizes))


class APGDBase(Attack):
    """The driver shared by APGD and APGD-T: runs :func:`apgd_run` once per restart (and, for
    APGD-T, per target class), each time only on the points no earlier run has fooled.

    Per example the result is the adversarial point of the first run that fooled the model, as
    in the reference's ``perturb``; a point that no run fooled gets its highest-loss iterate
    (the reference returns ``x`` there: the robust accuracy is the same, and the highest-loss
    point is more useful, e.g. for adversarial training). Points the model already
    misclassifies are returned unchanged. :attr:`info` gets ``"step_size"``: the per-example
    step sizes of every run, (runs, checkpoints + 1, B), NaN where a run skipped the example.
    """

    def __init__(
        self,
        eps: float,
        norm: str,
        steps: int,
        restarts: int,
        eot_iter: int,
        rho: float,
        model_mode: str,
        check_inputs: bool,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        for key, value in (("steps", steps), ("restarts", restarts), ("eot_iter", eot_iter)):
            if value <= 0:
                raise ConfigError(key, value, "must be > 0")
        if not 0 < rho <= 1:
            raise ConfigError("rho", rho, "must be in (0, 1]")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.eot_iter = int(eot_iter)
        self.rho = float(rho)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(x)
        runs = self._runs(logits)
        # Points misclassified from the start are not attacked (they are already adversarial).
        fooled = logits.argmax(1) != y
        view = (-1, *([1] * (x.dim() - 1)))
        x_out = x.clone()
        loss_out = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        n_steps = len(apgd_checkpoints(self.steps)) + 1
        trace = torch.full((len(runs), n_steps, x.shape[0]), float("nan"), device=x.device)
        # With eps = 0 the ball is {x}: every run would return x, so skip them.
        for r, loss_for in enumerate(runs if self.eps > 0 else []):
            # One host sync per run, to attack only the remaining points (as the reference does).
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            run = apgd_run(
                model,
                x[todo],
                y[todo],
                loss_for(todo),
                eps=self.eps,
                ball=self.ball,
                steps=self.steps,
                rho=self.rho,
                eot_iter=self.eot_iter,
            )
            better = ~run.fooled & (run.loss_best > loss_out[todo])
            candidate = torch.where(run.fooled.view(view), run.x_adv, run.x_best)
            keep = (run.fooled | better).view(view)
            x_out[todo] = torch.where(keep, candidate, x_out[todo])
            loss_out[todo] = torch.where(better, run.loss_best, loss_out[todo])
            fooled[todo] = run.fooled
            trace[r][:, todo] = run.step_size.to(trace.dtype)
        self.info["step_size"] = trace
        return x_out

    @abstractmethod
    def _runs(self, logits: torch.Tensor) -> list[LossForRun]:
        """The loss of each run, in order, given the clean logits (which give the number of
        classes, to validate the configuration, and the target classes of APGD-T)."""


@ATTACKS.register("apgd")
class APGD(APGDBase):
    """Auto-PGD, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks" (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690),
    section 3, Algorithm 1: PGD with momentum whose step size starts at ``2 * eps`` and is
    halved, per example, at checkpoints where the loss stops increasing.

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        norm: ``"Linf"`` or ``"L2"``.
        steps: iterations per run (default 100).
        restarts: runs from random starts; later runs attack only the points no earlier run
            fooled (default 1).
        loss: ``"ce"`` (cross-entropy, default; APGD-CE) or ``"dlr"`` (Difference of Logits
            Ratio, eq. 5, needs >= 3 classes; APGD-DLR).
        eot_iter: gradients averaged per iteration, for randomized models (default 1).
        rho: condition 1 halves the step when the loss increased in at most this fraction of
            the iterations since the last checkpoint (default 0.75).
        model_mode: ``"eval"`` (default) or ``"train"``.

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``.

    Example:
        >>> attack = create_attack("apgd", eps=8 / 255, loss="dlr")
        >>> x_adv = attack(model, x, y)
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "Linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        eot_iter: int = 1,
        rho: float = 0.75,
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, steps, restarts, eot_iter, rho, model_mode, check_inputs)
        if loss not in APGD_LOSSES:
            raise ConfigError("loss", loss, f"one of {', '.join(APGD_LOSSES)}")
        self.loss = loss
        self.loss_fn = LOSSES.get(loss)

    def _runs(self, logits: torch.Tensor) -> list[LossForRun]:
        if self.loss == "dlr" and logits.shape[1] < 3:
            raise ConfigError(
                "loss", self.loss, f"DLR needs at least 3 classes; the model has {logits.shape[1]}"
            )
        return [lambda todo: self.loss_fn] * self.restarts


register_preset(
    "apgd-ce",
    APGD,
    """APGD on the cross-entropy loss (APGD-CE, the first attack of AutoAttack); see :class:`APGD`.

    Example:
        >>> attack = create_attack("apgd-ce", eps=8 / 255)
        >>> x_adv = attack(model, x, y)
    """,
    loss="ce",
)
register_preset(
    "apgd-dlr",
    APGD,
    """APGD on the DLR loss (APGD-DLR, eq. 5; needs >= 3 classes); see :class:`APGD`.

    Example:
        >>> attack = create_attack("apgd-dlr", eps=8 / 255)
        >>> x_adv = attack(model, x, y)
    """,
    loss="dlr",
)
