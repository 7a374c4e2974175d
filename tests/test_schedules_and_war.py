"""LR and ε schedules, PAS periods, WAR's λ recurrence, generalized AT, the Lipschitz estimate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.config import build_config
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.evaluation.lipschitz import local_lipschitz
from robustlab.models import SnapshotEnsemble, create_model
from robustlab.training import create_method
from robustlab.training.eps_schedules import create_eps_schedule
from robustlab.training.lam_schedules import create_lambda_schedule
from robustlab.training.methods import frozen_batch_norm_statistics
from robustlab.training.schedules import ScheduleClock, create_schedule

# ---------------------------------------------------------------------------------------------
# Learning-rate schedules: the exact values of their formulas.


def test_exp_decay_halves_every_epoch_after_the_start() -> None:
    schedule = create_schedule("exp_decay", 100, [75], 0.1)
    assert schedule(0) == 1 and schedule(74.99) == 1
    assert schedule(75) == 0.5 and schedule(75.9) == 0.5  # the 76th epoch at half the LR
    assert schedule(76) == 0.25 and schedule(80) == 0.5**6
    default = create_schedule("exp_decay", 100, [], 0.1)  # default start: 75% of the run
    assert default(74) == 1 and default(75) == 0.5


def test_cyclic_rises_to_the_peak_at_two_fifths_then_falls_to_zero() -> None:
    schedule = create_schedule("cyclic", 30, [], 0.1)
    assert schedule(0) == 0 and schedule(6) == pytest.approx(0.5)
    assert schedule(12) == pytest.approx(1.0) and schedule(21) == pytest.approx(0.5)
    assert schedule(30) == pytest.approx(0.0)


def test_warmup_multiplies_any_schedule() -> None:
    schedule = create_schedule("piecewise", 100, [75, 90], 0.1, warmup_epochs=5)
    assert (
        schedule(0) == 0
        and schedule(2.5) == pytest.approx(0.5)
        and schedule(80) == pytest.approx(0.1)
    )


def test_pas_clock_restarts_and_scales_schedules_per_period() -> None:
    clock = ScheduleClock(200, [100, 150])
    assert clock.period_ends() == [100, 150, 200]
    assert (
        clock.tau(50) == 100
        and clock.tau(100) == 0
        and clock.tau(125) == 100
        and clock.tau(175) == 100
    )
    lr = create_schedule("piecewise", 200, [100, 150], 0.1)
    # Each period replays the whole schedule, compressed: ÷10 at its middle, ÷100 at 3/4.
    assert lr(clock.tau(99)) == pytest.approx(0.01) and lr(clock.tau(100)) == 1
    assert lr(clock.tau(125)) == pytest.approx(0.1) and lr(clock.tau(138)) == pytest.approx(0.01)
    assert ScheduleClock(10).tau(7.5) == 7.5 and ScheduleClock(10).period_ends() == []


# ---------------------------------------------------------------------------------------------
# ε schedules (Liu et al. eq. 5).


def test_linear_and_cosine_eps_follow_eq_5_clipped_to_the_target() -> None:
    target, eps_min, eps_max, period = 8 / 255, 0.0, 16 / 255, 40
    linear = create_eps_schedule("linear", target, eps_min, eps_max, period)
    cosine = create_eps_schedule("cosine", target, eps_min, eps_max, period)
    for d in (0, 5, 10, 19.5):
        assert linear(d) == pytest.approx(min((eps_max - eps_min) * d / period + eps_min, target))
        expected = 0.5 * (1 - math.cos(d / period * math.pi)) * (eps_max - eps_min) + eps_min
        assert cosine(d) == pytest.approx(min(expected, target))
    assert linear(20) == pytest.approx(target) and linear(39) == target and cosine(39) == target
    assert cosine(100) == target  # held after the warm-up period, not brought down by cos
    assert create_eps_schedule("constant", target, 0, 0, 1)(0) == target
    negative = create_eps_schedule("linear", 0.1, -0.05, 0.2, 10)
    assert negative(0) == 0.0  # clipped below at 0


# ---------------------------------------------------------------------------------------------
# WAR: λ follows Algorithm 1's recurrence exactly.


def test_war_follows_the_recurrence_and_never_goes_negative() -> None:
    war = create_lambda_schedule("war", zeta=3.0, alpha=0.1)
    war.reset(0.0)
    lam = 0.0
    recorded = [(2.0, 1.0), (0.5, 1.0), (0.3, 2.0), (9.0, 1.0), (10.0, 0.5), (0.1, 0.0)]
    for nat, rob in recorded:
        got = war.step(torch.tensor(nat), torch.tensor(rob))
        ratio = nat / max(rob, 1e-12)
        lam = max(lam + 0.1 * (3.0 - ratio), 0.0)
        assert float(got) == pytest.approx(lam) and float(got) >= 0
    assert float(got) == 0.0  # l_rob = 0: infinite ratio drives λ to 0
    with pytest.raises(ConfigError, match="method.zeta"):
        create_lambda_schedule("war", zeta=0.0)
    with pytest.raises(UnknownNameError, match="valid: constant, war"):
        create_lambda_schedule("adaptive")


def test_war_on_generalized_at_uses_the_updated_lambda_for_the_step() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", 4, 1, 4, width=16)
    x, y = torch.rand(16, 1, 4, 4), torch.randint(0, 4, (16,))
    attack = create_attack("pgd", eps=0.3, steps=3, random_start=False)
    method = create_method(
        "gat", attack=attack, lam=0.5, lam_schedule=create_lambda_schedule("war", zeta=2.0)
    )
    model.train()
    out = method(model, x, y)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        nat = F.cross_entropy(model(x), y)
        rob = (F.cross_entropy(model(x_adv), y) - nat).clamp_min(0)
    lam = max(0.5 + 0.1 * (2.0 - float(nat) / float(rob)), 0.0)
    assert float(out["lam"]) == pytest.approx(lam, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(nat + lam * rob), rel=1e-5)
    state = method.state_dict()
    again = create_method(
        "gat", attack=attack, lam=0.0, lam_schedule=create_lambda_schedule("war", zeta=2.0)
    )
    again.load_state_dict(state)
    assert again.lam == pytest.approx(lam, rel=1e-6)


def test_generalized_at_formula_and_clipping() -> None:
    torch.manual_seed(1)
    model = create_model("mlp", 4, 1, 4, width=16).train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    attack = create_attack("pgd", eps=0.2, steps=3, random_start=False)
    out = create_method("gat", attack=attack, lam=1.0)(model, x, y)
    nat = F.cross_entropy(model(x), y)
    adv = F.cross_entropy(model(attack(model, x, y)), y)
    assert adv > nat  # the attack worked, so with λ = 1 this is CE on x_adv (Madry)
    assert float(out["loss"].detach()) == pytest.approx(float(adv.detach()), rel=1e-5)
    assert float(out["rob_reg"]) == pytest.approx(float((adv - nat).detach()), rel=1e-5)
    # A useless "attack" (x itself, eps 0) makes L_adv - L_nat = 0: clipped, loss = natural risk.
    still = create_method("gat", attack=create_attack("pgd", eps=0.0, steps=1), lam=3.0)(
        model, x, y
    )
    assert float(still["rob_reg"]) == 0.0 and float(still["loss"].detach()) == pytest.approx(
        float(nat.detach()), rel=1e-6
    )


def test_measurement_passes_leave_batch_norm_statistics_alone() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 4)
    ).train()
    before = (net[1].running_mean.clone(), net[1].num_batches_tracked.clone())
    with torch.no_grad(), frozen_batch_norm_statistics(net):
        net(torch.rand(8, 1, 4, 4))
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(
        net[1].num_batches_tracked, before[1]
    )
    assert net[1].momentum == 0.1  # restored
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    create_method("pgd_at", attack=create_attack("pgd", eps=0.1, steps=2))(net, x, y)
    assert int(net[1].num_batches_tracked) == 1  # only the optimized pass counted


# ---------------------------------------------------------------------------------------------
# The local Lipschitz estimate and the snapshot ensemble.


def test_local_lipschitz_of_a_linear_model_is_its_dual_norm() -> None:
    """For f(x) = Wx, ∇_x CE = W^T (p - e_y): the estimate is checked against a direct computation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.randint(0, 3, (5,))
    estimate = local_lipschitz(
        model, x, y, eps=0.0, alpha=0.1, steps=3, norm="Linf"
    )  # eps 0: x only
    with torch.no_grad():
        W = model[1].weight
        p = model(x).softmax(1)
        grad = (p - F.one_hot(y, 3)) @ W
    assert estimate == pytest.approx(float(grad.abs().sum(1).mean()), rel=1e-5)
    l2 = local_lipschitz(model, x, y, eps=0.0, alpha=0.1, steps=1, norm="L2")
    assert l2 == pytest.approx(float(grad.norm(dim=1).mean()), rel=1e-5)


def _linear_lipschitz_along_pgd(
    weight: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str,
) -> torch.Tensor:
    """Per point, ``||∇_x CE||_q`` at x and at each of ``steps`` PGD iterates (``steps + 1``
    columns), in closed form for f(x) = Wx + b: ``∇_x CE = W^T (softmax(f(x)) - e_y)``.

    PGD as Madry et al. write it, from x: ascend (sign of the gradient for L-inf, the gradient
    over its L2 norm for L2), project onto the ε-ball around x, clip to [0, 1].
    """
    flat, onehot = x.flatten(1), F.one_hot(y, weight.shape[0]).to(weight.dtype)
    point, norms = flat.clone(), []
    for step in range(steps + 1):
        grad = ((point @ weight.T + bias).softmax(1) - onehot) @ weight
        norms.append(grad.abs().sum(1) if norm == "Linf" else grad.norm(dim=1))
        if step == steps:
            break
        if norm == "Linf":
            point = (point + alpha * grad.sign()).clamp(flat - eps, flat + eps)
        else:
            point = point + alpha * grad / grad.norm(dim=1, keepdim=True)
            delta = point - flat
            point = flat + delta * (eps / delta.norm(dim=1, keepdim=True)).clamp(max=1.0)
        point = point.clamp(0.0, 1.0)
    return torch.stack(norms, 1)


@pytest.mark.parametrize(("norm", "eps", "alpha"), [("Linf", 0.5, 0.05), ("L2", 3.0, 0.3)])
def test_local_lipschitz_is_the_largest_gradient_along_the_pgd_path(
    norm: str, eps: float, alpha: float
) -> None:
    """At ε > 0 the estimate is the mean over points of the largest dual-norm gradient among x
    and its PGD iterates: checked against the closed form of a linear model, along the path
    recomputed independently (the estimator runs on a float64 copy of the model, so both take
    the same steps)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).double()
    with torch.no_grad():  # sharper logits: on some points the gradient peaks inside the path
        model[1].weight.mul_(3.0)
    x, y = torch.rand(32, 1, 4, 4, dtype=torch.float64), torch.randint(0, 5, (32,))
    steps = 10
    estimate = local_lipschitz(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm)
    with torch.no_grad():
        path = _linear_lipschitz_along_pgd(
            model[1].weight, model[1].bias, x, y, eps, alpha, steps, norm
        )
    assert estimate == pytest.approx(float(path.amax(1).mean()), rel=1e-9)
    # The path matters: the start alone, the last iterate alone, or one step fewer all give
    # other numbers (by far more than the tolerance), so a wrong path or reduction cannot pass.
    for wrong in (path[:, 0].mean(), path[:, -1].mean(), path[:, :-1].amax(1).mean()):
        assert abs(float(wrong) - estimate) > 1e-6 * estimate, (float(wrong), estimate)


def test_snapshot_ensemble_returns_log_of_averaged_softmax() -> None:
    torch.manual_seed(0)
    members = [nn.Linear(3, 4), nn.Linear(3, 4)]
    x = torch.rand(5, 3)
    out = SnapshotEnsemble(members)(x)
    expected = (members[0](x).softmax(1) + members[1](x).softmax(1)) / 2
    assert torch.allclose(out.exp(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input, rejected before training.


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["method.name=gat", "method.lam_schedule=war"], "method.zeta"),
        (["method.name=gat", "method.lam_schedule=war", "method.zeta=0"], "method.zeta=0"),
        (["method.name=gat", "method.lam_schedule=war", "method.zeta=-1"], "method.zeta"),
        (["method.lam_schedule=war", "method.zeta=3"], "WAR adapts"),  # pgd_at: not a WAR method
        (["method.lam_schedule=adaptive"], "valid: constant, war"),
        (
            ["attack.eps_schedule=linear", "attack.eps_max=0.01", "attack.eps_min=0.1"],
            "attack.eps_max",
        ),
        (["attack.eps_schedule=step"], "valid: constant, cosine, linear"),
        (["train.periods=[20,10]"], "train.periods"),
        (["train.periods=[40]"], "train.periods"),
        (["method.name=awp", "method.awp_gamma=-0.1"], "method.awp_gamma"),
        (["method.awp_gamma=0.01"], "applies to method.name = 'awp'"),
        (["train.schedule=linear"], "valid:"),
        (["train.precision=fp8"], "valid:"),
    ],
)
def test_bad_schedule_settings_are_config_errors(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        build_config(None, [*overrides, "train.epochs=30"])


def test_war_starts_from_lambda_zero_unless_given() -> None:
    war = ["method.name=gat", "method.lam_schedule=war", "method.zeta=5"]
    assert build_config(None, war).method.lam == 0.0
    assert build_config(None, [*war, "method.lam=2"]).method.lam == 2.0
    assert build_config(None, ["method.name=gat"]).method.lam == 1.0
