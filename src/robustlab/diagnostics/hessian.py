"""Curvature of the training loss in parameter space: top Hessian eigenpairs, trace, density."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Attack, model_mode
from ..errors import ConfigError
from ..registry import Registry
from ._base import DIAGNOSTICS, DiagnosticResult, as_float, batch_slices
from ._parameters import (
    AtParameters,
    ParameterSpace,
    full_precision,
    generator_for,
    loss_and_error,
    resolve_objective,
    seeded,
)
from ._plot import new_figure, save

# A solver maps (H, space, k, tol, max_iter, generator) to the top-k eigenpairs.
SOLVERS: Registry[Callable[..., SolverOutput]] = Registry("Hessian solver", "solver")


class HessianOperator:
    """v ↦ H v for the mean cross-entropy over fixed points, by double backward.

    The loss is the mean over all points; over several batches, H v = Σ_b (|b| / n) H_b v
    (PyHessian's ``dataloader_hv_product``). With one batch the gradient's graph is built once
    and kept (``retain_graph``), as PyHessian does for a single batch: each product then costs one
    backward pass instead of a forward and two backwards.

    Attributes:
        hvps: the number of products computed (each over all the points).
        loss: the mean loss at θ (from the first pass).
    """

    def __init__(
        self, model: nn.Module, space: ParameterSpace, batches: list[tuple[torch.Tensor, ...]]
    ) -> None:
        self.model, self.space, self.batches = model, space, batches
        self.n = sum(len(b[1]) for b in batches)
        self.hvps = 0
        self._cached: tuple[list[torch.Tensor], list[int]] | None = None
        total = torch.zeros((), device=space.device, dtype=torch.float64)
        for xb, yb in batches:
            loss = self._batch_loss(xb, yb, need_graph=len(batches) == 1)
            total += loss.detach().double() * len(yb)
        self.loss = float(total) / max(self.n, 1)

    def _batch_loss(self, xb: torch.Tensor, yb: torch.Tensor, need_graph: bool) -> torch.Tensor:
        if not need_graph:
            with torch.no_grad():
                return F.cross_entropy(full_precision(self.model(xb)), yb)
        loss = F.cross_entropy(full_precision(self.model(xb)), yb)
        self._cached = self._gradient(loss)
        return loss

    def _gradient(self, loss: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
        """∇θ L with its graph, keeping the entries that depend on θ (a parameter the loss
        does not use, or whose gradient is constant, has a zero row of H)."""
        grads = torch.autograd.grad(loss, self.space.params, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [grads[i] for i in used], used

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        parts = self.space.split(vector)
        total: torch.Tensor | None = None
        for xb, yb in self.batches:
            if self._cached is not None:
                grads, used = self._cached
            else:
                grads, used = self._gradient(F.cross_entropy(full_precision(self.model(xb)), yb))
            products: list[torch.Tensor | None] = [None] * len(parts)
            if grads:
                hv = torch.autograd.grad(
                    grads,
                    self.space.params,
                    grad_outputs=[parts[i] for i in used],
                    retain_graph=self._cached is not None,
                    allow_unused=True,
                )
                products = list(hv)
            flat = self.space.concat(products)
            if len(self.batches) > 1:
                flat = flat * (len(yb) / self.n)
            total = flat if total is None else total.add_(flat)
        self.hvps += 1
        assert total is not None
        return total


@dataclass
class SolverOutput:
    eigenvalues: list[float]
    eigenvectors: torch.Tensor  # (k, P), orthonormal rows
    iterations: int
    converged: bool


def _orthonormalize(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """v minus its projection on the rows of ``basis`` (twice: classical Gram–Schmidt repeated
    is as accurate as modified Gram–Schmidt, "twice is enough"), normalized."""
    if basis.shape[0]:
        v = v - basis.T @ (basis @ v)
        v = v - basis.T @ (basis @ v)
    return v / v.norm().clamp_min(1e-30)


@SOLVERS.register("power")
def power_iteration(
    hvp: HessianOperator,
    space: ParameterSpace,
    k: int,
    tol: float,
    max_iter: int,
    generator: torch.Generator,
) -> SolverOutput:
    """Power iteration with deflation, as PyHessian's ``hessian.eigenvalues`` (Yao, Gholami,
    Keutzer & Mahoney 2020, "PyHessian", §3.1) and Liu et al.'s ``calc_hessian_eigen``.

    For each eigenvalue in turn: from a Gaussian start, repeat v ← orthonormalize(v against the
    eigenvectors found), λ ← vᵀHv, v ← Hv / ||Hv|| until λ changes by less than ``tol``
    relatively (at most ``max_iter`` products). Converges to the eigenvalues of largest magnitude.
    """
    found = torch.zeros(0, space.size, device=space.device, dtype=space.dtype)
    eigenvalues: list[float] = []
    iterations, converged = 0, True
    for _ in range(k):
        v = torch.randn(space.size, device=space.device, dtype=space.dtype, generator=generator)
        v = v / v.norm()
        value: float | None = None
        done = False
        for _ in range(max_iter):
            v = _orthonormalize(v, found)
            hv = hvp(v)
            iterations += 1
            new = float(hv @ v)
            v = hv / hv.norm().clamp_min(1e-30)
            if value is not None and abs(new - value) / (abs(value) + 1e-6) < tol:
                value, done = new, True
                break
            value = new
        converged &= done
        eigenvalues.append(float(value if value is not None else 0.0))
        found = torch.cat([found, _orthonormalize(v, found)[None]])
    return SolverOutput(eigenvalues, found, iterations, converged)


@dataclass
class LanczosRun:
    """A Lanczos tridiagonalization: T's diagonal and off-diagonal, and the basis Q (rows)."""

    alphas: list[float]
    betas: list[float]
    basis: torch.Tensor

    def tridiagonal(self) -> torch.Tensor:
        m = len(self.alphas)
        t = torch.diag(torch.tensor(self.alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.betas[: m - 1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        return t


def lanczos(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    stop: Callable[[LanczosRun, float], bool] | None = None,
) -> LanczosRun:
    """Lanczos with full reorthogonalization (Golub & Van Loan, Matrix Computations, §10.1 and
    §10.3.1; Ghorbani, Krishnan & Xiao 2019 for Hessians).

    Each new vector is orthogonalized against the whole basis (twice), so the basis stays
    orthonormal to working precision and no spurious copies of converged eigenvalues appear. On
    a breakdown (an invariant subspace found before ``steps``) the run continues from a random
    vector orthogonal to the basis with β = 0, as PyHessian's SLQ does. ``stop(run, beta)`` is
    asked after each step whether the run may end there.
    """
    size = start.numel()
    basis = torch.zeros(steps, size, device=start.device, dtype=start.dtype)
    basis[0] = start / start.norm()
    run = LanczosRun([], [], basis)
    beta_prev = 0.0
    for j in range(steps):
        q = basis[j]
        w = hvp(q)
        alpha = w @ q
        w = w - alpha * q
        if j > 0:
            w = w - beta_prev * basis[j - 1]
        done = basis[: j + 1]
        w = w - done.T @ (done @ w)
        w = w - done.T @ (done @ w)
        beta_t = w.norm()
        run.alphas.append(float(alpha))
        beta = float(beta_t)
        if j + 1 == steps or (stop is not None and stop(run, beta)):
            run.basis = basis[: j + 1]
            return run
        scale = max(abs(a) for a in run.alphas) or 1.0
        if beta <= 1e-10 * scale:
            w = torch.randn(size, device=start.device, dtype=start.dtype, generator=generator)
            w = _orthonormalize(w, done)
            beta = 0.0
        else:
            w = w / beta_t
        run.betas.append(beta)
        basis[j + 1] = w
        beta_prev = beta
    run.basis = basis[: len(run.alphas)]
    return run


def _top_ritz(run: LanczosRun, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values of largest magnitude (descending) and their coordinates in the basis."""
    values, vectors = torch.linalg.eigh(run.tridiagonal())
    order = torch.argsort(values.abs(), descending=True)[:k]
    return values[order], vectors[:, order]


@SOLVERS.register("lanczos")
def lanczos_eigenpairs(
    hvp: HessianOperator,
    space: ParameterSpace,
    k: int,
    tol: float,
    max_iter: int,
    generator: torch.Generator,
) -> SolverOutput:
    """The k eigenvalues of largest magnitude by Lanczos with full reorthogonalization.

    Stops when every wanted Ritz pair (θ_i, y_i) has the residual bound
    ||H y_i − θ_i y_i|| = β_m |s_{m,i}| ≤ ``tol`` · |θ_i| (Golub & Van Loan, §10.1.5), or after
    ``max(max_iter, k)`` steps (one product each), or when the basis spans the whole space
    (then the values are exact). Eigenvalue errors are of the order of the residual squared over
    the gap to the next eigenvalue, far below ``tol`` for separated eigenvalues.
    """
    steps = min(space.size, max(max_iter, k))
    state = {"converged": False}

    def stop(run: LanczosRun, beta: float) -> bool:
        m = len(run.alphas)
        if m < k:
            return False
        if m == space.size:
            state["converged"] = True
            return True
        values, vectors = _top_ritz(run, k)
        residuals = beta * vectors[m - 1].abs()
        if bool((residuals <= tol * values.abs().clamp_min(1e-12)).all()):
            state["converged"] = True
            return True
        return False

    start = torch.randn(space.size, device=space.device, dtype=space.dtype, generator=generator)
    run = lanczos(hvp, start, steps, generator, stop)
    values, coords = _top_ritz(run, k)
    vectors = coords.T.to(run.basis.dtype).to(run.basis.device) @ run.basis
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    converged = state["converged"] or len(run.alphas) == space.size
    return SolverOutput([float(v) for v in values], vectors, len(run.alphas), converged)


def hutchinson_trace(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    space: ParameterSpace,
    samples: int,
    tol: float,
    generator: torch.Generator,
) -> list[float]:
    """Samples zᵀHz for Rademacher z, whose mean is tr(H) (Hutchinson 1990; PyHessian's
    ``trace``): up to ``samples`` of them, stopping early once the running mean changes by
    less than ``tol`` relatively (``tol = 0``: always all)."""
    values: list[float] = []
    mean = 0.0
    for _ in range(samples):
        z = torch.randint(0, 2, (space.size,), device=space.device, generator=generator)
        z = z.to(space.dtype).mul_(2).sub_(1)
        values.append(float(hvp(z) @ z))
        new_mean = sum(values) / len(values)
        if tol > 0 and len(values) > 1 and abs(new_mean - mean) / (abs(mean) + 1e-6) < tol:
            break
        mean = new_mean
    return values


def slq_density(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    space: ParameterSpace,
    runs: int,
    steps: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019, §2; PyHessian's ``density``).

    Per run, ``steps`` Lanczos steps from a normalized Rademacher vector; the eigenvalues θ_i
    of T are the quadrature nodes and the squared first components of its eigenvectors the
    weights (they sum to 1). The spectral density is their Gaussian-smoothed mixture,
    averaged over runs (:meth:`HessianResult.density`).

    Returns:
        nodes and weights, each ``(runs, steps)`` on the CPU (float64).
    """
    steps = min(steps, space.size)
    nodes, weights = [], []
    for _ in range(runs):
        z = torch.randint(0, 2, (space.size,), device=space.device, generator=generator)
        z = z.to(space.dtype).mul_(2).sub_(1)
        run = lanczos(hvp, z, steps, generator)
        values, vectors = torch.linalg.eigh(run.tridiagonal())
        nodes.append(values)
        weights.append(vectors[0] ** 2)
    return torch.stack(nodes), torch.stack(weights)


@dataclass(repr=False)
class HessianResult(DiagnosticResult):
    """Top eigenpairs of the Hessian of the training loss at θ, and optionally its trace,
    its spectral density and the eigenvalues' normalization.

    Attributes:
        eigenvalues: the k eigenvalues of largest magnitude, in that order.
        eigenvectors: ``(k, P)`` unit rows, orthonormal, on the CPU; :meth:`eigenvector` gives
            one as ``{parameter name: tensor}``.
        names, shapes: the variables (parameters) the flat vectors run over, in order.
        solver, objective, n: how and on what it was measured; ``loss``: the loss at θ.
        hvps: Hessian-vector products used in all (each over all ``n`` points).
        iterations: the solver's products; ``converged``: whether it met ``tol`` in budget.
        random_losses: the loss at each random sample θ + a·d (Liu et al. §4.2), if drawn.
        trace_samples: Hutchinson's samples zᵀHz, if drawn.
        density_nodes, density_weights: SLQ's ``(runs, steps)`` nodes and weights, if drawn.
    """

    eigenvalues: list[float]
    eigenvectors: torch.Tensor
    names: list[str]
    shapes: list[tuple[int, ...]]
    solver: str
    objective: str
    n: int
    loss: float
    hvps: int
    iterations: int
    converged: bool
    tol: float
    seconds: float
    normalize_radius: float = 1.0
    random_losses: list[float] = field(default_factory=list)
    trace_samples: list[float] = field(default_factory=list)
    density_nodes: torch.Tensor | None = None
    density_weights: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return len(self.eigenvalues)

    @property
    def random_loss(self) -> float | None:
        """The mean loss at the random samples, the scale Liu et al. divide eigenvalues by."""
        return sum(self.random_losses) / len(self.random_losses) if self.random_losses else None

    @property
    def normalized_eigenvalues(self) -> list[float] | None:
        """λ_i / mean L(θ + a·d) (Liu et al. 2020, §4.2, Fig. 2 solid lines), if sampled."""
        scale = self.random_loss
        if scale is None:
            return None
        return [v / scale if scale != 0 else float("nan") for v in self.eigenvalues]

    @property
    def trace(self) -> float | None:
        return sum(self.trace_samples) / len(self.trace_samples) if self.trace_samples else None

    @property
    def trace_stderr(self) -> float | None:
        """The standard error of the Hutchinson mean (sample std / sqrt(samples))."""
        m = len(self.trace_samples)
        if m < 2:
            return None
        return float(torch.tensor(self.trace_samples, dtype=torch.float64).std() / math.sqrt(m))

    def eigenvector(self, index: int) -> dict[str, torch.Tensor]:
        """Eigenvector ``index`` (0: the top one) shaped like the parameters, by name."""
        parts = self.eigenvectors[index].split([math.prod(s) for s in self.shapes])
        return {
            name: part.view(shape)
            for name, part, shape in zip(self.names, parts, self.shapes, strict=True)
        }

    def density(
        self, points: int = 10_000, sigma_squared: float = 1e-5, overhead: float = 0.01
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The smoothed spectral density on a grid, as PyHessian's ``density_plot``: each node a
        Gaussian of variance σ² = ``sigma_squared`` · max(1, λ_max − λ_min), weighted, averaged
        over runs, normalized to integrate to 1; the grid spans the nodes ± ``overhead``.

        Returns:
            ``(grid, density)``, or ``None`` when no density was estimated.
        """
        if self.density_nodes is None or self.density_weights is None:
            return None
        nodes, weights = self.density_nodes.double(), self.density_weights.double()
        low = float(nodes.min(dim=1).values.mean()) - overhead
        high = float(nodes.max(dim=1).values.mean()) + overhead
        grid = torch.linspace(low, high, points, dtype=torch.float64)
        sigma2 = sigma_squared * max(1.0, high - low)
        density = torch.zeros_like(grid)
        for run_nodes, run_weights in zip(nodes, weights, strict=True):
            gauss = torch.exp(-((grid[:, None] - run_nodes[None]) ** 2) / (2 * sigma2))
            density += (gauss / math.sqrt(2 * math.pi * sigma2)) @ run_weights
        density /= len(nodes)
        density /= density.sum() * (grid[1] - grid[0])
        return grid, density

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "eigenvalues": list(self.eigenvalues),
            "k": self.k,
            "solver": self.solver,
            "objective": self.objective,
            "n": self.n,
            "loss": self.loss,
            "parameters": int(self.eigenvectors.shape[1]),
            "hvps": self.hvps,
            "iterations": self.iterations,
            "converged": self.converged,
            "tol": self.tol,
            "seconds": self.seconds,
            "normalized_eigenvalues": self.normalized_eigenvalues,
            "random_loss": self.random_loss,
            "random_losses": list(self.random_losses),
            "normalize_radius": self.normalize_radius if self.random_losses else None,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
            "trace_samples": len(self.trace_samples),
        }
        if self.density_nodes is not None and self.density_weights is not None:
            out["density"] = {
                "nodes": self.density_nodes.tolist(),
                "weights": self.density_weights.tolist(),
            }
        return out


def plot_hessian(result: HessianResult, path: str | Path) -> Path | None:
    """The top eigenvalues as bars (and, if sampled, divided by the mean random loss: Liu et al.
    2020, Fig. 2), and the SLQ spectral density on a log scale (PyHessian's plot), to ``path``.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    normalized = result.normalized_eigenvalues
    curve = result.density()
    panels = 1 + (normalized is not None) + (curve is not None)
    drawn = new_figure(ncols=panels, size=(3.8 * panels + 0.8, 4.0))
    if drawn is None:
        return None
    figure, axes = drawn
    index = list(range(1, result.k + 1))
    bars = axes[0]
    bars.bar(index, result.eigenvalues, color="tab:blue")
    bars.set_xlabel("eigenvalue rank i")
    bars.xaxis.get_major_locator().set_params(integer=True)
    bars.set_ylabel(r"$\lambda_i$ (loss per unit$^2$ of $\theta$)")
    bars.set_title("top eigenvalues")
    panel = 1
    if normalized is not None:
        axes[panel].bar(index, normalized, color="tab:orange")
        axes[panel].set_xlabel("eigenvalue rank i")
        axes[panel].xaxis.get_major_locator().set_params(integer=True)
        axes[panel].set_ylabel(r"$\lambda_i$ / mean $L(\theta + a d)$")
        axes[panel].set_title(
            f"normalized ({len(result.random_losses)} samples, a = {result.normalize_radius:g})"
        )
        panel += 1
    if curve is not None:
        grid, density = curve
        axes[panel].semilogy(grid.numpy(), (density + 1e-12).numpy(), color="tab:green")
        # Between the nodes the smoothed density falls to ~0; eight decades show the shape.
        axes[panel].set_ylim(bottom=float(density.max()) * 1e-8)
        axes[panel].set_xlabel(r"eigenvalue $\lambda$")
        axes[panel].set_ylabel("density (log scale)")
        axes[panel].set_title(f"spectral density (SLQ, {len(result.density_nodes)} runs)")
    trace = "" if result.trace is None else f"; trace ≈ {result.trace:.4g}"
    figure.suptitle(
        f"Hessian of the {result.objective} loss ({result.solver}, n = {result.n}){trace}"
    )
    return save(figure, path)


@contextmanager
def _requiring_grad(params: list[torch.Tensor]) -> Iterator[None]:
    """Let autograd differentiate with respect to ``params`` (a frozen model's too), and put
    their flags back after. Gradients are taken with ``torch.autograd.grad``: ``.grad`` stays."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def objective_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: str,
    attack: Attack | None,
    batch_size: int,
    seed: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The points the loss is averaged over, on the model's device: the natural images, or the
    attack's examples crafted once at θ and then held fixed (seed + batch index per batch)."""
    device = next(iter(model.parameters())).device
    batches = []
    for index, part in enumerate(batch_slices(len(y), batch_size)):
        xb, yb = as_float(x[part]).to(device), y[part].to(device)
        if objective == "adversarial":
            assert attack is not None
            with seeded(seed + index, device):
                xb = attack(model, xb, yb)
        batches.append((xb.detach(), yb))
    return batches


def check_k(k: int, size: int) -> int:
    """``k`` if it is a number of eigenpairs a space of ``size`` variables has (1 to ``size``).

    Raises:
        ConfigError: k <= 0, above ``size``, or not an integer.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise ConfigError("k", k, f"between 1 and the number of parameters ({size})")
    return k


def parameter_count(model: nn.Module) -> int:
    """The number of variables the Hessian of ``model``'s loss is taken over."""
    return ParameterSpace(model).size


@DIAGNOSTICS.register("hessian", data="points", attack=True, plot=plot_hessian)
def hessian(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    k: int = 20,
    solver: str = "lanczos",
    objective: str = "auto",
    attack: Attack | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    batch_size: int = 512,
    trace_samples: int = 0,
    trace_tol: float = 1e-3,
    density_runs: int = 0,
    density_steps: int = 100,
    normalize_samples: int = 0,
    normalize_radius: float = 1.0,
    seed: int = 0,
) -> HessianResult:
    """Top-k eigenvalues and eigenvectors of the Hessian of the training loss at θ.

    Liu, Salzmann, Lin, Tomioka & Süsstrunk 2020, "On the Loss Landscape of Adversarial
    Training" (NeurIPS), §4.2, Figs. 2 and 9: the top-20 eigenvalues of ∇²θ L_ε(θ) grow with
    the adversarial budget ε (sharper minima), after normalizing by the mean loss at random
    parameters. The loss is the mean cross-entropy over the points: natural, or adversarial with
    the examples crafted once at θ by ``attack`` and held fixed while the Hessian is computed
    (so it is the Hessian of a smooth function; Liu et al. ``run/calc_hessian.py``). Products
    H v come from double backward (Pearlmutter 1994), exactly, batched over the points; the
    model is in eval mode (batch norm uses its running statistics) and its mode is restored.
    The variables are the parameters that require gradients (all, for a frozen model);
    parameters the loss does not use have zero rows. Parameter ``.grad`` fields are untouched.

    Args:
        model: the classifier.
        x: images in [0, 1] (float) or uint8; y: labels (the points the loss averages over).
        k: how many eigenpairs (Liu et al.: 20), 1 to the number of parameters.
        solver: ``"lanczos"`` (default; Lanczos with full reorthogonalization, far fewer
            products for several eigenvalues) or ``"power"`` (power iteration with deflation,
            PyHessian's and Liu et al.'s). Both find the eigenvalues of largest magnitude.
        objective: ``"natural"``, ``"adversarial"`` or ``"auto"`` (adversarial when an attack
            is given).
        attack: the attack crafting the adversarial examples (and the random samples' ones).
        tol: power: relative change of an eigenvalue between iterations (PyHessian: 1e-3);
            Lanczos: relative residual bound of each wanted eigenpair.
        max_iter: power: products per eigenvalue (PyHessian: 100); Lanczos: steps in all.
        batch_size: points per forward pass.
        trace_samples: Hutchinson samples for tr(H) (0: no trace; PyHessian: up to 100).
        trace_tol: stop the trace early when its running mean changes by less (0: never).
        density_runs, density_steps: SLQ runs and Lanczos steps each for the spectral density
            (0 runs: none; PyHessian: 1 run of 100 steps).
        normalize_samples: random parameter samples θ + a·d, d filter-normalized (Li et al.
            2018), a = ``normalize_radius``; the eigenvalues are also reported divided by the
            mean loss over them (Liu et al. §4.2 sample 10 random θ; 0: no normalization).
            For the adversarial objective the examples are crafted anew at each sample.
        seed: seeds the start vectors, the random samples and the attack.

    Raises:
        ConfigError: k ≤ 0 or larger than the number of parameters, an unknown solver or
            objective, an adversarial objective without an attack, or a bad count.

    Example:
        >>> result = hessian(model, x, y, k=5, attack=create_attack("pgd", eps=0.3))
        >>> result.eigenvalues, result.eigenvector(0)["net.0.weight"].shape
    """
    started = time.perf_counter()
    space = ParameterSpace(model)
    check_k(k, space.size)
    solve = SOLVERS.get(solver)
    objective = resolve_objective(objective, attack)
    for key, value, low in (
        ("max_iter", max_iter, 1),
        ("batch_size", batch_size, 1),
        ("trace_samples", trace_samples, 0),
        ("density_runs", density_runs, 0),
        ("density_steps", density_steps, 1),
        ("normalize_samples", normalize_samples, 0),
    ):
        if value < low:
            raise ConfigError(key, value, f"must be >= {low}")
    if not len(y):
        raise ConfigError("n", 0, "no points to average the loss over")
    generator = generator_for(space.device, seed)
    with model_mode(model, "eval"):
        batches = objective_batches(model, x, y, objective, attack, batch_size, seed)
        with _requiring_grad(space.params):
            hvp = HessianOperator(model, space, batches)
            found = solve(hvp, space, k, float(tol), int(max_iter), generator)
            trace = (
                hutchinson_trace(hvp, space, trace_samples, trace_tol, generator)
                if trace_samples
                else []
            )
            nodes = weights = None
            if density_runs:
                nodes, weights = slq_density(hvp, space, density_runs, density_steps, generator)
        random_losses = []
        theta = space.flat()
        for sample in range(normalize_samples):
            d = space.filter_normalized(generator) * normalize_radius
            shifted = AtParameters(model, space.as_dict(theta + d))
            random_losses.append(
                loss_and_error(
                    shifted,
                    x,
                    y,
                    attack=attack if objective == "adversarial" else None,
                    batch_size=batch_size,
                    seed=seed + 1000 * (sample + 1),
                ).loss
            )
    return HessianResult(
        eigenvalues=found.eigenvalues,
        eigenvectors=found.eigenvectors.detach().cpu(),
        names=space.names,
        shapes=[tuple(p.shape) for p in space.params],
        solver=solver,
        objective=objective,
        n=len(y),
        loss=hvp.loss,
        hvps=hvp.hvps,
        iterations=found.iterations,
        converged=found.converged,
        tol=float(tol),
        seconds=time.perf_counter() - started,
        normalize_radius=float(normalize_radius),
        random_losses=random_losses,
        trace_samples=trace,
        density_nodes=nodes,
        density_weights=weights,
    )
