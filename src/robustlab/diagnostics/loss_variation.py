"""Loss variation inside the ε-ball: max_{||δ|| ≤ ε} L(x + δ) − L(x), estimated by PGD."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import create_attack, model_mode
from ..attacks.functional import LOSSES
from ..errors import ConfigError
from ._base import DIAGNOSTICS, DiagnosticResult, as_float, batch_slices, describe
from ._plot import save, split_colour, split_figure, split_label

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Wen et al. 2020, App. B.5, Table 1: ε = 1, 2, 4 (in pixel units of 1/255).
DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255)


@dataclass(repr=False)
class LossVariationResult(DiagnosticResult):
    """Per ε and point, the largest loss increase PGD found in the ball.

    Attributes:
        eps: the radii, in order.
        variation: ``(len(eps), n)``: max(L(x_adv) − L(x), 0) per radius and point.
        clean_loss: L(x) per point.
        norm, steps, restarts, loss: the estimate's settings.
    """

    eps: list[float]
    variation: torch.Tensor
    clean_loss: torch.Tensor
    norm: str
    steps: int
    restarts: int
    loss: str

    @property
    def mean(self) -> list[float]:
        return [float(v.double().mean()) if v.numel() else float("nan") for v in self.variation]

    @property
    def std(self) -> list[float]:
        return [
            float(v.double().std(correction=0)) if v.numel() else float("nan")
            for v in self.variation
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "eps": list(self.eps),
            "mean": self.mean,
            "std": self.std,
            "n": int(self.clean_loss.numel()),
            "norm": self.norm,
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss,
            "clean_loss": describe(self.clean_loss),
            "per_eps": [
                {"eps": e, **describe(v)} for e, v in zip(self.eps, self.variation, strict=True)
            ],
        }


def plot_loss_variation(
    result: LossVariationResult | Mapping[str, LossVariationResult], path: str | Path
) -> Path | None:
    """Mean ± std over points of the loss variation against ε, per split, to ``path`` (PNG).

    Wen, Li & Jia 2020, App. B.5, Fig. 8 and Table 1: both the mean and the spread of the loss
    increase inside the ball fall as adversarial robustness grows. L-inf radii are shown in
    units of 1/255.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = split_figure(result)
    if drawn is None:
        return None
    results, first, figure, (axis,) = drawn
    scale, unit = (255.0, " (×1/255)") if first.norm == "Linf" else (1.0, "")
    span = scale * (max(first.eps) - min(first.eps)) if len(first.eps) > 1 else scale * first.eps[0]
    for index, (split, r) in enumerate(results.items()):
        # A small sideways shift keeps the error bars of the splits apart.
        shift = (index - (len(results) - 1) / 2) * 0.015 * (span or 1.0)
        axis.errorbar(
            [scale * e + shift for e in r.eps],
            r.mean,
            yerr=r.std,
            marker="o",
            capsize=4,
            color=split_colour(split, index),
            label=split_label(split, int(r.clean_loss.numel())),
        )
    axis.set_xticks([scale * e for e in first.eps], [f"{scale * e:.3g}" for e in first.eps])
    axis.set_xlabel(f"ε{unit}, {first.norm}")
    axis.set_ylabel(f"max loss increase in the ball ({first.loss.upper()}, nats)")
    axis.set_ylim(bottom=0)
    axis.legend()
    axis.set_title(
        f"Loss variation, PGD-{first.steps}"
        + (f" x {first.restarts}" if first.restarts > 1 else "")
        + ": mean ± std over points"
    )
    return save(figure, path)


@DIAGNOSTICS.register(
    "loss_variation", data="points", attack=False, plot=plot_loss_variation, plot_splits=True
)
def loss_variation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: Sequence[float] | float = DEFAULT_EPS,
    norm: str = "Linf",
    steps: int = 10,
    alpha: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str | LossFn = "ce",
    batch_size: int = 512,
) -> LossVariationResult:
    """Mean and std over points of the maximal loss variation max_{||δ|| ≤ ε} L(x + δ) − L(x).

    Wen, Li & Jia 2020 (App. B.5, Fig. 8, Table 1) measure the smoothing effect of adversarial
    training this way: for each ε (1, 2, 4 /255 in the L-inf norm) they generate adversarial
    examples for all test points and report the mean ± std of the loss change; both fall as
    adversarial robustness grows. The maximum is estimated by robustlab's PGD on the loss itself,
    from ``restarts`` random starts (the largest per point is kept), and the clean point is a
    candidate too (δ = 0 is in the ball), so each estimate is a lower bound of the maximum in
    [0, max]. The ball is intersected with the image box [0, 1], as for every attack.

    Args:
        model: the classifier (evaluated in eval mode; its mode is restored after).
        x: images in [0, 1] (float) or uint8; y: labels.
        eps: the radii (default 1/255, 2/255, 4/255: Table 1), or one radius.
        norm: ``"Linf"`` (Wen et al.) or ``"L2"``.
        steps: PGD steps per radius (default 10).
        alpha: PGD step size (default per radius 2.5·ε/steps, PGD's default).
        restarts: independent PGD runs per radius; the largest variation per point is kept.
        random_start: start each run at a random point of the ball (PGD's default).
        loss: the loss L(logits, y) -> per-point values that is maximized and measured: a
            registered attack loss name (``"ce"``, default; ``"cw"``, ``"dlr"``) or a callable.
        batch_size: points per batch.

    Example:
        >>> result = loss_variation(model, x, y)
        >>> result.mean, result.std  # one entry per ε
    """
    eps_list = [float(eps)] if isinstance(eps, int | float) else [float(e) for e in eps]
    if not eps_list or any(not e >= 0 for e in eps_list):
        raise ConfigError("eps", eps_list, "a non-empty list of radii >= 0")
    if restarts < 1:
        raise ConfigError("restarts", restarts, "must be >= 1")
    loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
    attacks = []
    for e in eps_list:
        attack = create_attack(
            "pgd",
            eps=e,
            norm=norm,
            steps=steps,
            alpha=alpha,
            random_start=random_start,
            loss=loss if isinstance(loss, str) else "ce",
        )
        # PGD ascends ``attack.loss_fn``; a custom loss replaces it, so the attack maximizes
        # exactly the loss that is measured.
        attack.loss_fn = loss_fn
        attacks.append(attack)
    variation = torch.zeros(len(eps_list), len(y))
    clean = torch.zeros(len(y))
    with model_mode(model, "eval"):
        for part in batch_slices(len(y), batch_size):
            xb, yb = as_float(x[part]), y[part]
            with torch.no_grad():
                clean_b = loss_fn(model(xb).float(), yb)
            clean[part] = clean_b.cpu()
            for i, attack in enumerate(attacks):
                best = torch.zeros_like(clean_b)  # δ = 0: the clean point is in the ball
                for _ in range(restarts):
                    x_adv = attack(model, xb, yb)
                    with torch.no_grad():
                        best = torch.maximum(best, loss_fn(model(x_adv).float(), yb) - clean_b)
                variation[i, part] = best.cpu()
    return LossVariationResult(
        eps=eps_list,
        variation=variation,
        clean_loss=clean,
        norm=norm,
        steps=int(steps),
        restarts=int(restarts),
        loss=loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
    )
