"""The local Lipschitz estimate of Wu et al. 2021, section 4.1–4.2, eq. (4.1).

The robust regularization is bounded by ε·L with ``L = sup_{x' ∈ B(x, ε)} ||∇_x L(θ; x', y)||_q``
(q the dual of the threat model's p: ℓ1 for L-inf, ℓ2 for L2). The supremum is estimated along
the attack's path: the largest dual-norm input gradient among the PGD steps, per point, then
averaged over a fixed set of points. Wider models show larger values at the same λ.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks import model_mode
from ..attacks.base import input_gradient
from ..attacks.functional import clip_to_ball, cross_entropy, threat_model

DUAL_ORDER = {"Linf": 1, "L2": 2}


def local_lipschitz(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
) -> float:
    """Mean over points of the largest ``||∇_x CE||_q`` met along a PGD path (eval mode).

    The path starts at ``x`` itself, so the clean gradient counts too; each step then follows
    PGD's update. ``x`` in [0, 1]; the model's mode is restored after.
    """
    largest = local_lipschitz_per_point(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm)
    return float(largest.mean()) if len(x) else float("nan")


def local_lipschitz_per_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
) -> torch.Tensor:
    """Per point, the largest ``||∇_x CE||_q`` met along its PGD path (see :func:`local_lipschitz`)."""
    ball = threat_model(norm)
    order = DUAL_ORDER[norm]
    largest = torch.zeros(len(x), device=x.device)
    x_adv = x.detach()
    with model_mode(model, "eval"):
        for step in range(steps + 1):
            grad, _, _ = input_gradient(model, x_adv, y, cross_entropy)
            largest = torch.maximum(largest, grad.flatten(1).norm(p=order, dim=1))
            if step < steps:
                x_adv = clip_to_ball(x_adv + ball.step(grad, alpha), x, eps, ball)
    return largest
