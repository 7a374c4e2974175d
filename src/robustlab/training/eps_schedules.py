"""Attack-budget schedules (Liu, Salzmann, Lin, Tomioka, Süsstrunk, NeurIPS 2020, "On the Loss
Landscape of Adversarial Training", section 5, eq. (5)).

Warming the budget up lets training escape the flat initial region a large ε traps it in. Each
schedule maps schedule time τ (epochs; see :class:`~.schedules.ScheduleClock`, which restarts it
for PAS) to ε(τ), clipped to ``[0, ε_target]``; with ``ε_min <= 0 < ε_target < ε_max`` the budget
rises from 0 to the target and then stays there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..registry import Registry

EpsSchedule = Callable[[float], float]
EPS_SCHEDULES: Registry[Callable[..., EpsSchedule]] = Registry(
    "eps schedule", "attack.eps_schedule"
)


def _clipped(value: float, target: float) -> float:
    return min(max(value, 0.0), target)


@EPS_SCHEDULES.register("constant")
def constant(target: float, eps_min: float, eps_max: float, period: float) -> EpsSchedule:
    """ε = ε_target throughout (vanilla adversarial training)."""
    return lambda tau: target


@EPS_SCHEDULES.register("linear")
def linear(target: float, eps_min: float, eps_max: float, period: float) -> EpsSchedule:
    """eq. (5): ``ε_lin(d) = (ε_max − ε_min)·d/D + ε_min``, clipped to [0, ε_target]."""
    return lambda tau: _clipped((eps_max - eps_min) * min(tau, period) / period + eps_min, target)


@EPS_SCHEDULES.register("cosine")
def cosine(target: float, eps_min: float, eps_max: float, period: float) -> EpsSchedule:
    """eq. (5): ``ε_cos(d) = ½(1 − cos(π d / D))(ε_max − ε_min) + ε_min``, clipped to [0, ε_target]
    (held at its d = D value after the warm-up period D)."""
    return lambda tau: _clipped(
        0.5 * (1 - math.cos(math.pi * min(tau, period) / period)) * (eps_max - eps_min) + eps_min,
        target,
    )


def create_eps_schedule(
    name: str, target: float, eps_min: float, eps_max: float, period: float
) -> EpsSchedule:
    return EPS_SCHEDULES.create(name, target, eps_min, eps_max, period)


def list_eps_schedules() -> list[str]:
    return EPS_SCHEDULES.names()
