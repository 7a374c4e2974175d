"""Learning-rate schedules as pure functions of training progress in epochs (a float).

The loop sets ``lr = train.lr * factor(τ)`` before every iteration, where τ is the schedule time
of that iteration (see :class:`ScheduleClock`: the epoch count, or with periodic adversarial
scheduling the position within the current period scaled to the whole run). Schedules are thus
stepped per iteration, and a resumed run needs only the iteration count. Every schedule takes
the same settings (``train.milestones``, ``train.gamma``, ``train.cyclic_peak``) and uses those
it needs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from ..registry import Registry

Schedule = Callable[[float], float]
SCHEDULES: Registry[Callable[..., Schedule]] = Registry("schedule", "train.schedule")
# Where the cyclic schedule peaks, as a fraction of the run: 2/5 as fast_adversarial's MNIST
# script (and robust_overfitting's "superconverge"); its CIFAR-10 script peaks at 1/2. The
# default stays 2/5 so runs saved before ``train.cyclic_peak`` existed resume unchanged.
DEFAULT_CYCLIC_PEAK = 0.4


def list_schedules() -> list[str]:
    return SCHEDULES.names()


@SCHEDULES.register("piecewise")
def piecewise(
    epochs: int, milestones: Sequence[float], gamma: float = 0.1, peak: float = DEFAULT_CYCLIC_PEAK
) -> Schedule:
    """Multiply the LR by ``gamma`` at each milestone (Madry et al.; TRADES: ÷10 at 75 and 90 of 100)."""
    bounds = sorted(milestones)

    def factor(t: float) -> float:
        return gamma ** bisect.bisect_right(bounds, t)

    return factor


@SCHEDULES.register("cosine")
def cosine(
    epochs: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    peak: float = DEFAULT_CYCLIC_PEAK,
) -> Schedule:
    """Cosine annealing from the peak LR to 0 over the run (Loshchilov & Hutter 2017, no restarts)."""

    def factor(t: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(t, epochs) / epochs))

    return factor


@SCHEDULES.register("exp_decay")
def exp_decay(
    epochs: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    peak: float = DEFAULT_CYCLIC_PEAK,
) -> Schedule:
    """Wu et al. 2021 (section 5.1, Appendix B): constant, then halve the LR every epoch after
    the decay start — the first milestone, by default 75% of the run (epoch 75 of 100).

    The factor changes once per epoch: epoch index ``d`` (0-based) gets ``0.5 ** (d - start + 1)``
    from ``d = start`` on, so a 100-epoch run trains its 76th epoch at half the LR.
    """
    start = math.floor(milestones[0]) if milestones else math.floor(0.75 * epochs)

    def factor(t: float) -> float:
        epoch = math.floor(t + 1e-9)
        return 1.0 if epoch < start else 0.5 ** (epoch - start + 1)

    return factor


@SCHEDULES.register("exponential")
def exponential(
    epochs: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    peak: float = DEFAULT_CYCLIC_PEAK,
) -> Schedule:
    """Liu et al. 2020 (Appendix C.1, VGG on CIFAR-10 with Adam): constant, then "decreased
    exponentially" by a total factor ``gamma`` between the two milestones, then constant.

    Their VGG runs use ``lr = 1e-3`` decayed to ``1e-4`` between the 100th and the 150th epoch of
    200: ``train.milestones = [100, 150]`` (the default milestones of a 200-epoch run) and
    ``train.gamma = 0.1``. As their code (``util/seq_parser.py``'s exponential sequence clipped
    to [1e-4, 1e-3], updated once per epoch: ``--schedule_update_mode epoch``), the factor
    changes once per epoch: epoch index ``d`` (0-based) trains at
    ``gamma ** clip((d - m0) / (m1 - m0), 0, 1)``.

    Raises:
        ConfigError: the milestones are not two increasing epochs.
    """
    if len(milestones) != 2 or not milestones[0] < milestones[1]:
        raise ConfigError(
            "train.milestones",
            list(milestones),
            "the exponential schedule takes [start, end], two increasing epochs (Liu et al.: [100, 150])",
        )
    start, end = float(milestones[0]), float(milestones[1])

    def factor(t: float) -> float:
        epoch = math.floor(t + 1e-9)
        return gamma ** min(max((epoch - start) / (end - start), 0.0), 1.0)

    return factor


@SCHEDULES.register("cyclic")
def cyclic(
    epochs: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    peak: float = DEFAULT_CYCLIC_PEAK,
) -> Schedule:
    """Wong, Rice & Kolter 2020 (fast adversarial training): linear from 0 up to the peak LR at
    ``peak`` of the run (``train.cyclic_peak``), then linearly back to 0 at its end, per
    iteration. Their MNIST script peaks at 2/5 (``np.interp([t], [0, 2E/5, E], [0, lr_max,
    0])``, the default); their CIFAR-10 script (``CIFAR10/train_fgsm.py``) at 1/2 (``CyclicLR``
    with ``step_size_up = step_size_down`` = half of the iterations)."""
    top = peak * epochs

    def factor(t: float) -> float:
        t = min(max(t, 0.0), float(epochs))
        return t / top if t <= top else (epochs - t) / (epochs - top)

    return factor


def with_warmup(schedule: Schedule, warmup_epochs: float) -> Schedule:
    """Linear warm-up from 0 to the schedule's value over the first ``warmup_epochs``."""
    if warmup_epochs <= 0:
        return schedule

    def factor(t: float) -> float:
        return schedule(t) * min(1.0, t / warmup_epochs)

    return factor


def create_schedule(
    name: str,
    epochs: int,
    milestones: Sequence[float],
    gamma: float,
    warmup_epochs: float = 0.0,
    cyclic_peak: float = DEFAULT_CYCLIC_PEAK,
) -> Schedule:
    """The schedule ``name`` with optional warm-up."""
    schedule = SCHEDULES.create(name, epochs, list(milestones), gamma, cyclic_peak)
    return with_warmup(schedule, warmup_epochs)


class ScheduleClock:
    """Maps training progress ``t`` (epochs, a float) to schedule time τ.

    Without periods τ = t. With periodic adversarial scheduling (Liu et al. 2020, section 5, PAS)
    the run is split at ``periods`` (e.g. ``[100, 150]`` of 200 epochs: 0–100, 100–150, 150–200);
    within each period τ runs over the whole ``[0, epochs]``, so the learning-rate and ε
    schedules restart at every period start and are "scaled proportionally" to its length.
    """

    def __init__(self, epochs: int, periods: Sequence[float] = ()) -> None:
        self.epochs = epochs
        self.bounds = [0.0, *sorted(float(p) for p in periods), float(epochs)]

    def period(self, t: float) -> int:
        """The 0-based index of the period containing ``t``."""
        return min(bisect.bisect_right(self.bounds, t) - 1, len(self.bounds) - 2)

    def tau(self, t: float) -> float:
        k = self.period(t)
        start, end = self.bounds[k], self.bounds[k + 1]
        return (t - start) / (end - start) * self.epochs

    def period_ends(self) -> list[int]:
        """The (1-based) epochs after which a PAS snapshot is kept: each period's end."""
        return [round(b) for b in self.bounds[1:]] if len(self.bounds) > 2 else []
