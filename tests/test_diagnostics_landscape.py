"""Loss landscapes: the origin is the model itself, the curvature along an eigenvector is its
eigenvalue, filter normalization scales each filter, and bad grids are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.diagnostics import DIRECTIONS, hessian, landscape, plot_landscape
from robustlab.diagnostics._parameters import ParameterSpace, generator_for, seeded
from robustlab.diagnostics.landscape import grid_coordinates
from robustlab.errors import ConfigError, UnknownNameError


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
    )


def points(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(
        0, 4, (n,), generator=generator
    )


@pytest.mark.parametrize(("directions", "dims"), [("random", 1), ("random", 2), ("hessian", 2)])
def test_the_origin_is_the_models_natural_loss(directions: str, dims: int, one_thread) -> None:
    model = small_cnn()
    model[1].running_mean.uniform_(-0.5, 0.5)  # eval-mode batch norm must be what is measured
    model.eval()
    x, y = points()
    with torch.no_grad():
        logits = model(x)
    result = landscape(model, x, y, directions=directions, dims=dims, points=5, radius=0.5)
    assert result.loss.shape == (5,) * dims and result.objective == "natural"
    loss, error = result.at_origin()
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), abs=1e-6)
    assert error == pytest.approx(float((logits.argmax(1) != y).float().mean()))
    assert result.summary()["origin_loss"] == loss
    assert result.coords == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])


def test_the_adversarial_origin_is_the_models_loss_under_the_same_attack(one_thread) -> None:
    model = small_cnn().eval()
    x, y = points()
    attack = create_attack("pgd", eps=0.1, steps=3)
    result = landscape(model, x, y, attack=attack, dims=1, points=3, radius=0.2, seed=5)
    with seeded(5, x.device):  # every grid point is attacked from the same start (seed + batch)
        x_adv = attack(model, x, y)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x_adv), y))
    assert result.objective == "adversarial"
    assert result.at_origin()[0] == pytest.approx(expected, abs=1e-6)
    assert result.loss[1] <= result.loss.max()


def test_curvature_along_the_top_eigenvector_is_its_eigenvalue(one_thread) -> None:
    """(L(h) − 2 L(0) + L(−h)) / h² → vᵀHv = λ₁ along the unit eigenvector v (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    x, y = points()
    x = x.double()
    top = hessian(model, x, y, k=1, tol=1e-10, max_iter=500).eigenvalues[0]
    h = 1e-3
    result = landscape(model, x, y, directions="hessian", dims=1, points=3, radius=h)
    second_difference = float(result.loss[0] - 2 * result.loss[1] + result.loss[2]) / h**2
    assert second_difference == pytest.approx(top, rel=1e-3)
    assert result.eigenvalues[0] == pytest.approx(top, rel=1e-6)


def test_filter_normalized_directions_match_each_filters_norm() -> None:
    model = small_cnn()
    space = ParameterSpace(model)
    direction = space.filter_normalized(generator_for(torch.device("cpu"), 0))
    for part, param in zip(space.split(direction), space.params, strict=True):
        if param.dim() <= 1:  # biases and batch-norm parameters get no direction
            assert torch.count_nonzero(part) == 0
        else:
            rows = part.reshape(param.shape[0], -1).norm(dim=1)
            expected = param.detach().reshape(param.shape[0], -1).norm(dim=1)
            assert torch.allclose(rows, expected, rtol=1e-5)


def test_grid_is_symmetric_with_zero_in_the_middle() -> None:
    assert grid_coordinates(1.0, 21)[10] == 0.0
    assert grid_coordinates(0.3, 1) == [0.0]
    coords = grid_coordinates(0.7, 6)
    assert coords == pytest.approx([-c for c in reversed(coords)]) and 0.0 not in coords


def test_the_model_is_not_modified(one_thread) -> None:
    model = small_cnn()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = points()
    landscape(model, x, y, dims=1, points=3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"directions": "eigen"}, UnknownNameError, "valid: hessian, random"),
        ({"points": 0}, ConfigError, "points=0: a grid with no points"),
        ({"dims": 3}, ConfigError, "dims=3"),
        ({"radius": float("nan")}, ConfigError, "radius=nan"),
    ],
)
def test_bad_input_is_one_config_error(options: dict, error: type, match: str) -> None:
    x, y = points(4)
    with pytest.raises(error, match=match):
        landscape(small_cnn(), x, y, **options)
    assert issubclass(error, ConfigError)


def test_direction_kinds_are_a_registry() -> None:
    assert DIRECTIONS.names() == ["hessian", "random"]


@pytest.mark.parametrize("dims", [1, 2])
def test_plot_writes_a_png(dims: int, tmp_path, one_thread) -> None:
    x, y = points(8)
    result = landscape(small_cnn(), x, y, dims=dims, points=3)
    path = plot_landscape(result, tmp_path / f"landscape{dims}.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_a_torchscript_model_has_the_eager_models_surface(one_thread) -> None:
    """torch.func refuses TorchScript modules; the moved weights reach them another way."""
    model, (x, y) = small_cnn().eval(), points(12)
    eager = landscape(model, x, y, dims=1, points=3, objective="natural")
    scripted = landscape(torch.jit.script(model), x, y, dims=1, points=3, objective="natural")
    assert torch.allclose(scripted.loss, eager.loss) and scripted.loss[0] != scripted.loss[1]
