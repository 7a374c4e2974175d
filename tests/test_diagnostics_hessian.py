"""The Hessian measurement against the exact Hessian of a tiny MLP's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robustlab.attacks import create_attack
from robustlab.diagnostics import SOLVERS, hessian, plot_hessian
from robustlab.diagnostics._parameters import seeded
from robustlab.errors import ConfigError, UnknownNameError


def tiny_mlp() -> nn.Module:
    """6 inputs, 5 tanh units, 3 classes: 53 parameters, in float64 for exact references."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


class WithUnusedHead(nn.Module):
    """A model with a parameter its forward pass never uses (an unused auxiliary head)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.unused = net, nn.Linear(4, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def points(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 2, 3, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=generator)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names=None) -> torch.Tensor:
    """torch.autograd.functional.hessian of the mean CE over the (named) parameters."""
    named = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    shapes = [p.shape for _, p in named]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split([s.numel() for s in shapes])
        tensors = {n: t.view(s) for (n, _), t, s in zip(named, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, tensors, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for _, p in named])
    return torch.autograd.functional.hessian(loss, theta)


def top_by_magnitude(matrix: torch.Tensor, k: int) -> torch.Tensor:
    values = torch.linalg.eigvalsh(matrix)
    return values[values.abs().argsort(descending=True)][:k]


@pytest.mark.parametrize("solver", ["power", "lanczos"])
@pytest.mark.parametrize("batch_size", [64, 16])  # one batch (graph kept) and three batches
def test_top3_eigenvalues_match_the_exact_hessian(solver: str, batch_size: int, one_thread) -> None:
    model = tiny_mlp()
    x, y = points()
    exact = top_by_magnitude(exact_hessian(model, x, y), 3)
    result = hessian(
        model, x, y, k=3, solver=solver, tol=1e-7, max_iter=2000, batch_size=batch_size
    )
    assert result.converged
    relative = (torch.tensor(result.eigenvalues, dtype=torch.float64) - exact).abs() / exact.abs()
    assert relative.max() < 1e-3, (result.eigenvalues, exact.tolist())
    assert result.summary()["eigenvalues"] == result.eigenvalues
    assert result.loss == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-12)


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_eigenvectors_are_orthonormal_eigenvectors(solver: str, one_thread) -> None:
    model = tiny_mlp()
    x, y = points()
    exact = exact_hessian(model, x, y)
    result = hessian(model, x, y, k=3, solver=solver, tol=1e-8, max_iter=2000)
    vectors = result.eigenvectors.double()
    assert vectors.shape == (3, 53)
    assert torch.allclose(vectors @ vectors.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    for value, vector in zip(result.eigenvalues, vectors, strict=True):
        residual = (exact @ vector - value * vector).norm() / abs(value)
        assert residual < 1e-2
    shaped = result.eigenvector(0)
    assert list(shaped) == [n for n, _ in model.named_parameters()]
    assert shaped["3.weight"].shape == (3, 5)


def test_lanczos_resolves_clustered_eigenvalues_with_fewer_products(one_thread) -> None:
    """Eigenvalues 4 to 7 of this Hessian lie within 0.03 of ±0.36: power iteration with
    deflation stalls there (its budget runs out, unconverged), Lanczos gets all five exactly."""
    model = tiny_mlp()
    x, y = points()
    exact = top_by_magnitude(exact_hessian(model, x, y), 5)
    settings = {"k": 5, "tol": 1e-4, "max_iter": 500}
    power = hessian(model, x, y, solver="power", **settings)
    lanczos = hessian(model, x, y, solver="lanczos", **settings)
    assert lanczos.converged and lanczos.hvps < power.hvps / 10
    assert lanczos.eigenvalues == pytest.approx(exact.tolist(), rel=1e-6)
    assert power.eigenvalues[:3] == pytest.approx(exact[:3].tolist(), rel=1e-3)
    assert not power.converged and power.summary()["converged"] is False


def test_hutchinson_trace_is_within_5_percent_of_the_exact_trace(one_thread) -> None:
    """Softmax regression on centred inputs: a Hessian with small off-diagonal mass, so 500
    Rademacher samples put the estimate within 0.4% (one standard error) of the trace, and
    5% is a margin of over ten standard errors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 10)).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 2, 3, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 10, (200,), generator=generator)
    exact = float(exact_hessian(model, x, y).trace())
    result = hessian(model, x, y, k=1, trace_samples=500, trace_tol=0.0)
    assert result.summary()["trace_samples"] == 500
    assert result.trace == pytest.approx(exact, rel=0.05)
    assert abs(result.trace - exact) < 4 * result.trace_stderr
    # PyHessian's stopping rule ends early once the running mean settles.
    early = hessian(model, x, y, k=1, trace_samples=500, trace_tol=1e-2)
    assert 1 < early.summary()["trace_samples"] < 500


def test_density_with_a_full_basis_is_the_exact_spectrum(one_thread) -> None:
    """Stochastic Lanczos quadrature with as many steps as parameters has the eigenvalues as
    its nodes; the weights are a probability distribution."""
    model = tiny_mlp()
    x, y = points()
    spectrum = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    result = hessian(model, x, y, k=1, density_runs=2, density_steps=53)
    assert result.density_nodes.shape == result.density_weights.shape == (2, 53)
    assert torch.allclose(result.density_weights.sum(1), torch.ones(2, dtype=torch.float64))
    for nodes in result.density_nodes:
        assert torch.allclose(nodes.sort().values, spectrum, atol=1e-6)
    grid, density = result.density(points=2000)
    assert float(density.sum() * (grid[1] - grid[0])) == pytest.approx(1.0)


def test_adversarial_objective_holds_the_examples_fixed(one_thread) -> None:
    """The adversarial Hessian is the natural Hessian at the examples crafted once at θ."""
    model = tiny_mlp()
    x, y = points(24)
    attack = create_attack("pgd", eps=0.1, steps=3)
    adversarial = hessian(model, x, y, k=2, attack=attack, tol=1e-6, max_iter=500, seed=3)
    with seeded(3, x.device):  # batch 0 of the measurement is seeded with seed + 0
        x_adv = attack(model, x, y)
    natural = hessian(model, x_adv, y, k=2, objective="natural", tol=1e-6, max_iter=500, seed=3)
    assert adversarial.objective == "adversarial" and natural.objective == "natural"
    assert adversarial.eigenvalues == pytest.approx(natural.eigenvalues, rel=1e-9)
    assert adversarial.loss == pytest.approx(natural.loss, rel=1e-12)


def test_frozen_and_unused_parameters(one_thread) -> None:
    x, y = points()
    # Frozen layers are constants: the Hessian is over the others only.
    model = tiny_mlp()
    model[1].requires_grad_(False)
    exact = top_by_magnitude(exact_hessian(model, x, y, names={"3.weight", "3.bias"}), 2)
    result = hessian(model, x, y, k=2, tol=1e-8, max_iter=500)
    assert result.names == ["3.weight", "3.bias"]
    assert result.eigenvalues == pytest.approx(exact.tolist(), rel=1e-6)
    assert not model[1].weight.requires_grad  # the flags are put back
    # A model frozen for evaluation is still a function of all its weights.
    model.requires_grad_(False)
    assert hessian(model, x, y, k=1).eigenvectors.shape == (1, 53)
    assert not any(p.requires_grad for p in model.parameters())
    # A parameter the loss never uses has a zero row: the top eigenvalues do not change.
    model = tiny_mlp()
    reference = hessian(model, x, y, k=2, tol=1e-8, max_iter=500).eigenvalues
    model = WithUnusedHead(model)
    result = hessian(model, x, y, k=2, tol=1e-8, max_iter=500)
    assert result.eigenvectors.shape == (2, 53 + 20)
    assert result.eigenvalues == pytest.approx(reference, rel=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_eigenvalues_normalized_by_the_mean_loss_at_random_samples(one_thread) -> None:
    model = tiny_mlp()
    x, y = points()
    result = hessian(model, x, y, k=2, normalize_samples=3, normalize_radius=0.5)
    assert len(result.random_losses) == 3 and all(v > 0 for v in result.random_losses)
    assert len(set(result.random_losses)) == 3  # three different samples
    mean = sum(result.random_losses) / 3
    assert result.normalized_eigenvalues == pytest.approx([v / mean for v in result.eigenvalues])
    assert result.summary()["random_loss"] == pytest.approx(mean)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"k": 0}, "k=0"),
        ({"k": -2}, "k=-2"),
        ({"k": 54}, r"k=54: between 1 and the number of parameters \(53\)"),
        ({"objective": "adversarial"}, "needs an attack"),
        ({"objective": "robust"}, "objective='robust'"),
        ({"k": 1, "trace_samples": -1}, "trace_samples=-1"),
    ],
)
def test_bad_input_is_one_config_error(options: dict, match: str) -> None:
    x, y = points(4)
    with pytest.raises(ConfigError, match=match):
        hessian(tiny_mlp(), x, y, **options)


def test_unknown_solver_lists_the_valid_ones() -> None:
    x, y = points(4)
    with pytest.raises(UnknownNameError, match="valid: lanczos, power"):
        hessian(tiny_mlp(), x, y, k=1, solver="arnoldi")


def test_plot_writes_a_png(tmp_path, one_thread) -> None:
    model = tiny_mlp()
    x, y = points()
    result = hessian(model, x, y, k=4, density_runs=1, density_steps=20, normalize_samples=2)
    path = plot_hessian(result, tmp_path / "hessian.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
