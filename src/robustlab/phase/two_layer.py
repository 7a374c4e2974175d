"""A two-layer network with a fixed second layer (Xing, Song & Cheng 2022, Proposition 1)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..errors import ConfigError
from ._base import SIMULATORS, Simulator

# float32: tanh over (repeats, slots, n, hidden) dominates the time, and in float64 it is ten
# times slower; the p-values are computed in float64 from the final coefficients.
DTYPE = np.float32


@SIMULATORS.register("two_layer")
class TwoLayerNetwork(Simulator):
    """f(x) = (1/sqrt(h)) Σ_j a_j φ(θ_jᵀx) with φ = tanh (smooth), eq. (3).

    Proposition 1: with h hidden units, a vanishing initialization, the second layer a fixed
    and only the hidden layer θ = (θ_1..θ_h) trained, the network behaves as Theorems 1-2 say
    of linear regression. Here a_j = ±1 (drawn per repeat and kept), θ_j(0) ~ N(0, s²·I/d)
    with s = ``init_scale`` (1e-3: vanishing), the same start for clean and every ε.

    The inner maximum has no closed form: each step takes the one-step L2 attack
    δ_i = −ε·sign(r_i)·∇ₓf(x_i)/||∇ₓf(x_i)|| (exact for a linear f, the FGM of section 3), then
    descends the squared loss at x_i + δ_i with δ held fixed (Danskin), as adversarial
    training's two-step update does.

    Parameters of different networks are not comparable one by one (the paper's footnote 4),
    so the p-values test what the network computes: its mean input gradient over the training
    points, (1/n) Σ ∇ₓf(x_i) ∈ R^d (θ itself for a linear model). The relative difference of
    Fig. 2 left is measured on the hidden-layer weights, which share their start.

    Args:
        hidden: h, the number of hidden units.
        init_scale: the scale s of the hidden layer's initialization.
    """

    name: ClassVar[str] = "two_layer"

    def __init__(self, hidden: int = 32, init_scale: float = 1e-3) -> None:
        if hidden <= 0:
            raise ConfigError("--hidden", hidden, "a positive integer")
        if not init_scale > 0:
            raise ConfigError("--init-scale", init_scale, "must be > 0")
        self.hidden, self.init_scale = hidden, init_scale
        self.second: np.ndarray | None = None

    def init(self, rng: np.random.Generator, repeats: int, slots: int, d: int) -> np.ndarray:
        second = rng.choice([-1.0, 1.0], size=(repeats, 1, 1, self.hidden))
        self.second = second.astype(DTYPE)
        start = self.init_scale / math.sqrt(d) * rng.standard_normal((repeats, 1, self.hidden, d))
        return np.repeat(start, slots, axis=1).astype(DTYPE)

    def _a(self) -> np.ndarray:
        if self.second is None:
            raise RuntimeError("init() draws the second layer first")
        return self.second / math.sqrt(self.hidden)  # (repeats, 1, 1, h)

    def _forward(self, params: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outputs ``(repeats, slots, n)`` and tanh'(θ_jᵀx_i) ``(repeats, slots, n, h)``."""
        act = np.tanh(x @ params.transpose(0, 1, 3, 2))
        out = (act @ self._a().transpose(0, 1, 3, 2))[..., 0]
        # tanh' = 1 − tanh², in place: these (repeats, slots, n, h) arrays dominate the time.
        slope = np.multiply(act, act, out=act)
        np.subtract(1.0, slope, out=slope)
        return out, slope

    def _input_gradient(self, params: np.ndarray, slope: np.ndarray) -> np.ndarray:
        """∇ₓf(x_i) = (1/sqrt(h)) Σ_j a_j φ'(θ_jᵀx_i) θ_j: ``(repeats, slots, n, d)``."""
        return (slope * self._a()) @ params

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, eps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[1]
        x4 = x[:, None].astype(DTYPE)  # (repeats, 1, n, d)
        y = y.astype(DTYPE)
        eps = eps.astype(DTYPE)
        out, slope = self._forward(params, x4)
        residual = y[:, None, :] - out
        grad_x = self._input_gradient(params, slope)
        size = np.linalg.norm(grad_x, axis=-1, keepdims=True)
        unit = np.divide(grad_x, size, out=np.zeros_like(grad_x), where=size > 0)
        delta = -eps[None, :, None, None] * np.sign(residual)[..., None] * unit
        x_adv = x4 + delta  # (repeats, slots, n, d)
        out_adv, slope_adv = self._forward(params, x_adv)
        residual_adv = y[:, None, :] - out_adv
        loss = (residual_adv**2).mean(axis=-1)
        # d/dθ_j (y − f)² = −2 r a_j/sqrt(h) φ'(θ_jᵀx) x
        weights = np.multiply(slope_adv, self._a(), out=slope_adv)  # (repeats, slots, n, h)
        weights *= residual_adv[..., None]
        grad = (-2.0 / n) * (weights.transpose(0, 1, 3, 2) @ x_adv)
        return loss, grad

    def coefficients(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        _, slope = self._forward(params, x[:, None].astype(DTYPE))
        return self._input_gradient(params, slope).mean(axis=2).astype(np.float64)

    def smoothness(self, x: np.ndarray, eps_max: float) -> float:
        # Near the vanishing start the network is the linear model β = Σ_j a_j θ_j / sqrt(h),
        # whose step along θ_j moves β by the same amount: the linear bound applies.
        return super().smoothness(x, eps_max)
