"""What the phase-transition simulators share: the registry, gradient descent over repeats and
ε at once, the p-values against clean training, and the result record.

Xing, Song & Cheng 2022, "Phase Transition from Clean Training to Adversarial Training"
(NeurIPS), section 4: a simulator draws ``repeats`` training sets, trains from the same start
once cleanly (ε = 0) and once per ε of a grid, all by full-batch gradient descent, and asks
whether the adversarially trained parameters θ(T)(ε) and training loss R̂(θ(T)(ε), ε) still
look like draws from clean training's distribution over repeated training sets (Figs. 2–3).

Everything is float64 numpy arrays shaped ``(repeats, len(eps) + 1, ...)``: slot 0 of the
second axis is clean training, so one matrix product advances every repeat and every ε.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from ..registry import Registry

SIMULATORS: Registry[type[Simulator]] = Registry("simulator", "--model")

# p-values need a reference distribution: fewer clean repeats than this say nothing about it.
MIN_REPEATS = 10
# The default ε grid: log(ε/ε*) from -3 to 3 (natural log), as Figs. 2-3's horizontal axis.
DEFAULT_LOG_RANGE = (-3.0, 3.0)
DEFAULT_GRID_POINTS = 20
# Gradient descent runs until clean training has contracted its error by this factor.
CONTRACTION = 1e-6
MIN_STEPS, MAX_STEPS = 100, 20_000


def critical_eps(d: int, n: int) -> float:
    """ε* = sqrt(d / n), the order of the critical L2 budget of Theorems 1-2."""
    return math.sqrt(d / n)


def default_eps_grid(d: int, n: int, points: int = DEFAULT_GRID_POINTS) -> list[float]:
    """``points`` budgets with log(ε/ε*) evenly spaced over [-3, 3]."""
    low, high = DEFAULT_LOG_RANGE
    star = critical_eps(d, n)
    return [star * math.exp(v) for v in np.linspace(low, high, points)]


def check_eps_grid(eps: Sequence[float], key: str = "--eps") -> list[float]:
    """A grid of budgets: at least two, finite, > 0 and strictly increasing.

    Raises:
        ConfigError: naming ``key``, the grid and what is allowed.
    """
    values = [float(e) for e in eps]
    shown = ",".join(f"{e:g}" for e in values)
    if len(values) < 2:
        raise ConfigError(key, shown, "at least two budgets, e.g. 0.1,0.2,0.4")
    if not all(math.isfinite(e) and e > 0 for e in values):
        raise ConfigError(key, shown, "budgets must be finite and > 0")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError(key, shown, "budgets must be strictly increasing")
    return values


def check_sizes(d: int, n: int, repeats: int, parameters: int) -> None:
    """d, n > 0; enough repeats for a reference distribution of ``parameters`` numbers."""
    for name, value in (("--d", d), ("--n", n)):
        if value <= 0:
            raise ConfigError(name, value, "a positive integer")
    # Hotelling's test needs a non-singular covariance from the other repeats (repeats - 1 > p).
    needed = max(MIN_REPEATS, parameters + 2)
    if repeats < needed:
        why = (
            f"at least {MIN_REPEATS} for p-values against the distribution of clean training"
            if needed == MIN_REPEATS
            else f"at least d + 2 = {needed}: the p-values estimate a {parameters} x "
            f"{parameters} covariance from the other repeats"
        )
        raise ConfigError("--repeats", repeats, why)


@dataclass
class SimulationResult:
    """One simulation: the ε grid and, per ε, how far adversarial training is from clean.

    Attributes:
        model: the simulator's name.
        d, n, repeats, sigma, steps, lr: the setting.
        eps: the adversarial budgets (L2), increasing; ``eps_star`` = sqrt(d / n).
        p_value_params: per ε, the mean over repeats of the p-value of θ(T)(ε) against the
            distribution of θ(T)(0) over repeated training sets (Fig. 2 right).
        p_value_loss: per ε, the same for the final training loss R̂(θ(T)(ε), ε) against
            R̂(θ(T)(0), 0) (Fig. 3).
        relative_difference: ``(steps, len(eps))``: the mean over repeats of
            ||θ(t)(ε) − θ(t)(0)|| / ||θ(t)(0)|| after each step t = 1..T (Fig. 2 left).
        clean_loss: the final clean training loss of each repeat.
        adversarial_loss: ``(repeats, len(eps))``: R̂(θ(T)(ε), ε) of each repeat.
        seconds: wall time.
    """

    model: str
    d: int
    n: int
    repeats: int
    sigma: float
    steps: int
    lr: float
    seed: int
    eps: list[float]
    eps_star: float
    p_value_params: list[float]
    p_value_loss: list[float]
    relative_difference: np.ndarray
    clean_loss: np.ndarray
    adversarial_loss: np.ndarray
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def log_ratio(self) -> list[float]:
        """log(ε/ε*) per ε (natural log), the horizontal axis of Figs. 2-3."""
        return [math.log(e / self.eps_star) for e in self.eps]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the keys of ``robustlab phase simulate --json``."""
        return {
            "model": self.model,
            "d": self.d,
            "n": self.n,
            "repeats": self.repeats,
            "sigma": self.sigma,
            "steps": self.steps,
            "lr": self.lr,
            "seed": self.seed,
            **self.options,
            "eps": list(self.eps),
            "eps_star": self.eps_star,
            "log_eps_ratio": self.log_ratio,
            "p_value_params": list(self.p_value_params),
            "p_value_loss": list(self.p_value_loss),
            "relative_difference": [float(v) for v in self.relative_difference[-1]],
            "clean_loss_mean": float(self.clean_loss.mean()),
            "adversarial_loss_mean": [float(v) for v in self.adversarial_loss.mean(axis=0)],
            "seconds": self.seconds,
        }

    def __repr__(self) -> str:
        return (
            f"SimulationResult(model={self.model!r}, d={self.d}, n={self.n}, "
            f"repeats={self.repeats}, eps_star={self.eps_star:.4g}, {len(self.eps)} eps, "
            f"steps={self.steps})"
        )


class Simulator(ABC):
    """A model trained by full-batch gradient descent on a linear-regression problem.

    Xing et al. section 4: X ~ N(0, I_d), y = θ₀ᵀX + N(0, σ²) with ||θ₀|| = 1, squared loss,
    L2 attacks of budget ε. A subclass says how its parameters start, its loss and gradient at
    each ε, and which d numbers summarize the fitted function for the p-values.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def init(self, rng: np.random.Generator, repeats: int, slots: int, d: int) -> np.ndarray:
        """Starting parameters ``(repeats, slots, ...)``: the same start in every slot of a repeat."""

    @abstractmethod
    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, eps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Adversarial training loss ``(repeats, slots)`` and its gradient (shaped as ``params``).

        ``x``: ``(repeats, n, d)``; ``y``: ``(repeats, n)``; ``eps``: ``(slots,)``, ``eps[0] = 0``.
        """

    def gradient(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, eps: np.ndarray
    ) -> np.ndarray:
        """The gradient alone (what each step needs; a subclass may skip the loss)."""
        return self.loss_and_grad(params, x, y, eps)[1]

    @abstractmethod
    def coefficients(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``(repeats, slots, d)``: the d numbers tested against clean training (for the linear
        model θ itself)."""

    def num_coefficients(self, d: int) -> int:
        return d

    def smoothness(self, x: np.ndarray, eps_max: float) -> float:
        """An upper bound of the loss's curvature over the grid, for a stable step 1/L.

        Each piece (y − θᵀ(x + δ))² of the adversarial loss has curvature at most
        2·(sqrt(λ_max(XᵀX/n)) + ε)² along any direction.
        """
        return 2.0 * (math.sqrt(_gram_eigenvalues(x)[1]) + eps_max) ** 2

    def default_steps(self, x: np.ndarray, lr: float) -> int:
        """Steps for clean gradient descent to contract its error by :data:`CONTRACTION`: its
        slowest rate is 2·λ_min(XᵀX/n) (the smallest non-zero one when d ≥ n)."""
        low = 2.0 * _gram_eigenvalues(x)[0]
        steps = math.ceil(math.log(1 / CONTRACTION) / (lr * low)) if low > 0 else MAX_STEPS
        return int(min(max(steps, MIN_STEPS), MAX_STEPS))


def _gram_eigenvalues(x: np.ndarray) -> tuple[float, float]:
    """The smallest non-zero and the largest eigenvalue of XᵀX/n over every repeat."""
    n = x.shape[1]
    # XᵀX/n and XXᵀ/n share their non-zero eigenvalues: take the smaller matrix.
    gram = x.transpose(0, 2, 1) @ x if x.shape[2] <= n else x @ x.transpose(0, 2, 1)
    values = np.linalg.eigvalsh(gram / n)
    top = float(values.max())
    nonzero = values[values > 1e-10 * top]
    return float(nonzero.min()) if nonzero.size else 0.0, top


def draw_data(
    rng: np.random.Generator, repeats: int, d: int, n: int, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``repeats`` training sets of Theorem 1's model: ``x (repeats, n, d)``, ``y (repeats, n)``
    and the true coefficient θ₀ (one unit vector, shared by every repeat)."""
    theta0 = rng.standard_normal(d)
    theta0 /= np.linalg.norm(theta0)
    x = rng.standard_normal((repeats, n, d))
    y = x @ theta0 + sigma * rng.standard_normal((repeats, n))
    return x, y, theta0


def gradient_descent(
    simulator: Simulator,
    params: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    eps: np.ndarray,
    lr: float,
    steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-batch gradient descent in every slot at once (Xing et al. section 3, with the inner
    maximum of the simulator's loss).

    Returns:
        The final parameters, the final losses ``(repeats, slots)`` and the relative distance
        ``(steps, slots - 1)`` of each adversarial slot from the clean slot after every step,
        averaged over repeats.
    """
    params = params.copy()
    relative = np.empty((steps, params.shape[1] - 1))
    flat_axes = tuple(range(2, params.ndim))
    for t in range(steps):
        params -= lr * simulator.gradient(params, x, y, eps)
        diff = np.sqrt(((params[:, 1:] - params[:, :1]) ** 2).sum(axis=flat_axes))
        base = np.sqrt((params[:, :1] ** 2).sum(axis=flat_axes))
        relative[t] = (diff / np.maximum(base, 1e-300)).mean(axis=0)
    loss, _ = simulator.loss_and_grad(params, x, y, eps)
    return params, loss, relative


def p_values_params(coefficients: np.ndarray) -> np.ndarray:
    """Per repeat and ε, the p-value of θ(T)(ε) under the distribution of clean θ(T)(0).

    Hotelling's prediction test, leave one out: for repeat r the reference is the clean
    coefficients of the *other* m = repeats − 1 repeats (mean μ, covariance S), independent of
    repeat r's training set, and for a new draw w of the same Gaussian
    ``m/(m+1) · (w−μ)ᵀS⁻¹(w−μ) · (m−p)/(p(m−1)) ~ F(p, m−p)``. So clean training's own
    p-values are uniform (mean 0.5), and they fall to 0 as θ(T)(ε) leaves the distribution.

    Args:
        coefficients: ``(repeats, slots, p)`` with slot 0 clean.

    Returns:
        ``(repeats, slots - 1)`` p-values.
    """
    from scipy import stats

    clean, adversarial = coefficients[:, 0], coefficients[:, 1:]
    r, p = clean.shape
    m = r - 1
    mean = clean.mean(axis=0)
    centered = clean - mean
    scatter = centered.T @ centered
    # Leaving repeat i out moves the mean by -(z_i - μ)/m and the scatter by a rank-one term.
    loo_mean = mean - centered / m
    loo_cov = (scatter - (r / m) * centered[:, :, None] * centered[:, None, :]) / (m - 1)
    diff = adversarial - loo_mean[:, None, :]
    solved = np.linalg.solve(loo_cov[:, None], diff[..., None])[..., 0]
    t2 = (m / (m + 1)) * (diff * solved).sum(axis=-1)
    f = t2 * (m - p) / (p * (m - 1))
    return stats.f.sf(f, p, m - p)


def p_values_loss(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """Per repeat and ε, the two-sided p-value of R̂(θ(T)(ε), ε) under the distribution of the
    clean training loss R̂(θ(T)(0), 0): the prediction t-test against the other repeats' clean
    losses, ``(L − mean)/(s·sqrt(1 + 1/m)) ~ t(m − 1)``.

    Args:
        clean: ``(repeats,)``; adversarial: ``(repeats, len(eps))``.
    """
    from scipy import stats

    r = clean.shape[0]
    m = r - 1
    total, squares = clean.sum(), (clean**2).sum()
    loo_mean = (total - clean) / m
    loo_var = (squares - clean**2 - m * loo_mean**2) / (m - 1)
    scale = np.sqrt(np.maximum(loo_var, 1e-300) * (1 + 1 / m))
    t = (adversarial - loo_mean[:, None]) / scale[:, None]
    return 2 * stats.t.sf(np.abs(t), m - 1)


def check_simulation(
    model: str,
    d: int,
    n: int,
    repeats: int,
    eps: Sequence[float] | None,
    sigma: float = 1.0,
    steps: int | None = None,
    lr: float | None = None,
    **options: Any,
) -> tuple[Simulator, list[float]]:
    """Every check of :func:`simulate`'s inputs, before any work: the simulator built and the
    ε grid (the default one when ``eps`` is None).

    Raises:
        ConfigError: the first bad input, naming its option.
    """
    simulator = SIMULATORS.create(model, **options)
    check_sizes(d, n, repeats, simulator.num_coefficients(d))
    grid = check_eps_grid(eps if eps is not None else default_eps_grid(d, n))
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError("--sigma", sigma, "a finite number >= 0")
    if lr is not None and not lr > 0:
        raise ConfigError("--lr", lr, "must be > 0")
    if steps is not None and steps <= 0:
        raise ConfigError("--steps", steps, "a positive integer")
    return simulator, grid


def simulate(
    model: str = "linear",
    *,
    d: int,
    n: int,
    repeats: int = 300,
    eps: Sequence[float] | None = None,
    sigma: float = 1.0,
    steps: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    **options: Any,
) -> SimulationResult:
    """Run one simulation of Xing et al.'s section 4 (Figs. 2-3).

    Args:
        model: a registered simulator (``linear``, ``two_layer``).
        d, n: dimension and training-set size.
        repeats: training sets drawn (300 in the paper); at least 10, and more than d + 1.
        eps: L2 budgets, increasing (default: 20 with log(ε/ε*) evenly in [-3, 3]).
        sigma: noise standard deviation of y.
        steps: gradient-descent steps (default: until clean training has contracted by 1e-6).
        lr: step size (default 1/L for the largest ε, so that every ε is stable).
        seed: seed of the data and of the start.
        **options: the simulator's own options (``two_layer``: ``hidden``, ``init_scale``).

    Raises:
        ConfigError: bad sizes, grid or options (one line naming the option).
    """
    import time

    started = time.perf_counter()
    simulator, grid = check_simulation(model, d, n, repeats, eps, sigma, steps, lr, **options)
    rng = np.random.default_rng(seed)
    x, y, _ = draw_data(rng, repeats, d, n, sigma)
    slots = np.array([0.0, *grid])
    rate = lr if lr is not None else 1.0 / simulator.smoothness(x, grid[-1])
    count = steps if steps is not None else simulator.default_steps(x, rate)
    start = simulator.init(rng, repeats, len(slots), d)
    params, loss, relative = gradient_descent(simulator, start, x, y, slots, rate, count)
    coefficients = simulator.coefficients(params, x)
    p_params = p_values_params(coefficients).mean(axis=0)
    p_loss = p_values_loss(loss[:, 0], loss[:, 1:]).mean(axis=0)
    return SimulationResult(
        model=model,
        d=d,
        n=n,
        repeats=repeats,
        sigma=sigma,
        steps=count,
        lr=rate,
        seed=seed,
        eps=grid,
        eps_star=critical_eps(d, n),
        p_value_params=[float(v) for v in p_params],
        p_value_loss=[float(v) for v in p_loss],
        relative_difference=relative,
        clean_loss=loss[:, 0],
        adversarial_loss=loss[:, 1:],
        seconds=time.perf_counter() - started,
        options=dict(options),
    )
