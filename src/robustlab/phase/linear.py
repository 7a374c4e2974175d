"""Adversarial training of linear regression (Xing, Song & Cheng 2022, Theorems 1-2, Figs. 2-3)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ._base import SIMULATORS, Simulator


def adversarial_squared_loss(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float | np.ndarray
) -> np.ndarray:
    """The inner maximum of the squared loss of a linear model over an L2 ball, in closed form:

    ``max_{||δ||₂ ≤ ε} (y − θᵀ(x + δ))² = (|y − θᵀx| + ε·||θ||₂)²``

    (the residual moves by −θᵀδ, at most ε·||θ|| by Cauchy-Schwarz, attained at
    δ = −ε·sign(y − θᵀx)·θ/||θ||, which pushes it away from 0).

    Args:
        theta: ``(..., d)``; x: ``(..., d)``; y and eps broadcast against ``theta[..., 0]``.
    """
    residual = y - (theta * x).sum(axis=-1)
    return (np.abs(residual) + eps * np.linalg.norm(theta, axis=-1)) ** 2


@SIMULATORS.register("linear")
class LinearRegression(Simulator):
    """θ ∈ R^d, f(x) = θᵀx, zero initialization (Theorem 1).

    Training minimizes R̂(θ, ε) = (1/n) Σ (|y_i − θᵀx_i| + ε||θ||)² by gradient descent; its
    gradient is ``(2/n) Σ a_i (−sign(r_i)·x_i + ε·θ/||θ||)`` with r_i = y_i − θᵀx_i and
    a_i = |r_i| + ε||θ||. At θ = 0 the loss is not differentiable (the paper's footnote 2);
    θ/||θ|| is taken as 0 there, so the first step from the zero start is clean training's.
    """

    name: ClassVar[str] = "linear"

    def __init__(self) -> None:
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None

    def init(self, rng: np.random.Generator, repeats: int, slots: int, d: int) -> np.ndarray:
        return np.zeros((repeats, slots, d))

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, eps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[1]
        residual = y[:, None, :] - params @ x.transpose(0, 2, 1)  # (repeats, slots, n)
        norm = np.linalg.norm(params, axis=-1, keepdims=True)  # (repeats, slots, 1)
        scaled_eps = eps[None, :, None]
        a = np.abs(residual) + scaled_eps * norm
        loss = (a**2).mean(axis=-1)
        direction = np.divide(params, norm, out=np.zeros_like(params), where=norm > 0)
        grad = (-2.0 / n) * ((a * np.sign(residual)) @ x) + 2.0 * scaled_eps * a.mean(
            axis=-1, keepdims=True
        ) * direction
        return loss, grad

    def gradient(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, eps: np.ndarray
    ) -> np.ndarray:
        # The same gradient as loss_and_grad's, written into two buffers kept between steps:
        # the loop's cost is in (repeats, slots, n) arrays, and a fresh one each step costs
        # more in page faults than the arithmetic. a·sign(r) = r + ε||θ||·sign(r) and
        # mean(a) = mean|r| + ε||θ||.
        n = x.shape[1]
        shape = (*params.shape[:2], n)
        if self._buffers is None or self._buffers[0].shape != shape:
            self._buffers = (np.empty(shape), np.empty(shape))
        residual, signs = self._buffers
        np.matmul(params, x.transpose(0, 2, 1), out=residual)
        np.subtract(y[:, None, :], residual, out=residual)
        norm = np.linalg.norm(params, axis=-1, keepdims=True)
        eps_norm = eps[None, :, None] * norm
        np.sign(residual, out=signs)
        mean_abs = np.einsum("rsn,rsn->rs", residual, signs)[..., None] / n
        signs *= eps_norm
        signs += residual
        direction = np.divide(params, norm, out=np.zeros_like(params), where=norm > 0)
        return (-2.0 / n) * (signs @ x) + 2.0 * eps[None, :, None] * (
            mean_abs + eps_norm
        ) * direction

    def coefficients(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        return params
