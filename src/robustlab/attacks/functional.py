"""Pure functions the attacks are made of: losses, projections onto norm balls, step rules.

Everything here is stateless and batched: tensors in, tensors out, no model, no mode changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TargetedLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("attack loss", "attack.loss")
# Targeted losses f(logits, labels, targets), maximized to move points towards their targets.
TARGETED_LOSSES: Registry[TargetedLossFn] = Registry("targeted attack loss", "loss")
THREAT_MODELS: Registry[Callable[[], ThreatModel]] = Registry("norm", "attack.norm")


# ---------------------------------------------------------------------------------------------
# Losses: per-example values (shape B) that an untargeted attack maximizes.


@LOSSES.register("ce")
def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (Madry et al. 2018)."""
    return F.cross_entropy(logits, labels, reduction="none")


@LOSSES.register("cw")
def cw_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (positive once the point is misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


@LOSSES.register("dlr")
def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", eq. 5):
    ``-(z_y - max_{i != y} z_i) / (z_π1 - z_π3)``, with z sorted decreasingly (π). Invariant to
    shifting and rescaling the logits, so it is robust to the logit scaling that fools CE.
    Needs at least 3 classes.
    """
    ordered, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_true = logits.argmax(dim=1) == labels
    best_other = torch.where(top_is_true, ordered[:, 1], ordered[:, 0])
    return -(true - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


@TARGETED_LOSSES.register("dlr")
def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 6): ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``.
    Needs at least 4 classes.
    """
    ordered, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


@TARGETED_LOSSES.register("ce")
def cross_entropy_targeted(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Negative cross-entropy of the target class: maximizing it raises the target's probability."""
    return -F.cross_entropy(logits, targets, reduction="none")


@TARGETED_LOSSES.register("cw")
def cw_margin_targeted(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``z_t - max_{j != t} z_j``: positive once the target class wins."""
    return -cw_margin(logits, targets)


# ---------------------------------------------------------------------------------------------
# Target selection for targeted attacks: f(clean logits, labels) -> target classes (never y).

TARGET_SELECTIONS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry(
    "target selection", "target"
)


@TARGET_SELECTIONS.register("random")
def random_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A class drawn uniformly among the classes other than the label."""
    shift = torch.randint(1, logits.shape[1], labels.shape, device=labels.device)
    return (labels + shift) % logits.shape[1]


@TARGET_SELECTIONS.register("least_likely")
def least_likely_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The class with the lowest clean logit (Kurakin et al. 2017)."""
    return logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("inf")).argmin(dim=1)


@TARGET_SELECTIONS.register("most_likely")
def most_likely_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The most likely class other than the label (the easiest target)."""
    return logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).argmax(
        dim=1
    )


# ---------------------------------------------------------------------------------------------
# Threat models: the ball, a random point in it, the steepest-ascent step, the projection.


def _per_example_norm(x: torch.Tensor, p: float) -> torch.Tensor:
    return x.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """An l_p ball: how to sample in it, step in it, project onto it, and measure distances."""

    name: str
    random_init: Callable[[torch.Tensor, float], torch.Tensor]
    step: Callable[[torch.Tensor, float], torch.Tensor]
    project: Callable[[torch.Tensor, float], torch.Tensor]
    norm: Callable[[torch.Tensor], torch.Tensor]


def linf_random_init(x: torch.Tensor, eps: float) -> torch.Tensor:
    """A perturbation uniform in the L-inf ball."""
    return torch.empty_like(x).uniform_(-eps, eps)


def linf_step(grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """Steepest ascent for L-inf: ``alpha * sign(grad)``."""
    return alpha * grad.sign()


def linf_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto the L-inf ball: clip each coordinate to [-eps, eps]."""
    return delta.clamp(-eps, eps)


def linf_norm(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).abs().amax(dim=1)


def l2_random_init(x: torch.Tensor, eps: float) -> torch.Tensor:
    """A Gaussian direction scaled to a uniform radius in [0, eps] (as torchattacks' PGDL2)."""
    direction = torch.randn_like(x)
    direction = direction / _per_example_norm(direction, 2).clamp_min(1e-12)
    radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return direction * radius * eps


def l2_step(grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """Steepest ascent for L2: ``alpha * grad / ||grad||_2`` per example."""
    return alpha * grad / _per_example_norm(grad, 2).clamp_min(1e-12)


def l2_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto the L2 ball: rescale perturbations longer than eps."""
    norms = _per_example_norm(delta, 2)
    # Points inside the ball stay exactly where they are, however short (a clamp of the norm
    # alone would shrink perturbations shorter than the clamp when eps is tinier still).
    tiny = torch.finfo(norms.dtype).tiny
    return delta * torch.where(norms > eps, eps / norms.clamp_min(tiny), 1.0)


def l2_norm(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(p=2, dim=1)


@THREAT_MODELS.register("Linf")
def linf() -> ThreatModel:
    return ThreatModel("Linf", linf_random_init, linf_step, linf_project, linf_norm)


@THREAT_MODELS.register("L2")
def l2() -> ThreatModel:
    return ThreatModel("L2", l2_random_init, l2_step, l2_project, l2_norm)


def threat_model(norm: str) -> ThreatModel:
    """The :class:`ThreatModel` named ``norm`` (``"Linf"`` or ``"L2"``)."""
    return THREAT_MODELS.create(norm)


def clip_to_ball(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, ball: ThreatModel
) -> torch.Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x``, then onto the image box [0, 1].

    Clipping to the box after the ball projection keeps the point in the ball: for L-inf the two
    constraints are coordinate-wise intervals, and for L2 clipping only shortens the perturbation.
    """
    return (x + ball.project(x_adv - x, eps)).clamp_(0.0, 1.0)
