"""The loss surface around θ along one or two directions in parameter space."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import Attack, model_mode
from ..errors import ConfigError
from ..registry import Registry
from ._base import DIAGNOSTICS, DiagnosticResult
from ._parameters import (
    AtParameters,
    ParameterSpace,
    generator_for,
    loss_and_error,
    resolve_objective,
)
from ._plot import new_figure, save


@dataclass
class DirectionRequest:
    """What a direction maker may use: the model, its points and the measurement's settings."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    space: ParameterSpace
    count: int
    objective: str
    attack: Attack | None
    batch_size: int
    seed: int
    generator: torch.Generator


@dataclass
class Directions:
    """``(count, P)`` flat directions, and what they are (eigenvalues for Hessian ones)."""

    vectors: torch.Tensor
    label: str
    eigenvalues: list[float] | None = None


# Direction kinds: each maps a request to ``count`` directions in the space.
DIRECTIONS: Registry[Callable[[DirectionRequest], Directions]] = Registry(
    "landscape direction", "directions"
)


@DIRECTIONS.register("random")
def filter_normalized_directions(request: DirectionRequest) -> Directions:
    """Filter-normalized Gaussian directions (Li et al. 2018, §4), one per axis: a coordinate of
    1 moves every filter by its own norm, so surfaces of differently scaled networks compare."""
    vectors = torch.stack(
        [request.space.filter_normalized(request.generator) for _ in range(request.count)]
    )
    return Directions(vectors, "filter-normalized random directions")


@DIRECTIONS.register("hessian")
def hessian_directions(request: DirectionRequest) -> Directions:
    """The top eigenvectors of the Hessian of the same objective (unit norm), as Liu et al.
    2020, App. C.2.2, Fig. 12: "v1, v2 are the first and second unit eigenvectors"."""
    from .hessian import hessian

    found = hessian(
        request.model,
        request.x,
        request.y,
        k=request.count,
        objective=request.objective,
        attack=request.attack,
        batch_size=request.batch_size,
        seed=request.seed,
    )
    return Directions(
        found.eigenvectors.to(request.space.device, request.space.dtype),
        "top Hessian eigenvectors",
        found.eigenvalues,
    )


def grid_coordinates(radius: float, points: int) -> list[float]:
    """``points`` evenly spaced values in [−radius, radius], symmetric, with 0 exactly in the
    middle for an odd count (i − (points − 1)/2 times the spacing)."""
    if points == 1:
        return [0.0]
    step = 2 * radius / (points - 1)
    return [(i - (points - 1) / 2) * step for i in range(points)]


@dataclass(repr=False)
class LandscapeResult(DiagnosticResult):
    """Loss and error on a grid of θ + a₁·d₁ (+ a₂·d₂).

    Attributes:
        coords: the grid's values along each axis (the same for both axes).
        loss, error: ``(points,)`` for one direction, ``(points, points)`` for two, indexed
            ``[i, j]`` at a₁ = coords[i], a₂ = coords[j]; error is a fraction in [0, 1].
        directions: the direction kind; ``label``: what they are.
        objective, n: the loss (natural or adversarial) and the number of points.
        eigenvalues: the eigenvalues of Hessian directions, else ``None``.
    """

    coords: list[float]
    loss: torch.Tensor
    error: torch.Tensor
    directions: str
    label: str
    objective: str
    n: int
    seconds: float
    eigenvalues: list[float] | None = None

    @property
    def dims(self) -> int:
        return self.loss.dim()

    def at_origin(self) -> tuple[float, float] | None:
        """Loss and error at θ itself, when 0 is on the grid (an odd number of points)."""
        if 0.0 not in self.coords:
            return None
        i = self.coords.index(0.0)
        index = (i,) * self.dims
        return float(self.loss[index]), float(self.error[index])

    def summary(self) -> dict[str, Any]:
        origin = self.at_origin()
        return {
            "dims": self.dims,
            "directions": self.directions,
            "objective": self.objective,
            "n": self.n,
            "coords": list(self.coords),
            "loss": self.loss.tolist(),
            "error": self.error.tolist(),
            "origin_loss": origin[0] if origin else None,
            "origin_error": origin[1] if origin else None,
            "max_loss": float(self.loss.max()),
            "min_loss": float(self.loss.min()),
            "eigenvalues": self.eigenvalues,
            "seconds": self.seconds,
        }


def plot_landscape(result: LandscapeResult, path: str | Path) -> Path | None:
    """The surface to ``path`` (PNG): for one direction the loss and the error along it (Li et
    al. 2018, Fig. 4); for two a filled contour map and a 3-D surface of the loss (Liu et al.
    2020, Fig. 12).

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    objective = f"{result.objective} loss"
    coords = torch.tensor(result.coords)
    if result.dims == 1:
        drawn = new_figure(ncols=2, size=(9.0, 4.0))
        if drawn is None:
            return None
        figure, (loss_axis, error_axis) = drawn
        loss_axis.plot(coords.numpy(), result.loss.numpy(), color="tab:blue", marker=".")
        loss_axis.set_ylabel(f"{objective} (cross-entropy)")
        error_axis.plot(coords.numpy(), 100 * result.error.numpy(), color="tab:red", marker=".")
        error_axis.set_ylabel(f"{result.objective} error (%)")
        for axis in (loss_axis, error_axis):
            axis.set_xlabel(r"$a$ (step along $d$, in units of $d$)")
            axis.axvline(0.0, color="gray", linestyle=":", linewidth=1)
        figure.suptitle(f"{objective.capitalize()} along {result.label} (n = {result.n})")
        return save(figure, path)
    drawn = new_figure(ncols=2, size=(10.5, 4.6))
    if drawn is None:
        return None
    figure, (contour_axis, placeholder) = drawn
    placeholder.remove()
    surface_axis = figure.add_subplot(1, 2, 2, projection="3d")
    a1, a2 = torch.meshgrid(coords, coords, indexing="ij")
    loss = result.loss.numpy()
    filled = contour_axis.contourf(a1.numpy(), a2.numpy(), loss, levels=20, cmap="viridis")
    contour_axis.contour(
        a1.numpy(), a2.numpy(), loss, levels=20, colors="white", linewidths=0.4, alpha=0.6
    )
    contour_axis.plot([0.0], [0.0], marker="+", color="red", markersize=10)
    figure.colorbar(filled, ax=contour_axis, label=f"{objective} (cross-entropy)")
    contour_axis.set_title("contours (+: θ)")
    surface_axis.plot_surface(a1.numpy(), a2.numpy(), loss, cmap="viridis", linewidth=0)
    surface_axis.set_zlabel("loss", labelpad=10)
    surface_axis.set_box_aspect(None, zoom=0.85)  # room for the z label inside the panel
    surface_axis.set_title("surface")
    for axis in (contour_axis, surface_axis):
        axis.set_xlabel(r"$a_1$ (along $d_1$)")
        axis.set_ylabel(r"$a_2$ (along $d_2$)")
    figure.suptitle(f"{objective.capitalize()} around θ along {result.label} (n = {result.n})")
    return save(figure, path)


@DIAGNOSTICS.register("landscape", data="points", attack=True, plot=plot_landscape)
def landscape(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    directions: str = "random",
    dims: int = 2,
    radius: float = 1.0,
    points: int = 11,
    objective: str = "auto",
    attack: Attack | None = None,
    batch_size: int = 512,
    seed: int = 0,
) -> LandscapeResult:
    """Loss and error of θ + a₁·d₁ (+ a₂·d₂) on a grid of a in [−radius, radius].

    Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets"
    (NeurIPS), §4: surfaces along filter-normalized random directions; Liu et al. 2020,
    App. C.2.2, Fig. 12: the adversarial loss L_ε along the top two Hessian eigenvectors is
    sharper for larger ε. For the adversarial objective the examples are crafted anew at every
    grid point (L_ε(θ') maximizes over δ at θ'; Liu et al.'s ``param_scan`` attacks each moved
    model), each time from the same random start (one seed), so the surface does not jitter
    with the attack's randomness. The model is evaluated in eval mode and never modified.

    Args:
        model: the classifier.
        x: images in [0, 1] (float) or uint8; y: labels.
        directions: ``"random"`` (filter-normalized, Li et al.; default) or ``"hessian"`` (top
            eigenvectors of the same objective's Hessian, unit norm; Liu et al.).
        dims: 1 (a line) or 2 (a surface).
        radius, points: the grid along each axis (``points`` values in [−radius, radius],
            default 11; an odd count puts θ itself in the middle). Li et al. draw 51 × 51;
            every grid point costs a pass over the points (an attack, for the adversarial
            loss), so a 2-D grid costs ``points²`` of them.
        objective: ``"natural"``, ``"adversarial"`` or ``"auto"`` (adversarial with an attack).
        attack: the attack of the adversarial loss.
        batch_size: points per forward pass.
        seed: seeds the directions and the attack.

    Raises:
        ConfigError: an unknown direction kind or objective, ``dims`` not 1 or 2, a grid with
            no points, or a radius that is not a finite number >= 0.

    Example:
        >>> surface = landscape(model, x, y, directions="hessian", attack=attack, points=11)
        >>> surface.loss.shape  # (11, 11)
    """
    started = time.perf_counter()
    make_directions = DIRECTIONS.get(directions)
    objective = resolve_objective(objective, attack)
    if dims not in (1, 2):
        raise ConfigError("dims", dims, "1 (a line) or 2 (a surface)")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ConfigError("points", points, "a grid with no points; at least 1 per axis")
    if not (isinstance(radius, int | float) and radius >= 0 and radius != float("inf")):
        raise ConfigError("radius", radius, "a finite number >= 0")
    space = ParameterSpace(model)
    generator = generator_for(space.device, seed)
    request = DirectionRequest(
        model, x, y, space, dims, objective, attack, batch_size, seed, generator
    )
    with model_mode(model, "eval"):
        found = make_directions(request)
        coords = grid_coordinates(float(radius), points)
        theta = space.flat()
        shape = (points,) * dims
        loss = torch.zeros(shape, dtype=torch.float64)
        error = torch.zeros(shape, dtype=torch.float64)
        for index in torch.cartesian_prod(*[torch.arange(points)] * dims).reshape(-1, dims):
            where = tuple(int(i) for i in index)
            shift = sum(coords[i] * found.vectors[axis] for axis, i in enumerate(where))
            moved = AtParameters(model, space.as_dict(theta + shift))
            value = loss_and_error(
                moved,
                x,
                y,
                attack=attack if objective == "adversarial" else None,
                batch_size=batch_size,
                seed=seed,
            )
            loss[where], error[where] = value.loss, value.error
    return LandscapeResult(
        coords=coords,
        loss=loss,
        error=error,
        directions=directions,
        label=found.label,
        objective=objective,
        n=len(y),
        seconds=time.perf_counter() - started,
        eigenvalues=found.eigenvalues,
    )
