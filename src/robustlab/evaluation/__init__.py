"""Robustness evaluation: natural accuracy, robust accuracy, perturbation stability.

Several attacks run as a worst-case cascade (:mod:`.cascade`); :mod:`.checks` holds the sanity
checks a careful evaluator runs.
"""

from .cascade import STABILITY_LABELS, CascadeState, run_cascade
from .robustness import RobustnessResult, evaluate_robustness, expand_attacks, predict

__all__ = [
    "STABILITY_LABELS",
    "CascadeState",
    "RobustnessResult",
    "evaluate_robustness",
    "expand_attacks",
    "predict",
    "run_cascade",
]
