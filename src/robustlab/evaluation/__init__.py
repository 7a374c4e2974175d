"""Robustness evaluation: natural accuracy, robust accuracy, perturbation stability."""

from .robustness import STABILITY_LABELS, RobustnessResult, evaluate_robustness, predict

__all__ = ["STABILITY_LABELS", "RobustnessResult", "evaluate_robustness", "predict"]
