"""Critical attack strength ε* and the phase transition from clean to adversarial training.

Xing, Song & Cheng 2022 (NeurIPS): adversarial training behaves like clean training while
ε ≪ ε* and departs from it when ε ≫ ε*, with ε* := sup{ε : R̂(θ̂(ε), ε) ≤ R(θ̂(0), 0)}.

* simulators of its section 4 (a registry, ``SIMULATORS``: ``linear``, Theorems 1-2;
  ``two_layer``, Proposition 1) and :func:`simulate` (Figs. 2-3);
* :mod:`.crossing`: ε* from a loss table, by interpolation (Table 1) or extrapolation (Table 4);
* :mod:`.critical` and :mod:`._runs`: the training runs of ``robustlab critical-eps`` (imported
  on demand: they need the training stack);
* :mod:`.linear_threshold`: the budget beyond which a linear classifier's adversarial loss is
  minimized by the zero classifier (Liu et al. 2020, Theorem 1);
* :mod:`.plots`: the figures.
"""

from __future__ import annotations

from . import linear, two_layer  # noqa: F401  (registration)
from ._base import (
    SIMULATORS,
    SimulationResult,
    Simulator,
    check_eps_grid,
    critical_eps,
    default_eps_grid,
    p_values_loss,
    p_values_params,
    simulate,
)
from .linear import LinearRegression, adversarial_squared_loss

__all__ = [
    "SIMULATORS",
    "LinearRegression",
    "SimulationResult",
    "Simulator",
    "adversarial_squared_loss",
    "check_eps_grid",
    "critical_eps",
    "default_eps_grid",
    "p_values_loss",
    "p_values_params",
    "simulate",
]
