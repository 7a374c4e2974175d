"""Natural accuracy, robust accuracy and perturbation stability of a model under an attack.

Wu et al. 2021 ("Do Wider Neural Networks Really Help Adversarial Robustness?", eq. 3.1):
robust examples = correctly classified examples AND stable examples, where a point is *stable*
when no perturbation in the ball changes the model's prediction f(x). Perturbation stability is
the share of stable points.

Stability is measured by attacking each point's *predicted* label (maximizing the loss of f(x)'s
own prediction). For correctly classified points this is exactly the robust-accuracy attack, so
``robust = correct and stable`` holds point by point. Attacking the true label instead (the
``"true"`` option, for comparing with published numbers) does not try to move misclassified
points, so it counts them as stable and inflates the metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, model_mode
from ..errors import ConfigError

STABILITY_LABELS = ("predicted", "true")


@dataclass
class RobustnessResult:
    """Per-example flags and their averages.

    Attributes:
        correct: f(x) == y.
        stable: f(x_adv) == f(x).
        robust: f(x) == y and f(x_adv) == y.
        perturbation_norm: the norm of x_adv - x per example (in the attack's norm).
        seconds: wall time of the evaluation.
    """

    correct: torch.Tensor
    stable: torch.Tensor
    robust: torch.Tensor
    perturbation_norm: torch.Tensor
    seconds: float
    attack: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def natural_accuracy(self) -> float:
        return _mean(self.correct)

    @property
    def robust_accuracy(self) -> float:
        return _mean(self.robust)

    @property
    def perturbation_stability(self) -> float:
        return _mean(self.stable)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready numbers (accuracies as fractions in [0, 1])."""
        norms = self.perturbation_norm.float()
        return {
            "natural_accuracy": self.natural_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "perturbation_stability": self.perturbation_stability,
            "n": self.n,
            "mean_perturbation_norm": float(norms.mean()) if norms.numel() else 0.0,
            "max_perturbation_norm": float(norms.max()) if norms.numel() else 0.0,
            "seconds": self.seconds,
            **self.extra,
        }


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else float("nan")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels."""
    return model(x).argmax(dim=1)


def evaluate_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Attack,
    *,
    batch_size: int = 512,
    stability_labels: str = "predicted",
    progress: Any = None,
) -> RobustnessResult:
    """Attack every point and report natural accuracy, robust accuracy and stability.

    Args:
        model: the classifier (any mode; it is evaluated in eval mode and restored after).
        images: uint8 images (mapped to [0, 1] per batch) or float images in [0, 1].
        labels: true labels.
        attack: the attack (its budget defines the ball).
        batch_size: points per batch.
        stability_labels: ``"predicted"`` (exact eq. 3.1) or ``"true"`` (the published variant).
        progress: optional callable advanced by one per batch.
    """
    if stability_labels not in STABILITY_LABELS:
        raise ConfigError(
            "eval.stability_labels", stability_labels, f"one of {', '.join(STABILITY_LABELS)}"
        )
    start = time.perf_counter()
    empty = torch.zeros(0, dtype=torch.bool, device=labels.device)
    correct, stable, robust, norms = [empty], [empty], [empty], [empty.float()]
    with model_mode(model, "eval"):
        for begin in range(0, len(labels), batch_size):
            x = images[begin : begin + batch_size]
            x = x.float().div(255) if x.dtype == torch.uint8 else x
            y = labels[begin : begin + batch_size]
            prediction = predict(model, x)
            target = prediction if stability_labels == "predicted" else y
            x_adv = attack(model, x, target)
            adv_prediction = predict(model, x_adv)
            is_correct = prediction == y
            correct.append(is_correct)
            stable.append(adv_prediction == prediction)
            # A misclassified point is never robust: x itself is in the ball.
            robust.append(is_correct & (adv_prediction == y))
            norms.append(attack.ball.norm(x_adv - x))
            if progress is not None:
                progress(1)
    return RobustnessResult(
        correct=torch.cat(correct).cpu(),
        stable=torch.cat(stable).cpu(),
        robust=torch.cat(robust).cpu(),
        perturbation_norm=torch.cat(norms).cpu(),
        seconds=time.perf_counter() - start,
        attack=repr(attack),
    )
