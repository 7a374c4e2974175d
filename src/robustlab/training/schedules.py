"""Learning-rate schedules as pure functions of training progress in epochs (a float).

The loop sets ``lr = train.lr * factor(epoch + i / iterations_per_epoch)`` before every
iteration, so schedules are stepped per iteration and a resumed run needs only the step count.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from ..registry import Registry

Schedule = Callable[[float], float]
SCHEDULES: Registry[Callable[..., Schedule]] = Registry("schedule", "train.schedule")


def list_schedules() -> list[str]:
    return SCHEDULES.names()


@SCHEDULES.register("piecewise")
def piecewise(epochs: int, milestones: list[float], gamma: float = 0.1) -> Schedule:
    """Multiply the LR by ``gamma`` at each milestone (Madry et al.; TRADES: ÷10 at 75 and 90 of 100)."""
    bounds = sorted(milestones)

    def factor(t: float) -> float:
        return gamma ** bisect.bisect_right(bounds, t)

    return factor


@SCHEDULES.register("cosine")
def cosine(epochs: int, milestones: list[float] | None = None, gamma: float = 0.1) -> Schedule:
    """Cosine annealing from the peak LR to 0 over the run (Loshchilov & Hutter 2017, no restarts)."""

    def factor(t: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))

    return factor


def with_warmup(schedule: Schedule, warmup_epochs: float) -> Schedule:
    """Linear warm-up from 0 to the schedule's value over the first ``warmup_epochs``."""
    if warmup_epochs <= 0:
        return schedule

    def factor(t: float) -> float:
        return schedule(t) * min(1.0, t / warmup_epochs)

    return factor


def create_schedule(
    name: str, epochs: int, milestones: list[float], gamma: float, warmup_epochs: float = 0.0
) -> Schedule:
    """The schedule ``name`` with optional warm-up."""
    return with_warmup(SCHEDULES.create(name, epochs, milestones, gamma), warmup_epochs)
