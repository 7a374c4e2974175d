"""How much adversarial examples move when the weights move: cos(x'_{θ+av} − x, x'_{θ−av} − x)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Attack, model_mode
from ..errors import ConfigError
from ._base import DIAGNOSTICS, DiagnosticResult, as_float, batch_slices
from ._parameters import AtParameters, ParameterSpace, check_grid, generator_for, seeded
from ._plot import new_figure, save

# Liu et al. 2020, Fig. 3 moves ResNet-18's weights by up to a few units along unit directions.
DEFAULT_A = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def perturbation_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-point cosine similarity of two perturbations (B x ...), in float64.

    Two zero perturbations (the attack left both points where they were) are the same
    perturbation, similarity 1; one zero and one not, 0.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    cos = F.cosine_similarity(a, b, dim=1, eps=1e-30)
    both_zero = (a.abs().sum(1) == 0) & (b.abs().sum(1) == 0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


@dataclass(repr=False)
class PerturbationSimilarityResult(DiagnosticResult):
    """Per direction and step a: mean perturbation similarity and robust errors at θ ± a·v.

    Attributes:
        a: the steps.
        directions: a label per direction (the top eigenvector first, then random ones).
        similarity: ``(directions, len(a))``: the mean over points (and repeats) of the cosine
            similarity of the perturbations found at θ + a·v and θ − a·v.
        similarity_std: its standard deviation over repeats (0 with one repeat).
        error_plus, error_minus: ``(directions, len(a))``: robust error (fraction of the
            attack's examples misclassified, over points and repeats) at θ + a·v and θ − a·v.
        eigenvalue: the top Hessian eigenvalue of the adversarial loss (v's).
        attack: the attack's name; ``n``: the points; ``repeats``: seeds per value.
    """

    a: list[float]
    directions: list[str]
    similarity: torch.Tensor
    similarity_std: torch.Tensor
    error_plus: torch.Tensor
    error_minus: torch.Tensor
    eigenvalue: float
    attack: str
    n: int
    repeats: int
    seconds: float

    @property
    def robust_error(self) -> torch.Tensor:
        """The robust error averaged over the two sides, ``(directions, len(a))``."""
        return (self.error_plus + self.error_minus) / 2

    def summary(self) -> dict[str, Any]:
        return {
            "a": list(self.a),
            "directions": list(self.directions),
            "similarity": self.similarity.tolist(),
            "similarity_std": self.similarity_std.tolist(),
            "robust_error_plus": self.error_plus.tolist(),
            "robust_error_minus": self.error_minus.tolist(),
            "robust_error": self.robust_error.tolist(),
            "eigenvalue": self.eigenvalue,
            "attack": self.attack,
            "n": self.n,
            "repeats": self.repeats,
            "seconds": self.seconds,
        }


def plot_perturbation_similarity(
    result: PerturbationSimilarityResult, path: str | Path
) -> Path | None:
    """Similarity and robust error against a, the top eigenvector against random directions
    (Liu et al. 2020, Figs. 3 and 10), to ``path`` (PNG).

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = new_figure(ncols=2, size=(10.0, 4.0))
    if drawn is None:
        return None
    figure, (similarity_axis, error_axis) = drawn
    for index, label in enumerate(result.directions):
        top = index == 0
        style = {
            "color": "tab:red" if top else "tab:blue",
            "linestyle": "-" if top else "--",
            "marker": "o" if top else ".",
            "label": label,
            "alpha": 1.0 if top else 0.7,
        }
        similarity_axis.plot(result.a, result.similarity[index].tolist(), **style)
        error_axis.plot(result.a, (100 * result.robust_error[index]).tolist(), **style)
    similarity_axis.set_ylabel(r"cosine similarity of $x'_{+av} - x$ and $x'_{-av} - x$")
    similarity_axis.set_ylim(top=1.02)
    error_axis.set_ylabel(r"robust error at $\theta \pm a v$ (%, mean of both)")
    for axis in (similarity_axis, error_axis):
        axis.set_xlabel(r"$a$ (step along the unit direction $v$)")
    similarity_axis.legend(fontsize=8)
    figure.suptitle(
        f"Adversarial perturbations at θ ± a·v under {result.attack} (n = {result.n}, "
        f"λ₁ = {result.eigenvalue:.3g})"
    )
    return save(figure, path)


@DIAGNOSTICS.register(
    "perturbation_similarity", data="points", attack=True, plot=plot_perturbation_similarity
)
def perturbation_similarity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: Attack,
    a: Sequence[float] = DEFAULT_A,
    random_directions: int = 1,
    repeats: int = 1,
    batch_size: int = 512,
    seed: int = 0,
) -> PerturbationSimilarityResult:
    """Cosine similarity of the adversarial perturbations at θ + a·v and θ − a·v, and the
    robust error there, for v the top Hessian eigenvector and for random unit directions.

    Liu, Salzmann, Lin, Tomioka & Süsstrunk 2020, §4.2, Fig. 3 (CIFAR-10) and App. C.2.2,
    Fig. 10 (MNIST): along a random direction the perturbations barely change and the robust
    error stays flat; along the top eigenvector of ∇²θ L_ε (the most curved direction) the
    similarity drops and the error rises quickly with a. The abrupt change of the adversarial
    examples is what makes L_ε non-smooth (their §3.2). Both attacks of a pair start from the
    same random point (one seed), so at a = 0 the two perturbations are identical (similarity
    1) and any difference at a > 0 comes from the weights; Liu et al. average 4 runs
    (``repeats``, each with its own seed). v is a unit vector in the space of all trainable
    parameters: the eigenvector of the Hessian of the adversarial loss at θ (examples crafted
    once, :func:`hessian`), random directions Gaussian and normalized (Liu et al.'s
    ``perturb_param.py``).

    Args:
        model: the classifier (evaluated in eval mode, never modified).
        x: images in [0, 1] (float) or uint8; y: labels (Liu et al.: the training set).
        attack: the attack whose perturbations are compared (Liu et al.: PGD).
        a: the steps (default 0, 0.05, 0.1, 0.2, 0.5, 1).
        random_directions: how many random unit directions besides the eigenvector.
        repeats: runs per step, each with its own attack seed (Liu et al.: 4).
        batch_size: points per attack call.
        seed: seeds the directions and the attacks.

    Raises:
        ConfigError: a grid of a with no points, or a count below its minimum.

    Example:
        >>> result = perturbation_similarity(model, x, y, attack=create_attack("pgd", eps=0.3))
        >>> result.similarity[0]  # the top eigenvector's, one value per a
    """
    from .hessian import hessian

    started = time.perf_counter()
    steps = check_grid("a", a)
    for key, value, low in (
        ("random_directions", random_directions, 0),
        ("repeats", repeats, 1),
        ("batch_size", batch_size, 1),
    ):
        if value < low:
            raise ConfigError(key, value, f"must be >= {low}")
    space = ParameterSpace(model)
    generator = generator_for(space.device, seed)
    top = hessian(
        model, x, y, k=1, objective="adversarial", attack=attack, batch_size=batch_size, seed=seed
    )
    vectors = [top.eigenvectors[0].to(space.device, space.dtype)]
    vectors += [space.random_unit(generator) for _ in range(random_directions)]
    labels = ["top Hessian eigenvector"] + [f"random {i + 1}" for i in range(random_directions)]
    theta = space.flat()
    shape = (len(vectors), len(steps))
    similarity = torch.zeros((*shape, repeats), dtype=torch.float64)
    wrong_plus = torch.zeros(shape, dtype=torch.float64)
    wrong_minus = torch.zeros(shape, dtype=torch.float64)
    device = space.device
    with model_mode(model, "eval"):
        for d, v in enumerate(vectors):
            for s, step in enumerate(steps):
                plus = AtParameters(model, space.as_dict(theta + step * v))
                minus = AtParameters(model, space.as_dict(theta - step * v))
                for r in range(repeats):
                    total = 0.0
                    for b, part in enumerate(batch_slices(len(y), batch_size)):
                        xb, yb = as_float(x[part]).to(device), y[part].to(device)
                        attack_seed = seed + 7919 * (r + 1) + b
                        with seeded(attack_seed, device):
                            x_plus = attack(plus, xb, yb)
                        with seeded(attack_seed, device):
                            x_minus = attack(minus, xb, yb)
                        total += float(perturbation_cosine(x_plus - xb, x_minus - xb).sum())
                        with torch.no_grad():
                            wrong_plus[d, s] += float((plus(x_plus).argmax(1) != yb).sum())
                            wrong_minus[d, s] += float((minus(x_minus).argmax(1) != yb).sum())
                    similarity[d, s, r] = total / max(len(y), 1)
    attacked = max(len(y), 1) * repeats
    return PerturbationSimilarityResult(
        a=steps,
        directions=labels,
        similarity=similarity.mean(-1),
        similarity_std=similarity.std(-1, correction=0),
        error_plus=wrong_plus / attacked,
        error_minus=wrong_minus / attacked,
        eigenvalue=top.eigenvalues[0],
        attack=getattr(attack, "name", type(attack).__name__),
        n=len(y),
        repeats=repeats,
        seconds=time.perf_counter() - started,
    )
