"""Where the adversarial training loss crosses the clean test loss: ε* from a loss table.

Xing, Song & Cheng 2022, section 4: ε* := sup{ε : R̂(θ̂(ε), ε) ≤ R(θ̂(0), 0)}, the largest budget
whose adversarial *training* loss stays at or below the clean model's clean *test* loss. From a
grid (section 5.2, Table 1) it is found by linear interpolation; from a few fine-tuned small
budgets (section 6, Table 4) by linear extrapolation. Pure functions of numbers, so they are
checked on synthetic tables.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# How a search ended: the curve crossed the threshold inside the grid, stayed at or below it
# (ε* lies beyond the grid), or was above it everywhere (ε* lies below the grid's first point).
CROSSED, BELOW_EVERYWHERE, ABOVE_EVERYWHERE, NO_SLOPE = "crossed", "below", "above", "no_slope"


@dataclass(frozen=True)
class Crossing:
    """The estimate of ε* and how it was obtained.

    Attributes:
        eps: ε*, or None when the grid does not contain the crossing.
        status: ``crossed``, ``below`` (the loss never exceeds the threshold: ε* > the grid's
            largest ε), ``above`` (it exceeds it everywhere: ε* < the smallest), or ``no_slope``
            (extrapolation: the fitted loss does not grow with ε).
        bracket: the two budgets the crossing lies between (interpolation), or the range of
            the fitted points (extrapolation).
        message: one sentence saying what was found.
    """

    eps: float | None
    status: str
    bracket: tuple[float, float]
    message: str
    slope: float | None = None
    intercept: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "critical_eps": self.eps,
            "status": self.status,
            "bracket": list(self.bracket),
            "message": self.message,
            **(
                {"slope": self.slope, "intercept": self.intercept} if self.slope is not None else {}
            ),
        }


def _check_table(eps: Sequence[float], losses: Sequence[float]) -> tuple[list[float], list[float]]:
    xs, ys = [float(e) for e in eps], [float(v) for v in losses]
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"need at least two (eps, loss) pairs, got {len(xs)} and {len(ys)}")
    if any(b <= a for a, b in itertools.pairwise(xs)):
        raise ValueError(f"eps must be strictly increasing, got {xs}")
    if not all(math.isfinite(v) for v in ys):
        raise ValueError(f"losses must be finite, got {ys}")
    return xs, ys


def interpolate_crossing(
    eps: Sequence[float], losses: Sequence[float], threshold: float
) -> Crossing:
    """ε* = sup{ε : loss(ε) ≤ threshold}, the loss linear between grid points.

    The supremum: after the *last* grid point at or below the threshold, the loss rises
    through it before the next point; that crossing is returned (a curve that dips below the
    threshold again after exceeding it moves ε* up, as the definition says).

    Args:
        eps: increasing budgets (the clean model's ε = 0 may be the first).
        losses: the adversarial training loss at each.
        threshold: the clean model's clean test loss.
    """
    xs, ys = _check_table(eps, losses)
    at_or_below = [i for i, v in enumerate(ys) if v <= threshold]
    span = (xs[0], xs[-1])
    if not at_or_below:
        return Crossing(
            None,
            ABOVE_EVERYWHERE,
            span,
            f"the adversarial training loss is above the clean test loss {threshold:.4g} at every "
            f"ε of the grid: ε* < {xs[0]:.4g}; add smaller budgets",
        )
    last = at_or_below[-1]
    if last == len(xs) - 1:
        return Crossing(
            None,
            BELOW_EVERYWHERE,
            span,
            f"the adversarial training loss never exceeds the clean test loss {threshold:.4g} in "
            f"the grid: ε* > {xs[-1]:.4g}; add larger budgets",
        )
    x0, x1, y0, y1 = xs[last], xs[last + 1], ys[last], ys[last + 1]
    value = x0 + (threshold - y0) * (x1 - x0) / (y1 - y0)
    return Crossing(
        value,
        CROSSED,
        (x0, x1),
        f"the adversarial training loss crosses the clean test loss {threshold:.4g} between "
        f"ε = {x0:.4g} and {x1:.4g} (linear interpolation)",
    )


def extrapolate_crossing(
    eps: Sequence[float], losses: Sequence[float], threshold: float
) -> Crossing:
    """ε* from a least-squares line through (ε, loss) points at small budgets, extended to where
    it reaches the threshold (Xing et al. section 6: fine-tuning at a few small ε, then linear
    extrapolation)."""
    xs, ys = _check_table(eps, losses)
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    span = (xs[0], xs[-1])
    if not slope > 0:
        return Crossing(
            None,
            NO_SLOPE,
            span,
            f"the fitted adversarial training loss does not grow with ε (slope {slope:.4g}): "
            "no crossing to extrapolate to; fine-tune at larger budgets",
            slope,
            intercept,
        )
    value = (threshold - intercept) / slope
    if value <= 0:
        return Crossing(
            None,
            ABOVE_EVERYWHERE,
            span,
            f"the fitted line is above the clean test loss {threshold:.4g} already at ε = 0 "
            f"(intercept {intercept:.4g}): no ε* > 0",
            slope,
            intercept,
        )
    where = "beyond" if value > xs[-1] else "inside"
    return Crossing(
        value,
        CROSSED,
        span,
        f"the line through the losses at ε in [{xs[0]:.4g}, {xs[-1]:.4g}] reaches the clean test "
        f"loss {threshold:.4g} at ε = {value:.4g} ({where} the fitted range)",
        slope,
        intercept,
    )
