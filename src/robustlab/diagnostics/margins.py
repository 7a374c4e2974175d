"""Logit margins, gradient-normalized margins and the probability of the true class."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import model_mode
from ..attacks.base import validate_logits
from ..errors import ConfigError
from ._base import (
    DIAGNOSTICS,
    DUAL_ORDER,
    DiagnosticResult,
    as_float,
    batch_slices,
    describe,
    dual_norm,
    histogram,
)
from ._plot import overlaid_histograms, save, split_figure


def logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_y − max_{j≠y} f_j`` per example: positive iff the point is classified correctly."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(dim=1)


@dataclass(repr=False)
class MarginsResult(DiagnosticResult):
    """Per-point margins and confidences.

    Attributes:
        margin: f_y(x) − max_{j≠y} f_j(x).
        gradient_norm: ||∇_x margin||_q, q the dual of ``norm`` (ℓ1 for L-inf, ℓ2 for L2).
        normalized_margin: margin / gradient_norm, the first-order distance to the decision
            boundary in the threat model's norm (``inf`` where the gradient is zero).
        probability: softmax(f(x))_y; ``loss``: CE(f(x), y) = −log probability.
        norm: the threat model whose dual norm normalizes the margins.
        bins: histogram bins in :meth:`summary`.
    """

    margin: torch.Tensor
    gradient_norm: torch.Tensor
    normalized_margin: torch.Tensor
    probability: torch.Tensor
    loss: torch.Tensor
    norm: str
    bins: int = 50

    @property
    def n(self) -> int:
        return int(self.margin.numel())

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "norm": self.norm,
            "margin": describe(self.margin),
            "normalized_margin": describe(self.normalized_margin),
            "probability": describe(self.probability),
            "loss": describe(self.loss),
            "margin_histogram": histogram(self.margin, self.bins),
            "normalized_margin_histogram": histogram(self.normalized_margin, self.bins),
            "probability_histogram": histogram(self.probability, self.bins, (0.0, 1.0)),
            "loss_histogram": histogram(self.loss, self.bins),
        }


def plot_margins(
    result: MarginsResult | Mapping[str, MarginsResult], path: str | Path
) -> Path | None:
    """Histograms of the logit margins, raw and divided by their gradient norm, to ``path`` (PNG).

    Wen, Li & Jia 2020 plot margin distributions to show that adversarial training concentrates
    them near the decision boundary (§4.2.1, Fig. 4; train and test, App. B.3, Fig. 10). Given
    ``{"train": ..., "test": ...}``, the splits are overlaid on shared bins; the dashed line is
    the decision boundary (margin 0). Non-finite normalized margins (zero gradients) are left out.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = split_figure(result, ncols=2, size=(10.0, 4.0))
    if drawn is None:
        return None
    results, first, figure, (raw, normalized) = drawn
    dual = {"Linf": "1", "L2": "2"}.get(first.norm, "q")
    overlaid_histograms(raw, {s: r.margin for s, r in results.items()}, first.bins)
    overlaid_histograms(
        normalized, {s: r.normalized_margin for s, r in results.items()}, first.bins
    )
    raw.set_xlabel(r"logit margin $f_y(x) - \max_{j \neq y} f_j(x)$ (logits)")
    normalized.set_xlabel(
        rf"margin / $\|\nabla_x \mathrm{{margin}}\|_{dual}$ (input units, {first.norm} threat model)"
    )
    for axis in (raw, normalized):
        axis.axvline(0.0, color="black", linestyle="--", linewidth=1)
        axis.set_ylabel("density (share of points per unit)")
    raw.set_title("raw")
    normalized.set_title("distance to the boundary, first order")
    raw.legend()
    compared = " vs ".join(s for s in results if s)
    figure.suptitle(f"Logit margins{': ' + compared if compared else ''} (dashed: boundary)")
    return save(figure, path)


@DIAGNOSTICS.register("margins", data="points", attack=False, plot=plot_margins, plot_splits=True)
def margins(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "Linf",
    batch_size: int = 512,
    bins: int = 50,
) -> MarginsResult:
    """Per-point logit margins, raw and divided by their input-gradient norm, and confidences.

    Wen, Li & Jia 2020 find that adversarial training concentrates the margin distribution
    around the decision boundary (§4.2.1, Fig. 4; per AR strength on train and test, App. B.3,
    Fig. 10) and produces more middle-valued confidences (Fig. 11a, b: histograms of the
    estimated probability and the loss). Per point this returns:

    * the logit margin m(x) = f_y(x) − max_{j≠y} f_j(x) (positive iff correct);
    * m(x) / ||∇_x m(x)||_q with q the dual norm of the threat model (ℓ1 for L-inf, ℓ2 for
      L2): the linearized distance to the boundary in the attack's norm, comparable across
      models whose logits have different scales;
    * the probability of the true class softmax(f(x))_y and the loss −log of it;

    and, in :meth:`MarginsResult.summary`, their distributions (mean, std, quantiles) and
    histograms (counts and bin edges; probabilities on fixed [0, 1] bins).

    Args:
        model: the classifier (evaluated in eval mode; its mode is restored after).
        x: images in [0, 1] (float) or uint8; y: labels.
        norm: ``"Linf"`` or ``"L2"``: the threat model whose dual norm normalizes the margin.
        batch_size: points per forward/backward pass.
        bins: histogram bins.

    Example:
        >>> result = margins(model, x, y, norm="Linf")
        >>> result.margin, result.summary()["probability_histogram"]
    """
    if norm not in DUAL_ORDER:
        raise ConfigError("norm", norm, f"one of {', '.join(DUAL_ORDER)}")
    margin, grad_norm, probability, loss = [], [], [], []
    with model_mode(model, "eval"):
        for part in batch_slices(len(y), batch_size):
            xb = as_float(x[part]).detach().requires_grad_(True)
            yb = y[part]
            logits = model(xb)
            validate_logits(logits, len(yb), yb)
            m = logit_margin(logits.float(), yb)
            # Each point's margin depends on its own input only (eval mode), so the gradient of
            # the sum gives every point's gradient in one backward pass.
            (grad,) = torch.autograd.grad(m.sum(), xb)
            log_p = F.log_softmax(logits.detach().float(), dim=1).gather(1, yb[:, None])[:, 0]
            margin.append(m.detach().cpu())
            grad_norm.append(dual_norm(grad, norm).cpu())
            probability.append(log_p.exp().cpu())
            loss.append((-log_p).cpu())
    margin_t, grad_t = _cat(margin), _cat(grad_norm)
    # A zero gradient (e.g. every ReLU dead) puts the linearized boundary at infinity.
    normalized = torch.where(
        grad_t > 0,
        margin_t / grad_t.clamp_min(torch.finfo(grad_t.dtype).tiny),
        margin_t.sign() * torch.inf,
    )
    return MarginsResult(
        margin=margin_t,
        gradient_norm=grad_t,
        normalized_margin=normalized,
        probability=_cat(probability),
        loss=_cat(loss),
        norm=norm,
        bins=bins,
    )


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)
