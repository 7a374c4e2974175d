"""AWP (Wu, Xia & Wang 2020) and FGSM-RS with its catastrophic-overfitting detector (Wong et al.
2020): exact checks against the papers' formulas written out on tiny models."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.models import create_model
from robustlab.training import METHODS, create_method, list_methods
from robustlab.training.methods import EpochContext

# ---------------------------------------------------------------------------------------------
# Helpers


def _bn_net() -> nn.Module:
    """A tiny conv net with batch norm (weights of 2 and 4 dimensions, 1-d biases and BN)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 4, 4)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    return x, x_adv, torch.randint(0, 3, (n,))


def _awp(x_adv: torch.Tensor, **options) -> object:
    """AWP whose adversarial examples are the fixed ``x_adv`` (the objective is what is tested)."""
    method = create_method("awp", attack=create_attack("pgd", eps=0.1, steps=1), **options)
    method.craft = lambda model, x, y: x_adv
    return method


def _kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(softmax(clean) ‖ softmax(adv)), TRADES' regularizer, written out."""
    p = F.softmax(clean_logits, dim=1)
    return (
        (p * (F.log_softmax(clean_logits, dim=1) - F.log_softmax(adv_logits, dim=1))).sum(1).mean()
    )


# The wrapped objectives ρ(model; x, x', y) as the papers write them, with their λ.
OBJECTIVES = {
    "pgd_at": (None, lambda f, x, xa, y: F.cross_entropy(f(xa), y)),
    "gat": (  # Wu et al. App. D: the clip is per example, inside the expectation
        2.0,
        lambda f, x, xa, y: (
            F.cross_entropy(f(x), y)
            + 2.0
            * (
                F.cross_entropy(f(xa), y, reduction="none")
                - F.cross_entropy(f(x), y, reduction="none")
            )
            .clamp_min(0)
            .mean()
        ),
    ),
    "trades": (
        6.0,
        lambda f, x, xa, y: F.cross_entropy(f(x), y) + 6.0 * _kl(f(x), f(xa)),
    ),
}


def _needs(base: str) -> None:
    # A method missing from the registry is a broken registration: fail, never skip.
    assert base in list_methods(), f"method {base!r} is not registered: {list_methods()}"


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() > 1]


# ---------------------------------------------------------------------------------------------
# AWP


@pytest.mark.parametrize("base", list(OBJECTIVES))
def test_awp_perturbs_each_weight_by_gamma_times_its_norm_along_the_objective_gradient(
    base: str, one_thread
) -> None:
    _needs(base)
    lam, rho = OBJECTIVES[base]
    gamma = 0.05
    model, (x, x_adv, y) = _bn_net(), _batch()
    model.train()
    before = copy.deepcopy(model)
    # The ascent direction: the gradient of ρ at w, taken on a copy in train mode.
    reference = copy.deepcopy(model)
    grads = torch.autograd.grad(rho(reference, x, x_adv, y), _weights(reference))
    method = _awp(x_adv, base=base, lam=lam, gamma=gamma, warmup=0)

    out = method(model, x, y)

    for p, p0, g in zip(_weights(model), _weights(before), grads, strict=True):
        expected = p0 + gamma * p0.norm() * g / g.norm()
        torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close((p - p0).norm(), gamma * p0.norm(), rtol=1e-4, atol=0)
    for p, p0 in zip(model.parameters(), before.parameters(), strict=True):
        if p.dim() <= 1:  # biases, batch-norm affine: untouched
            assert torch.equal(p, p0)
    # The loss is ρ at the perturbed weights; the gain is over ρ at the unperturbed ones.
    at_perturbed = rho(model, x, x_adv, y)
    torch.testing.assert_close(out["loss"], at_perturbed)
    torch.testing.assert_close(out["awp_loss_gain"], at_perturbed - rho(before, x, x_adv, y))
    assert out["awp_loss_gain"] > 0  # an ascent step raises the loss


def test_after_step_moves_the_weights_back(one_thread) -> None:
    model, (x, x_adv, y) = _bn_net(), _batch()
    model.train()
    before = copy.deepcopy(model)
    method = _awp(x_adv, gamma=0.1)
    method(model, x, y)
    assert not torch.allclose(_weights(model)[0], _weights(before)[0])
    method.after_step(model)
    for p, p0 in zip(model.parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-6)
    method.after_step(model)  # a second call has nothing left to undo
    for p, p0 in zip(model.parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-6)


def test_awp_update_is_the_gradient_at_the_perturbed_weights_applied_to_the_weights(
    one_thread,
) -> None:
    """Linear softmax regression by hand: w ← w − η ∇ρ(w + γv), v = ∇ρ(w)·||W||/||∇ρ(w)||."""
    gamma, lr = 0.5, 0.5
    model = nn.Linear(16, 3)
    x, x_adv, y = _batch()
    flat = x_adv.flatten(1)
    W, b = model.weight.detach().clone(), model.bias.detach().clone()

    def grad(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(flat @ weight.T + bias, dim=1)
        d = (p - F.one_hot(y, 3).float()) / len(y)  # ∂CE/∂logits
        return d.T @ flat, d.sum(0)

    g_w, _ = grad(W, b)
    v = g_w * W.norm() / g_w.norm()  # the bias (1-d) is not perturbed
    g_w_perturbed, g_b_perturbed = grad(W + gamma * v, b)

    net = nn.Sequential(nn.Flatten(), model)
    method = _awp(x_adv, gamma=gamma)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    out = method(net, x, y)
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    method.after_step(net)

    torch.testing.assert_close(model.weight, W - lr * g_w_perturbed, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias, b - lr * g_b_perturbed, rtol=0, atol=1e-6)
    # Not the plain adversarial-training step: the perturbation changed the gradient.
    g_w_plain, _ = grad(W, b)
    assert (model.weight - (W - lr * g_w_plain)).abs().max() > 1e-3


def test_awp_waits_for_its_warm_up_epochs(one_thread) -> None:
    model, (x, x_adv, y) = _bn_net(), _batch()
    model.train()
    method = _awp(x_adv, gamma=0.05, warmup=2)
    context = EpochContext(0, x, y)
    for epoch in range(3):
        before = copy.deepcopy(model)
        out = method(model, x, y)
        moved = not torch.equal(_weights(model)[0], _weights(before)[0])
        assert moved == (epoch >= 2)
        assert ("awp_loss_gain" in out) == (epoch >= 2)
        method.after_step(model)
        method.on_epoch_end(model, context)
    assert method.epochs_done == 3


def test_awp_defaults_are_the_reference_codes() -> None:
    attack = create_attack("pgd", eps=0.1, steps=1)
    at = create_method("awp", attack=attack)
    assert (at.base, at.gamma, at.warmup, at.lam) == ("pgd_at", 0.01, 0, 1.0)
    gat = create_method("awp", attack=attack, base="gat")
    assert (gat.gamma, gat.warmup) == (0.01, 0)
    trades = create_method("awp", attack=attack, base="trades")
    # --awp-warmup 10 with epochs counted from 1: AWP from the 10th epoch, after 9.
    assert (trades.gamma, trades.warmup, trades.lam) == (0.005, 9, 6.0)
    awp_spec, trades_spec = METHODS.get("awp").attack_spec, METHODS.get("trades").attack_spec
    assert awp_spec({"base": "trades"}) == trades_spec({})
    assert awp_spec({}) == ("pgd", {})
    # γ = 0 is the wrapped method: no proxy, no perturbation.
    off = create_method("awp", attack=attack, gamma=0.0)
    assert not off.active


def test_awp_rejects_what_it_cannot_wrap() -> None:
    attack = create_attack("pgd", eps=0.1, steps=1)
    for base in ("clean", "awp"):
        with pytest.raises(ConfigError, match="method.awp_base"):
            create_method("awp", attack=attack, base=base)
    with pytest.raises(UnknownNameError):
        create_method("awp", attack=attack, base="pgd-at")
    with pytest.raises(ConfigError, match="method.awp_gamma"):
        create_method("awp", attack=attack, gamma=-0.01)
    with pytest.raises(ConfigError, match="method.awp_warmup"):
        create_method("awp", attack=attack, warmup=-1)
    with pytest.raises(ConfigError, match="method.awp_gamma"):  # MART: no published γ
        create_method("awp", attack=attack, base="mart")


def test_awp_proxy_leaves_the_models_gradients_and_batch_norm_statistics_alone(
    one_thread,
) -> None:
    model, (x, x_adv, y) = _bn_net(), _batch()
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = copy.deepcopy(model)
    method = _awp(x_adv, gamma=0.1)
    method(model, x, y)

    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    # Exactly one batch-norm update: the objective's train-mode pass on x_adv at w + γv (the
    # proxy's pass and the measured clean pass leave the model's statistics alone).
    expected = copy.deepcopy(before)
    with torch.no_grad():
        for p, perturbed in zip(expected.parameters(), model.parameters(), strict=True):
            p.copy_(perturbed)
        expected(x_adv)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, dict(expected.named_buffers())[name], msg=name)
    assert int(model[1].num_batches_tracked) == 1


def test_awp_state_dict_round_trip_continues_identically(one_thread) -> None:
    x, _, y = _batch(16)
    attack = create_attack("pgd", eps=0.1, steps=2)  # random start: uses the RNG
    context = EpochContext(0, x, y)

    def step(method, model) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        out = method(model, x, y)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.after_step(model)

    model = _bn_net().train()
    method = create_method("awp", attack=attack, gamma=0.05, warmup=1)
    step(method, model)
    method.on_epoch_end(model, context)  # warm-up over
    saved_model, saved_method = copy.deepcopy(model.state_dict()), method.state_dict()

    def continued(fresh_method) -> list[torch.Tensor]:
        net = _bn_net().train()
        net.load_state_dict(saved_model)
        torch.manual_seed(3)
        step(fresh_method, net)
        return [t.detach().clone() for t in net.state_dict().values()]

    expected = continued(method)
    resumed = create_method("awp", attack=attack, gamma=0.05, warmup=1)
    resumed.load_state_dict(saved_method)
    assert resumed.epochs_done == 1
    for a, b in zip(continued(resumed), expected, strict=True):
        assert torch.equal(a, b)
    # Without its state the method would still be warming up and step differently.
    not_resumed = continued(create_method("awp", attack=attack, gamma=0.05, warmup=1))
    assert any(not torch.equal(a, b) for a, b in zip(not_resumed, expected, strict=True))


def test_awp_under_autocast_evaluates_the_perturbed_weights(one_thread) -> None:
    """The attack's passes fill autocast's cache of low-precision weights; the objective must
    not reuse those copies of the unperturbed weights."""
    model = create_model("mlp", 3, 1, 4, width=32)
    x, _, y = _batch()
    attack = create_attack("pgd", eps=0.1, steps=2, random_start=False)
    method = create_method("awp", attack=attack, gamma=0.5)
    before = copy.deepcopy(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(model, x, y)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(before, x, y)
        perturbed = F.cross_entropy(model(x_adv), y)
        unperturbed = F.cross_entropy(before(x_adv), y)
    torch.testing.assert_close(loss, perturbed)
    assert (perturbed - unperturbed).abs() > 0.05


# ---------------------------------------------------------------------------------------------
# FGSM-RS


def test_fgsm_rs_attack_is_a_step_of_1_25_eps_from_a_uniform_start(one_thread) -> None:
    cls = METHODS.get("fgsm_rs")
    eps = 0.1
    assert cls.default_alpha(eps, 10) == pytest.approx(1.25 * eps)
    name, fixed = cls.attack_spec({})
    assert (name, fixed) == ("fgsm", {"random_start": True})
    attack = create_attack(name, eps=eps, alpha=cls.default_alpha(eps, 1), **fixed)
    method = create_method("fgsm_rs", attack=attack)
    model, (x, _, y) = _bn_net(), _batch()
    model.train()
    before = copy.deepcopy(model)

    torch.manual_seed(5)
    x_adv = method.craft(model, x, y)
    # Algorithm 3 written out: δ ~ U[−ε, ε] (kept in the image box), one signed step of 1.25ε
    # on CE at x + δ (batch norm in eval mode, the training attack's default), projected.
    torch.manual_seed(5)
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).requires_grad_(True)
    reference = copy.deepcopy(before).eval()
    (g,) = torch.autograd.grad(F.cross_entropy(reference(start), y, reduction="sum"), start)
    expected = (x + (start.detach() + 1.25 * eps * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)
    # The step is longer than ε: from the random start it reaches the ball's faces.
    assert ((x_adv - x).abs() > eps - 1e-6).float().mean() > 0.5

    torch.manual_seed(5)
    out = method(model, x, y)
    # The loss is CE at x_adv (train mode); the natural risk is measured in train mode too.
    torch.testing.assert_close(out["loss"], F.cross_entropy(before(expected), y))
    torch.testing.assert_close(out["nat_risk"], F.cross_entropy(before(x), y))
    torch.testing.assert_close(out["rob_reg"], out["loss"].detach() - out["nat_risk"])
    assert int(model[1].num_batches_tracked) == 1  # only the optimized pass updated batch norm


def _digits(n: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from robustlab.data import create_dataset

    data = create_dataset("digits")
    x, y = data.train_x.float() / 255, data.train_y
    return x, y, x[:n], y[:n]


def _train_epoch(method, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for idx in torch.randperm(len(y)).split(64):
        out = method(model, x[idx], y[idx])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.after_step(model)


def test_overfitting_check_is_pgd5_accuracy_on_the_fixed_batch(one_thread) -> None:
    x, y, fixed_x, fixed_y = _digits()
    eps = 0.1
    method = create_method("fgsm_rs", attack=create_attack("fgsm", eps=eps, random_start=True))
    model = create_model("mlp", 10, 1, 8, width=64)
    _train_epoch(method, model, x, y, lr=0.1)
    torch.manual_seed(7)
    metrics = method.on_epoch_end(model, EpochContext(0, fixed_x, fixed_y))
    torch.manual_seed(7)
    pgd = create_attack("pgd", eps=eps, alpha=eps / 4, steps=5, random_start=True)
    x_adv = pgd(model, fixed_x, fixed_y)
    with torch.no_grad():
        expected = (model.eval()(x_adv).argmax(1) == fixed_y).float().mean().item()
    assert metrics == {"co_pgd_acc": expected, "co_detected": False}
    assert 0.2 < expected < 1  # a robust accuracy a collapse could be seen in
    model.train()
    method.on_epoch_end(model, EpochContext(1, fixed_x, fixed_y))
    assert model.training  # the check ran in eval mode and restored the caller's mode


def _run_until_collapse(action: str):
    """FGSM-RS training for 3 epochs, then a stand-in for catastrophic overfitting: the output
    layer is redrawn, so the fixed batch's robust accuracy falls to chance within one epoch."""
    torch.manual_seed(0)
    x, y, fixed_x, fixed_y = _digits()
    attack = create_attack("fgsm", eps=0.1, alpha=0.125, random_start=True)
    method = create_method("fgsm_rs", attack=attack, overfit_action=action)
    model = create_model("mlp", 10, 1, 8, width=128)
    accs = []
    for epoch in range(3):
        _train_epoch(method, model, x, y, lr=0.1)
        metrics = method.on_epoch_end(model, EpochContext(epoch, fixed_x, fixed_y))
        assert not metrics["co_detected"]
        accs.append(metrics["co_pgd_acc"])
    last_good = copy.deepcopy(model.state_dict())
    state_before = method.state_dict()
    _train_epoch(method, model, x, y, lr=0.1)
    [m for m in model.modules() if isinstance(m, nn.Linear)][-1].reset_parameters()
    collapsed = copy.deepcopy(model.state_dict())
    metrics = method.on_epoch_end(model, EpochContext(3, fixed_x, fixed_y))
    return SimpleNamespace(
        method=method,
        model=model,
        accs=accs,
        metrics=metrics,
        last_good=last_good,
        collapsed=collapsed,
        state_before=state_before,
        fixed=(fixed_x, fixed_y),
    )


def _same(state: dict, other: dict) -> bool:
    return all(torch.equal(state[k], other[k]) for k in state) and state.keys() == other.keys()


def test_overfitting_stop_restores_the_previous_epochs_weights(one_thread) -> None:
    run = _run_until_collapse("stop")
    assert run.metrics["co_detected"] and run.method.stop_requested and run.method.co_detected
    assert run.metrics["co_pgd_acc"] < run.accs[-1] - 0.2
    assert _same(run.model.state_dict(), run.last_good)
    assert not _same(run.model.state_dict(), run.collapsed)
    # A run resumed from the state saved before the collapse detects it the same way; a method
    # without that state has no previous accuracy to compare with.
    attack = create_attack("fgsm", eps=0.1, random_start=True)
    resumed = create_method("fgsm_rs", attack=attack)
    resumed.load_state_dict(run.state_before)
    for candidate, fires in ((resumed, True), (create_method("fgsm_rs", attack=attack), False)):
        net = create_model("mlp", 10, 1, 8, width=128)
        net.load_state_dict(run.collapsed)
        result = candidate.on_epoch_end(net, EpochContext(3, *run.fixed))
        assert result["co_detected"] is fires
        assert _same(net.state_dict(), run.last_good if fires else run.collapsed)


def test_overfitting_flag_keeps_training_and_the_weights(one_thread) -> None:
    run = _run_until_collapse("flag")
    assert run.metrics["co_detected"] and run.method.co_detected
    assert not run.method.stop_requested
    assert _same(run.model.state_dict(), run.collapsed)
    assert run.method.prev_weights is None  # nothing kept: no restore will be needed


def test_fgsm_rs_at_a_small_budget_trains_without_tripping_the_detector(one_thread) -> None:
    torch.manual_seed(0)
    x, y, fixed_x, fixed_y = _digits()
    attack = create_attack("fgsm", eps=0.05, alpha=0.0625, random_start=True)
    method = create_method("fgsm_rs", attack=attack)
    model = create_model("mlp", 10, 1, 8, width=128)
    accs = []
    for epoch in range(6):
        _train_epoch(method, model, x, y, lr=0.1)
        metrics = method.on_epoch_end(model, EpochContext(epoch, fixed_x, fixed_y))
        assert not metrics["co_detected"]
        accs.append(metrics["co_pgd_acc"])
    assert not method.stop_requested
    assert accs[-1] > accs[0]  # it learned robustness meanwhile


def test_fgsm_rs_rejects_unknown_overfit_actions() -> None:
    with pytest.raises(ConfigError, match="method.overfit_action"):
        create_method("fgsm_rs", attack=create_attack("fgsm", eps=0.1), overfit_action="halt")
