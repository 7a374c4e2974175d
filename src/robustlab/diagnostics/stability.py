"""Stability split: robust / correct-but-unstable / stable-but-wrong / neither, under one attack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import Attack
from ..evaluation import evaluate_robustness
from ._base import DIAGNOSTICS, DiagnosticResult
from ._plot import CATEGORY_COLOURS, by_split, new_figure, save, split_label

SPLIT = ("robust", "correct_unstable", "stable_wrong", "neither")


@dataclass(repr=False)
class StabilityResult(DiagnosticResult):
    """Per-point correctness and stability, and the four-way split they make.

    Attributes:
        correct: f(x) == y per point.
        stable: f(x_adv) == f(x) per point (no attack of the cascade changed the prediction).
        attack: the attack(s), as evaluated (cascade stage names joined by commas).
        stability_labels: which label the attacks pushed away from (``"predicted"`` or ``"true"``).
    """

    correct: torch.Tensor
    stable: torch.Tensor
    attack: str
    stability_labels: str

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def robust(self) -> torch.Tensor:
        """Correct and stable: Wu et al. 2021, eq. (3.1)."""
        return self.correct & self.stable

    def masks(self) -> dict[str, torch.Tensor]:
        """The four disjoint groups, in the order of :data:`SPLIT`."""
        c, s = self.correct, self.stable
        return {
            "robust": c & s,
            "correct_unstable": c & ~s,
            "stable_wrong": ~c & s,
            "neither": ~c & ~s,
        }

    def counts(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.masks().items()}

    @property
    def conditional_robust_accuracy(self) -> float:
        """Robust among the originally correct points (Wen et al. 2020, App. D.2, "PGD" rows of
        Tables 3–6: "we only consider clean examples classified correctly originally")."""
        correct = int(self.correct.sum())
        return int(self.robust.sum()) / correct if correct else float("nan")

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        n = self.n

        def share(count: int) -> float:
            return count / n if n else float("nan")

        return {
            "n": n,
            "attack": self.attack,
            "stability_labels": self.stability_labels,
            "counts": counts,
            "fractions": {name: share(count) for name, count in counts.items()},
            "natural_accuracy": share(counts["robust"] + counts["correct_unstable"]),
            "robust_accuracy": share(counts["robust"]),
            "perturbation_stability": share(counts["robust"] + counts["stable_wrong"]),
            "conditional_robust_accuracy": self.conditional_robust_accuracy,
        }


def plot_stability(
    result: StabilityResult | Mapping[str, StabilityResult], path: str | Path
) -> Path | None:
    """The four-way split as one stacked bar per split of points, to ``path`` (PNG).

    Bars read left to right: robust, correct-but-unstable, stable-but-wrong, neither (shares of
    the points, in %); natural accuracy is the first two, perturbation stability the first and
    third. The title gives the conditional robust accuracy (robust among the correct, Wen et al.
    2020, App. D.2).

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    results = by_split(result)
    drawn = new_figure(size=(6.0, 1.6 + 0.7 * len(results)))
    if drawn is None:
        return None
    figure, (axis,) = drawn
    names = list(results)
    labels = [split_label(s, r.n) for s, r in results.items()]
    left = [0.0] * len(names)
    for group, colour in zip(SPLIT, CATEGORY_COLOURS, strict=False):
        shares = [100 * r.counts()[group] / r.n if r.n else 0.0 for r in results.values()]
        bars = axis.barh(labels, shares, left=left, color=colour, label=group.replace("_", "-"))
        axis.bar_label(
            bars, labels=[f"{s:.0f}%" if s >= 6 else "" for s in shares], label_type="center"
        )
        left = [a + b for a, b in zip(left, shares, strict=True)]
    axis.set_xlim(0, 100)
    axis.set_xlabel("share of points (%)")
    axis.invert_yaxis()
    axis.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    conditional = ", ".join(
        f"{s or 'all'} {100 * r.conditional_robust_accuracy:.1f}%" for s, r in results.items()
    )
    first = next(iter(results.values()))
    figure.suptitle(
        f"Stability under {first.attack}; robust among correct: {conditional}", fontsize=10
    )
    return save(figure, path)


@DIAGNOSTICS.register(
    "stability", data="points", attack=True, plot=plot_stability, plot_splits=True
)
def stability(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: Attack | Mapping[str, Attack] | Sequence[Attack],
    batch_size: int = 512,
    stability_labels: str = "predicted",
) -> StabilityResult:
    """Split the points into robust, correct-but-unstable, stable-but-wrong and neither.

    A point is *correct* when f(x) = y and *stable* when the attack does not change its
    prediction, f(x_adv) = f(x); robust = correct and stable (Wu et al. 2021, eq. 3.1). The
    split separates the two ways to lose robust accuracy: correct points the attack flips
    (``correct_unstable``) and misclassified points (``stable_wrong`` when the attack cannot
    move them either). Also reports the *conditional* robust accuracy, robust among the
    originally correct points, the "PGD" rows of Wen, Li & Jia 2020 (App. D.2, Tables 3–6).

    This is :func:`robustlab.evaluation.evaluate_robustness`'s per-point flags, regrouped: the
    same cascade (an ensemble such as AutoAttack runs each stage only on points still stable).

    Args:
        model: the classifier (evaluated in eval mode; its mode is restored after).
        x: images in [0, 1] (float) or uint8; y: labels.
        attack: a robustlab attack (``create_attack(...)``), a list or an ensemble.
        batch_size: points per attack call.
        stability_labels: ``"predicted"`` (default; exact stability, Wu et al. eq. 3.1) or
            ``"true"`` (the published variant: misclassified points are not attacked, so they
            all land in ``stable_wrong``).

    Example:
        >>> result = stability(model, x, y, attack=create_attack("pgd", eps=8 / 255))
        >>> result.counts(), result.conditional_robust_accuracy
    """
    evaluated = evaluate_robustness(
        model, x, y, attack, batch_size=batch_size, stability_labels=stability_labels
    )
    return StabilityResult(
        correct=evaluated.correct,
        stable=evaluated.stable,
        attack=evaluated.attack,
        stability_labels=stability_labels,
    )
