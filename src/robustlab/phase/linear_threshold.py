"""The budget beyond which the zero classifier is optimal for a linear multi-class model
(Liu, Salzmann, Lin, Tomioka & Süsstrunk 2020, "On the Loss Landscape of Adversarial Training",
NeurIPS, section 3.1, Theorem 1).

Theorem 1: for f(x) = Wᵀx (logits w_kᵀx, no bias) and the adversarial cross-entropy
L_ε(W) = (1/N) Σ_i max_{||δ||_p ≤ ε} CE(Wᵀ(x_i + δ), y_i), which is convex in W, there is an
ε̄ beyond which W = 0 (a constant classifier, loss log K) minimizes L_ε: training then fails.
This module finds ε̄ for given data by bisection on ε; Theorem 1's monotonicity (the set of
directions in which 0 is optimal grows with ε) is what makes the bisection valid.

Whether 0 minimizes the convex L_ε is decided exactly from its directional derivatives at 0.
There every logit is 0, the softmax is uniform, and every δ attains the inner maximum log K, so
(Danskin) along a direction D = (d_1..d_K)

    L'_ε(0; D) = (1/N) Σ_k [u_kᵀ m_k + ε n_k ||u_k||_q],   u_k = (1/K) Σ_j d_j − d_k,

with n_k the number of points of class k, m_k the sum of their inputs and q the dual norm of p
(the u_k range over all vectors summing to 0). 0 is optimal iff this is ≥ 0 for every D, which
by convex duality holds iff the balls {v : ||v − m_k||_p ≤ ε n_k}, one per class, have a common
point. For L∞ the balls are boxes and the test is per coordinate (and ε̄ has the closed form
max_j max_{k,l} (m_kj − m_lj)/(n_k + n_l)); for L2 the common point is searched for in the
affine hull of the centres (projecting onto it brings every centre closer), a convex problem in
at most K − 1 dimensions. With balanced classes ε̄ is the radius of the smallest ball holding
the class means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import Registry

NORMS = ("Linf", "L2")
# How a threat model decides whether the class balls share a point, by name (no if-chains).
_FEASIBILITY: Registry[Any] = Registry("norm", "--norm")


@dataclass
class ZeroThresholdResult:
    """ε̄ of Liu et al.'s Theorem 1 for one data set.

    Attributes:
        threshold: the smallest ε at which the zero classifier minimizes the adversarial loss
            (within ``tolerance``): every ε ≥ it trains a constant classifier.
        lower, upper: the final bisection bracket (0 is not optimal at ``lower``, is at ``upper``).
        norm: threat model; n: points; num_classes: K; dim: input dimension.
        class_counts: points per class.
        iterations: bisection steps.
    """

    threshold: float
    lower: float
    upper: float
    norm: str
    n: int
    num_classes: int
    dim: int
    class_counts: list[int]
    iterations: int
    tolerance: float

    def summary(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "lower": self.lower,
            "upper": self.upper,
            "norm": self.norm,
            "n": self.n,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "class_counts": list(self.class_counts),
            "iterations": self.iterations,
            "tolerance": self.tolerance,
        }


def class_sums(
    x: np.ndarray, y: np.ndarray, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(m, counts)``: per class the sum of its flattened inputs ``(K, dim)`` and its size ``(K,)``."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    labels = np.asarray(y, dtype=np.int64)
    classes = int(num_classes if num_classes is not None else labels.max() + 1)
    if labels.min() < 0 or labels.max() >= classes:
        raise ConfigError("y", f"{labels.min()}..{labels.max()}", f"labels in [0, {classes - 1}]")
    sums = np.zeros((classes, flat.shape[1]))
    np.add.at(sums, labels, flat)
    return sums, np.bincount(labels, minlength=classes).astype(np.float64)


@_FEASIBILITY.register("Linf")
def _boxes_meet(sums: np.ndarray, counts: np.ndarray, eps: float) -> bool:
    """Boxes [m_k − ε n_k, m_k + ε n_k] meet iff they meet in every coordinate."""
    radius = eps * counts[:, None]
    return bool(np.all((sums - radius).max(axis=0) <= (sums + radius).min(axis=0) + 1e-12))


@_FEASIBILITY.register("L2")
def _balls_meet(sums: np.ndarray, counts: np.ndarray, eps: float) -> bool:
    """Euclidean balls B(m_k, ε n_k) share a point: min_c max_k ||c − c_k||² − r_k² ≤ 0, with c in
    the centres' affine hull (coordinates c_k), solved as a smooth epigraph problem."""
    from scipy.optimize import minimize

    radius = eps * counts
    origin = sums[0]
    basis, singular, _ = np.linalg.svd((sums[1:] - origin).T, full_matrices=False)
    basis = basis[:, singular > 1e-12 * max(float(singular.max(initial=0.0)), 1e-300)]
    centres = (sums - origin) @ basis  # (K, r), r <= K - 1
    if centres.shape[1] == 0:  # every class sum is the same point
        return True
    scale = max(float(np.abs(centres).max()), float(radius.max()), 1e-300)
    c_k, r_k = centres / scale, radius / scale

    def excess(c: np.ndarray) -> np.ndarray:
        return ((c[None, :] - c_k) ** 2).sum(axis=1) - r_k**2

    # Start at the centres' mean, with the epigraph variable where its constraint holds.
    start = np.append(c_k.mean(axis=0), excess(c_k.mean(axis=0)).max())
    solution = minimize(
        lambda z: z[-1],
        start,
        jac=lambda z: np.eye(len(z))[-1],
        constraints=[
            {
                "type": "ineq",
                "fun": lambda z: z[-1] - excess(z[:-1]),
                "jac": lambda z: np.hstack([-2 * (z[None, :-1] - c_k), np.ones((len(c_k), 1))]),
            }
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return bool(excess(solution.x[:-1]).max() <= 1e-9)


def zero_is_optimal(
    x: np.ndarray, y: np.ndarray, eps: float, norm: str = "Linf", num_classes: int | None = None
) -> bool:
    """Whether W = 0 minimizes the adversarial cross-entropy of the linear model f(x) = Wᵀx at
    budget ``eps`` (the convex optimality test of the module docstring)."""
    sums, counts = class_sums(x, y, num_classes)
    return _FEASIBILITY.get(norm)(sums, counts, eps)


def linf_threshold(x: np.ndarray, y: np.ndarray, num_classes: int | None = None) -> float:
    """The closed form of ε̄ under L∞: max over coordinates j and class pairs (k, l) of
    (m_kj − m_lj) / (n_k + n_l) (where the class boxes stop meeting)."""
    sums, counts = class_sums(x, y, num_classes)
    gap = sums[:, None, :] - sums[None, :, :]
    total = counts[:, None] + counts[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(total[..., None] > 0, gap / total[..., None], 0.0)
    return float(ratio.max())


def zero_classifier_threshold(
    x: np.ndarray,
    y: np.ndarray,
    norm: str = "Linf",
    num_classes: int | None = None,
    tolerance: float = 1e-6,
) -> ZeroThresholdResult:
    """ε̄ of Liu et al.'s Theorem 1 by bisection: the smallest ε at which W = 0 minimizes the
    adversarial cross-entropy of the linear classifier f(x) = Wᵀx on ``(x, y)``.

    The bracket starts at [0, max_k ||m_k/n_k||_p] (at the upper end v = 0 is a common point of
    the class balls) and is halved until its width is ``tolerance`` times its upper end.

    Args:
        x: inputs ``(N, ...)`` (flattened; images in [0, 1] as the attacks see them).
        y: integer labels ``(N,)``.
        norm: ``"Linf"`` or ``"L2"``.
        num_classes: K (default: the largest label + 1).
        tolerance: relative width of the final bracket.

    Raises:
        ConfigError: an unknown norm, fewer than two points, or labels out of range.
    """
    feasible = _FEASIBILITY.get(norm)
    if len(x) < 2 or len(x) != len(y):
        raise ConfigError("x", f"{len(x)} points, {len(y)} labels", "at least two labelled points")
    sums, counts = class_sums(x, y, num_classes)
    order = {"Linf": np.inf, "L2": 2}[norm]
    present = counts > 0
    lower = 0.0
    upper = float(np.linalg.norm(sums[present] / counts[present, None], ord=order, axis=1).max())
    iterations = 0
    if feasible(sums, counts, lower):
        upper = 0.0  # every class sums to the same point: nothing to learn at any budget
    while upper - lower > tolerance * max(upper, 1e-300):
        middle = 0.5 * (lower + upper)
        if feasible(sums, counts, middle):
            upper = middle
        else:
            lower = middle
        iterations += 1
        if iterations > 200:  # unreachable for tolerance >= 1e-15 (halving from a finite bracket)
            break
    return ZeroThresholdResult(
        threshold=upper,
        lower=lower,
        upper=upper,
        norm=norm,
        n=len(y),
        num_classes=len(counts),
        dim=int(sums.shape[1]),
        class_counts=[int(c) for c in counts],
        iterations=iterations,
        tolerance=tolerance,
    )


def adversarial_cross_entropy_at(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, deltas: np.ndarray
) -> float:
    """L_ε(W) with the inner maximum taken over the given perturbations (a brute-force helper
    for small problems: the box's corners for L∞, dense points of the sphere for L2).

    Args:
        w: ``(dim, K)``; x: ``(N, dim)``; y: ``(N,)``; deltas: ``(C, dim)`` candidate δ.
    """
    logits = (x[:, None, :] + deltas[None]) @ w  # (N, C, K)
    top = logits.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))
    ce = lse - np.take_along_axis(logits, y[:, None, None].repeat(len(deltas), 1), -1)[..., 0]
    return float(ce.max(axis=1).mean())


__all__ = [
    "NORMS",
    "ZeroThresholdResult",
    "adversarial_cross_entropy_at",
    "class_sums",
    "linf_threshold",
    "zero_classifier_threshold",
    "zero_is_optimal",
]
