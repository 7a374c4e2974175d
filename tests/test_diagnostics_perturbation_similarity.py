"""Perturbation similarity at θ ± a·v: exactly 1 at a = 0, the eigenvector is the Hessian's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import create_attack
from robustlab.diagnostics import (
    hessian,
    perturbation_similarity,
    plot_perturbation_similarity,
)
from robustlab.diagnostics._parameters import seeded
from robustlab.diagnostics.perturbation_similarity import perturbation_cosine
from robustlab.errors import ConfigError


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def points(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(
        0, 4, (n,), generator=generator
    )


def test_similarity_is_one_at_zero_and_the_robust_error_is_the_models(one_thread) -> None:
    """At a = 0 both attacks run at θ from the same random start: the same perturbation."""
    model = small_mlp()
    x, y = points()
    attack = create_attack("pgd", eps=0.1, steps=4)  # a random start: seeding must matter
    result = perturbation_similarity(
        model, x, y, attack=attack, a=[0.0, 0.5, 2.0], random_directions=2, repeats=2, seed=4
    )
    assert result.similarity.shape == (3, 3)
    assert result.similarity[:, 0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert (result.similarity <= 1 + 1e-12).all()
    assert result.similarity[0, 2] < 0.99  # moving the weights moves the examples
    assert torch.equal(result.error_plus[:, 0], result.error_minus[:, 0])
    wrong = 0
    for r in range(2):  # the same seeds as the measurement's (seed + 7919·(r + 1) + batch)
        with seeded(4 + 7919 * (r + 1), x.device):
            x_adv = attack(model, x, y)
        wrong += int((model(x_adv).argmax(1) != y).sum())
    assert float(result.error_plus[0, 0]) == pytest.approx(wrong / (2 * len(y)))
    summary = result.summary()
    assert summary["directions"] == ["top Hessian eigenvector", "random 1", "random 2"]
    assert summary["similarity"][0][0] == pytest.approx(1.0)


def test_the_direction_is_the_top_eigenvector_of_the_adversarial_loss(one_thread) -> None:
    model = small_mlp()
    x, y = points()
    attack = create_attack("pgd", eps=0.1, steps=2)
    result = perturbation_similarity(model, x, y, attack=attack, a=[0.1], random_directions=0)
    top = hessian(model, x, y, k=1, attack=attack, seed=0)
    assert result.eigenvalue == pytest.approx(top.eigenvalues[0], rel=1e-6)
    assert result.directions == ["top Hessian eigenvector"]


def test_cosine_of_zero_perturbations() -> None:
    zero, some = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    assert perturbation_cosine(zero, zero).tolist() == [1.0]  # both stayed put: the same
    assert perturbation_cosine(zero, some).tolist() == [0.0]
    assert perturbation_cosine(some, -some).tolist() == [-1.0]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"a": []}, r"a=\[\]: a grid with no points"),
        ({"a": [0.0, float("inf")]}, "finite"),
        ({"repeats": 0}, "repeats=0"),
    ],
)
def test_bad_input_is_one_config_error(options: dict, match: str) -> None:
    x, y = points(4)
    attack = create_attack("pgd", eps=0.1, steps=1)
    with pytest.raises(ConfigError, match=match):
        perturbation_similarity(small_mlp(), x, y, attack=attack, **options)


def test_plot_writes_a_png(tmp_path, one_thread) -> None:
    x, y = points(8)
    attack = create_attack("pgd", eps=0.1, steps=2)
    result = perturbation_similarity(small_mlp(), x, y, attack=attack, a=[0.0, 0.5])
    path = plot_perturbation_similarity(result, tmp_path / "similarity.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
