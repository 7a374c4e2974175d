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

Losses, next to the accuracies: the natural loss is the mean CE(f(x), y), and the robust
(adversarial) loss the mean CE(f(x_adv), y) against the *true* label y, where x_adv is the
adversarial example the evaluation keeps per point (what ``keep_adv`` returns): the first that
changed the prediction, else the last attack's output. Both come from logits the evaluation
computes anyway. With predicted-label attacks a misclassified point's x_adv was pushed away from
its wrong predicted label (not up the loss of y), so the robust loss is the loss at the
evaluation's own adversarial examples, not a separate maximization of CE(·, y).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, model_mode
from ..attacks.base import check_labels, check_unit_range
from ..errors import AttackInputError, ConfigError
from .cascade import STABILITY_LABELS, CascadeState, run_cascade

__all__ = [
    "STABILITY_LABELS",
    "RobustnessResult",
    "check_points",
    "evaluate_robustness",
    "expand_attacks",
    "predict",
]


@dataclass
class RobustnessResult:
    """Per-example flags and their averages.

    Attributes:
        correct: f(x) == y.
        stable: f(x_adv) == f(x) under every attack.
        robust: f(x) == y and f(x_adv) == y under every attack.
        perturbation_norm: the norm of x_adv - x per example (in the attacks' norm).
        seconds: wall time of the evaluation.
        per_attack: robust accuracy after each attack of the cascade (cumulative worst case).
        per_attack_stability: perturbation stability after each attack.
        queries: forward passes spent per example by black-box attacks.
        x_adv: the adversarial examples, when kept.
        nat_loss: CE(f(x), y) per example (true labels).
        adv_loss: CE(f(x_adv), y) per example (true labels), at the adversarial example kept
            for it (``x_adv``: the first that changed the prediction, else the last attack's
            output), whatever ``stability_labels`` the attacks pushed away from.
        flags: sanity warnings (see :mod:`robustlab.evaluation.checks`).
    """

    correct: torch.Tensor
    stable: torch.Tensor
    robust: torch.Tensor
    perturbation_norm: torch.Tensor
    seconds: float
    attack: str = ""
    per_attack: dict[str, float] = field(default_factory=dict)
    per_attack_stability: dict[str, float] = field(default_factory=dict)
    attack_seconds: dict[str, float] = field(default_factory=dict)
    queries: torch.Tensor | None = None
    x_adv: torch.Tensor | None = None
    adv_prediction: torch.Tensor | None = None
    nat_loss: torch.Tensor | None = None
    adv_loss: torch.Tensor | None = None
    flags: list[dict[str, str]] = field(default_factory=list)

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

    @property
    def natural_loss(self) -> float | None:
        """Mean CE(f(x), y); ``None`` when not recorded (a cascade state from before losses)."""
        return _mean_loss(self.nat_loss)

    @property
    def robust_loss(self) -> float | None:
        """Mean CE(f(x_adv), y) at the kept adversarial examples (see :attr:`adv_loss`)."""
        return _mean_loss(self.adv_loss)

    def __repr__(self) -> str:
        """The numbers, not the per-example tensors (the dataclass default printed every
        flag, norm and adversarial pixel: thousands of values)."""
        summary = self.summary()
        parts = [
            f"n={self.n}",
            f"attack={self.attack!r}" if self.attack else "",
            f"natural_accuracy={self.natural_accuracy:.4f}",
            f"robust_accuracy={self.robust_accuracy:.4f}",
            f"perturbation_stability={self.perturbation_stability:.4f}",
            f"natural_loss={self.natural_loss:.4g}" if self.natural_loss is not None else "",
            f"robust_loss={self.robust_loss:.4g}" if self.robust_loss is not None else "",
            f"per_attack={{{', '.join(f'{k!r}: {v:.4f}' for k, v in self.per_attack.items())}}}"
            if len(self.per_attack) > 1
            else "",
            f"mean_perturbation_norm={summary['mean_perturbation_norm']:.4g}",
            f"max_perturbation_norm={summary['max_perturbation_norm']:.4g}",
            f"seconds={self.seconds:.3g}",
            f"flags={[flag.get('code') for flag in self.flags]}" if self.flags else "",
            f"x_adv=<tensor of shape {tuple(self.x_adv.shape)}>" if self.x_adv is not None else "",
        ]
        return f"{type(self).__name__}({', '.join(part for part in parts if part)})"

    def summary(self) -> dict[str, Any]:
        """The JSON-ready numbers (accuracies as fractions in [0, 1]; losses as mean CE in nats,
        ``None`` when not recorded)."""
        # float64: a float32 mean of n equal norms can round above their max (0.1 repeated
        # exceeds 0.1 after summation); in float64 a mean of float32 values never does.
        norms = self.perturbation_norm.double()
        summary = {
            "natural_accuracy": self.natural_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "perturbation_stability": self.perturbation_stability,
            "natural_loss": self.natural_loss,
            "robust_loss": self.robust_loss,
            "n": self.n,
            "mean_perturbation_norm": float(norms.mean()) if norms.numel() else 0.0,
            "max_perturbation_norm": float(norms.max()) if norms.numel() else 0.0,
            "seconds": self.seconds,
            "per_attack": dict(self.per_attack),
            "per_attack_stability": dict(self.per_attack_stability),
            "attack_seconds": dict(self.attack_seconds),
            "flags": list(self.flags),
        }
        if self.queries is not None and bool((self.queries > 0).any()):
            used = self.queries[self.queries > 0].float()
            summary["queries"] = {
                "mean": float(used.mean()),
                "median": float(used.median()),
                "max": int(used.max()),
                "total": int(used.sum()),
            }
        return summary


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else float("nan")


def _mean_loss(losses: torch.Tensor | None) -> float | None:
    """The mean in float64 (a float32 sum over 10,000 losses loses digits); ``None`` if absent."""
    if losses is None:
        return None
    return float(losses.double().mean()) if losses.numel() else float("nan")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels."""
    return model(x).argmax(dim=1)


def expand_attacks(attack: Attack | Mapping[str, Attack] | Sequence[Attack]) -> dict[str, Attack]:
    """The cascade stages of ``attack``: an ensemble (AutoAttack) contributes its components."""
    if isinstance(attack, Mapping):
        items = list(attack.items())
    elif isinstance(attack, Attack):
        items = [(attack.name, attack)]
    else:
        items = [(a.name, a) for a in attack]
    stages: dict[str, Attack] = {}
    for name, member in items:
        components = getattr(member, "components", None)
        for stage_name, stage in components.items() if components else [(name, member)]:
            unique, k = stage_name, 2
            while unique in stages:  # the same attack twice in a custom list
                unique, k = f"{stage_name}#{k}", k + 1
            stages[unique] = stage
    return stages


def check_points(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse points an evaluation cannot mean anything on, before any work (and before a
    state file is written): no points, images and labels of different lengths, images that are
    neither uint8 nor floating point in [0, 1] (NaN included), labels that are not integers or
    are negative. Labels beyond the model's classes are caught at its first output.

    Raises:
        AttackInputError: naming what is wrong and what is allowed.
    """
    if images.dim() < 2 or labels.dim() != 1 or len(images) != len(labels):
        raise AttackInputError(
            f"expected N images and N labels (labels of shape (N,)), got {len(images)} images "
            f"of shape {tuple(images.shape)} and {labels.numel()} labels of shape {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise AttackInputError("no points to evaluate: images and labels are empty (N = 0)")
    check_labels(labels)
    if images.dtype == torch.uint8:
        return  # 0..255, mapped to [0, 1] per batch
    if not images.is_floating_point():
        raise AttackInputError(
            f"images must be uint8 (0..255) or floating point in [0, 1], got dtype {images.dtype}"
        )
    check_unit_range(images)


def evaluate_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Attack | Mapping[str, Attack] | Sequence[Attack],
    *,
    batch_size: int = 512,
    stability_labels: str = "predicted",
    progress: Callable[[int], None] | None = None,
    keep_adv: bool = False,
    state_path: str | Path | None = None,
    seed: int | None = None,
) -> RobustnessResult:
    """Attack every point and report natural accuracy, robust accuracy, stability and the mean
    natural and adversarial CE (see the module docstring for which examples the latter is at).

    Several attacks (a list, a name -> attack mapping, or an ensemble such as AutoAttack) run
    as a worst-case cascade: each only on the points still stable (see :mod:`.cascade`).

    Args:
        model: the classifier (any mode; it is evaluated in eval mode and restored after).
        images: uint8 images (mapped to [0, 1] per batch) or float images in [0, 1].
        labels: true labels.
        attack: the attack(s) (their common budget defines the ball).
        batch_size: points per batch.
        stability_labels: ``"predicted"`` (exact eq. 3.1) or ``"true"`` (the published variant).
        progress: optional callable advanced per attacked batch (see
            :func:`~robustlab.evaluation.cascade.run_cascade`); a
            :class:`~robustlab.progress.StageProgress` such as a progress bar is also told which
            attack runs and pulsed at each model call.
        keep_adv: keep the adversarial examples in the result (``x_adv``).
        state_path: save the cascade state there as it progresses, and resume from it if it
            exists (long evaluations survive a crash). The state records fingerprints of the
            model and the data, the attacks' settings and ``seed``; resuming it for anything
            else raises :class:`~robustlab.errors.RunError`.
        seed: the seed of the attacks' randomness, recorded in the state (the caller seeds).

    Raises:
        AttackInputError: no points, images outside [0, 1] or NaN, labels that are not
            integers in [0, classes) (:func:`check_points`; the model's first output).
        ConfigError: ``batch_size`` < 1.
    """
    check_points(images, labels)
    labels = labels.long()  # any integer dtype is accepted; the losses take int64 targets
    if batch_size <= 0:
        raise ConfigError("batch_size", batch_size, "must be > 0")
    stages = expand_attacks(attack)
    start = time.perf_counter()
    state = None
    if state_path is not None and Path(state_path).exists():
        state = CascadeState.load(state_path, device=labels.device)
    with model_mode(model, "eval"):
        state = run_cascade(
            model,
            images,
            labels,
            stages,
            batch_size=batch_size,
            stability_labels=stability_labels,
            keep_adv=keep_adv,
            state=state,
            state_path=state_path,
            progress=progress,
            seed=seed,
        )
    return RobustnessResult(
        correct=state.correct.cpu(),
        stable=state.stable.cpu(),
        robust=state.robust.cpu(),
        perturbation_norm=state.perturbation_norm.cpu(),
        seconds=time.perf_counter() - start,
        attack=",".join(stages),
        per_attack=dict(state.per_attack),
        per_attack_stability=dict(state.per_attack_stability),
        attack_seconds=dict(state.seconds),
        queries=state.queries.cpu(),
        x_adv=None if state.x_adv is None else state.x_adv.cpu(),
        adv_prediction=state.adv_prediction.cpu(),
        nat_loss=None if state.nat_loss is None else state.nat_loss.cpu(),
        adv_loss=None if state.adv_loss is None else state.adv_loss.cpu(),
    )
