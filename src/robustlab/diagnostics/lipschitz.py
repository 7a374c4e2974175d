"""The distribution over points of the local Lipschitz estimate (Wu et al. 2021, §4.1–4.2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..evaluation.lipschitz import local_lipschitz_per_point
from ._base import (
    DIAGNOSTICS,
    DUAL_ORDER,
    DiagnosticResult,
    as_float,
    batch_slices,
    describe,
    histogram,
)
from ._plot import overlaid_histograms, save, split_figure


@dataclass(repr=False)
class LipschitzResult(DiagnosticResult):
    """Per point, the largest dual-norm input gradient of CE met along its PGD path.

    Attributes:
        values: one estimate per point.
        eps, alpha, steps, norm: the path's PGD settings.
        bins: histogram bins in :meth:`summary`.
    """

    values: torch.Tensor
    eps: float
    alpha: float
    steps: int
    norm: str
    bins: int = 50

    def summary(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "norm": self.norm,
            **describe(self.values),
            "histogram": histogram(self.values, self.bins),
        }


def plot_lipschitz(
    result: LipschitzResult | Mapping[str, LipschitzResult], path: str | Path
) -> Path | None:
    """The histogram of the per-point local Lipschitz estimates, per split, to ``path`` (PNG).

    The per-epoch metric is the mean of this distribution (Wu et al. 2021, §4.2, Fig. 4); the
    histogram shows whether a few steep points carry it. Splits are overlaid on shared bins.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = split_figure(result)
    if drawn is None:
        return None
    results, first, figure, (axis,) = drawn
    dual = {"Linf": "1", "L2": "2"}.get(first.norm, "q")
    overlaid_histograms(axis, {s: r.values for s, r in results.items()}, first.bins)
    axis.set_xlabel(
        rf"max $\|\nabla_x \mathrm{{CE}}\|_{dual}$ along the PGD path (loss per input unit)"
    )
    axis.set_ylabel("density (share of points per unit)")
    axis.legend()
    axis.set_title(
        f"Local Lipschitz estimate: {first.norm} ε = {first.eps:.4g}, {first.steps} PGD steps"
    )
    return save(figure, path)


@DIAGNOSTICS.register(
    "lipschitz", data="points", attack=False, plot=plot_lipschitz, plot_splits=True
)
def lipschitz(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "Linf",
    batch_size: int = 512,
    bins: int = 50,
) -> LipschitzResult:
    """Per-point local Lipschitz estimates of the loss and their distribution.

    Wu et al. 2021 ("Do Wider Neural Networks Really Help Adversarial Robustness?", §4.1,
    eq. 4.1) bound the robust regularization by ε·L with
    L = sup_{x' ∈ B(x, ε)} ||∇_x CE(f(x'), y)||_q (q = 1 for L-inf, 2 for L2), and estimate the
    supremum by the largest gradient norm among the PGD steps (§4.2, Fig. 4: "the maximum input
    gradient ℓ1-norm among the 10 attack steps"). robustlab's per-epoch metric averages it over
    points; this keeps every point's value (:func:`robustlab.evaluation.lipschitz.local_lipschitz_per_point`),
    with mean, std, quantiles and a histogram: a few points with steep loss can dominate the mean.

    Args:
        model: the classifier (evaluated in eval mode; its mode is restored after).
        x: images in [0, 1] (float) or uint8; y: labels.
        eps: the ball's radius (default 8/255, Wu et al.'s CIFAR-10 budget).
        alpha: PGD step size (default 2.5·eps/steps, robustlab's PGD default: 2/255 at 8/255).
        steps: PGD steps (default 10, as Wu et al.); the clean point counts as step 0.
        norm: ``"Linf"`` or ``"L2"``.
        batch_size: points per batch.
        bins: histogram bins.

    Example:
        >>> result = lipschitz(model, x, y, eps=8 / 255)
        >>> result.summary()["quantiles"]["0.95"]
    """
    if norm not in DUAL_ORDER:
        raise ConfigError("norm", norm, f"one of {', '.join(DUAL_ORDER)}")
    if steps < 0:
        raise ConfigError("steps", steps, "must be >= 0")
    alpha = 2.5 * eps / steps if alpha is None and steps > 0 else float(alpha or 0.0)
    values = [
        local_lipschitz_per_point(
            model, as_float(x[part]), y[part], eps=eps, alpha=alpha, steps=steps, norm=norm
        ).cpu()
        for part in batch_slices(len(y), batch_size)
    ]
    return LipschitzResult(
        values=torch.cat(values) if values else torch.zeros(0),
        eps=float(eps),
        alpha=alpha,
        steps=int(steps),
        norm=norm,
        bins=bins,
    )
