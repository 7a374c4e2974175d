"""Liu et al. 2020 Theorem 1: the budget beyond which the zero classifier minimizes a linear
model's adversarial cross-entropy, by bisection, against a brute-force scan of the loss."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from robustlab.cli.main import main
from robustlab.phase.linear_threshold import (
    adversarial_cross_entropy_at,
    linf_threshold,
    zero_classifier_threshold,
    zero_is_optimal,
)

K, DIM = 3, 2


def _tiny_problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (9, DIM))
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 1])  # unbalanced on purpose
    return x, y


def _perturbations(norm: str) -> np.ndarray:
    """The candidates of the inner maximum: CE is convex in δ, so its maximum over the ball is
    at a corner of the box (L∞) or on the circle (L2, sampled densely)."""
    if norm == "Linf":
        return np.array(list(itertools.product([-1.0, 1.0], repeat=DIM)))
    angles = np.linspace(0, 2 * np.pi, 181)[:-1]
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _directions() -> np.ndarray:
    """Every direction with entries in {-1, 0, 1} (where the L∞ worst cases lie) plus random ones."""
    lattice = np.array(list(itertools.product([-1.0, 0.0, 1.0], repeat=DIM * K)))
    random = np.random.default_rng(2).standard_normal((100, DIM * K))
    return np.concatenate([lattice[1:], random]).reshape(-1, DIM, K)


def _zero_optimal_by_brute_force(x, y, eps: float, norm: str, directions) -> bool:
    """0 minimizes the convex loss iff no direction decreases it: L_ε(γD) >= log K for a small γ
    (the loss of every direction at once; :func:`adversarial_cross_entropy_at` for one)."""
    deltas = eps * _perturbations(norm)
    gamma = 1e-4
    points = x[:, None, :] + deltas[None]  # (N, C, dim)
    flat = points.reshape(-1, DIM) @ (gamma * directions).transpose(1, 0, 2).reshape(DIM, -1)
    logits = flat.reshape(*points.shape[:2], len(directions), K)  # (N, C, S, K)
    top = logits.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))
    true = np.take_along_axis(logits, y[:, None, None, None], axis=-1)[..., 0]
    losses = (lse - true).max(axis=1).mean(axis=0)  # worst δ per point, mean over points
    assert losses[0] == pytest.approx(
        adversarial_cross_entropy_at(gamma * directions[0], x, y, deltas), rel=1e-12
    )
    return bool(losses.min() >= np.log(K) - 1e-12)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_bisection_matches_a_brute_force_scan(norm: str) -> None:
    x, y = _tiny_problem()
    result = zero_classifier_threshold(x, y, norm)
    directions = _directions()
    grid = result.threshold * np.array([0.9, 0.975, 1.0, 1.025, 1.1])
    scan = [_zero_optimal_by_brute_force(x, y, e, norm, directions) for e in grid]
    # monotone (Theorem 1), and switching where the bisection says, within 2.5%
    assert scan == [False, False, True, True, True], (norm, result.threshold)


def test_linf_bisection_reaches_the_closed_form() -> None:
    x, y = _tiny_problem()
    result = zero_classifier_threshold(x, y, "Linf", tolerance=1e-10)
    assert result.threshold == pytest.approx(linf_threshold(x, y), rel=1e-9)
    assert result.lower <= linf_threshold(x, y) <= result.upper


def test_balanced_classes_give_the_smallest_ball_around_the_class_means() -> None:
    """Three classes whose means form a right triangle: the smallest enclosing L2 ball has the
    hypotenuse as diameter, radius sqrt(2)/2."""
    means = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    offsets = np.array([[0.1, 0.0], [-0.1, 0.0]])  # two points per class, mean kept
    x = (means[:, None, :] + offsets[None]).reshape(-1, 2)
    y = np.repeat(np.arange(3), 2)
    result = zero_classifier_threshold(x, y, "L2", tolerance=1e-9)
    assert result.threshold == pytest.approx(np.sqrt(2) / 2, rel=1e-6)
    assert not zero_is_optimal(x, y, 0.7, "L2") and zero_is_optimal(x, y, 0.71, "L2")


def test_linear_threshold_cli(capsys) -> None:
    assert main(["phase", "linear-threshold", "--n", "200", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["data"] == "digits" and payload["n"] == 200
    assert 0 < payload["threshold"] <= 1
    assert main(["phase", "linear-threshold", "--norm", "L1"]) == 2
    assert "--norm='L1'" in capsys.readouterr().err
