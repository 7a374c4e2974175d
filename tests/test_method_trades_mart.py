"""TRADES and MART: the ``trades-kl`` attack, both objectives and their gradients, against direct
restatements of the reference computations (yaodongyu/TRADES ``trades_loss``, YisenWang/MART
``mart_loss``) written out below, plus batch-norm side effects, options, WAR and resume.

The restatements perform the reference's operations in its order (the same forward passes, the
summed ``nn.KLDivLoss``, its constants and projections), so a difference in the loss, a
parameter gradient or a batch-norm buffer is a difference in the algorithm.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.data import create_dataset
from robustlab.errors import ConfigError
from robustlab.training import create_method
from robustlab.training.lam_schedules import create_lambda_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

EPS, ALPHA, STEPS = 0.1, 0.025, 5  # digits pixels are 0..16 scaled to [0, 1]


def _net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A small convnet with batch norm whose running statistics are not the defaults."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    ).to(dtype)
    net.train()
    with torch.no_grad():
        net(torch.rand(32, 1, 8, 8, dtype=dtype))
    return net


@functools.cache
def _digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    data = create_dataset("digits")
    return data.train_x, data.train_y


def _digits(n: int = 32, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits training images in [0, 1], with their labels."""
    images, labels = _digits_train()
    return images[:n].to(dtype) / 255, labels[:n]


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tol, msg=name)


def _buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in net.named_buffers()}


# ---------------------------------------------------------------------------------------------
# The reference computations, restated operation by operation (written for these tests, not
# copied): the same forward passes in the same order, the same reductions and constants, the
# same projections, on the CPU. The losses take x_adv as given.


def _kl_sum(adv_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """``nn.KLDivLoss`` summed over everything, input log-softmax(adv), target softmax(clean)."""
    return nn.KLDivLoss(reduction="sum")(
        F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1)
    )


def reference_trades_attack(
    model: nn.Module, x: torch.Tensor, step: float, eps: float, steps: int, norm: str
) -> torch.Tensor:
    """TRADES ``trades_loss``'s inner maximization: eval mode, the clean pass redone at every
    step; L-inf: sign steps, clip to x ± eps then to [0, 1]; L2: SGD on δ (rate 2·eps/steps,
    here ``step``) with per-example normalized gradients of −KL (a Gaussian for a zero one),
    δ clipped so x + δ is in [0, 1], then torch.renorm to eps. Its first draw is the L-inf start,
    drawn (and unused) for L2 too."""
    model.eval()
    linf_start = x + 0.001 * torch.randn(x.shape, dtype=x.dtype)
    if norm == "Linf":
        point = linf_start
        for _ in range(steps):
            point = point.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(_kl_sum(model(point), model(x)), point)
            point = point.detach() + step * g.sign()
            point = torch.maximum(point, x - eps)
            point = torch.minimum(point, x + eps).clamp(0.0, 1.0)
        result = point
    else:
        delta = 0.001 * torch.randn(x.shape, dtype=x.dtype)
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(-_kl_sum(model(x + delta), model(x)), delta)
            lengths = g.flatten(1).norm(dim=1)
            g = g / lengths[:, None, None, None]
            zero = lengths == 0
            if zero.any():
                g[zero] = torch.randn_like(g[zero])
            delta = delta.detach() - step * g  # plain SGD (no momentum, no weight decay)
            delta = (x + delta).clamp(0.0, 1.0) - x
            delta = delta.renorm(p=2, dim=0, maxnorm=eps)
        result = x + delta
    model.train()
    return result.clamp(0.0, 1.0).detach()


def reference_trades_loss(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    beta: float,
    detach: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRADES ``trades_loss``'s outer objective in train mode: CE of a clean pass, plus β/B times
    the summed KL whose arguments are evaluated left to right, an adversarial pass then a second
    clean pass (the KL target, with gradient). ``detach`` makes the target a constant (a variant,
    not the reference). Returns (loss, natural CE, robust term)."""
    natural = F.cross_entropy(model(x), y)
    adv_logits = model(x_adv)
    clean_again = model(x)
    if detach:
        clean_again = clean_again.detach()
    robust = _kl_sum(adv_logits, clean_again) / x.shape[0]
    return natural + beta * robust, natural, robust


def reference_mart_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: float, eps: float, steps: int
) -> torch.Tensor:
    """MART ``mart_loss``'s inner maximization (L-inf): from x + 0.001·N(0, 1) unclipped, sign
    steps on the batch-mean CE in eval mode, clip to x ± eps then to [0, 1]."""
    model.eval()
    point = x + 0.001 * torch.randn(x.shape, dtype=x.dtype)
    for _ in range(steps):
        point = point.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(point), y), point)
        point = point.detach() + step * g.sign()
        point = torch.minimum(torch.maximum(point, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    return point.clamp(0.0, 1.0).detach()


def reference_mart_loss(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MART ``mart_loss``'s outer objective in train mode: a clean pass then an adversarial one;
    BCE = mean CE(adv) + mean −log(1.0001 − p_adv[ŷ] + 1e-12), ŷ the top adversarial class if it
    is not y, else the second (from an argsort); plus β/B Σ_i KL(p_nat ‖ p_adv + 1e-12 inside
    the log) · (1.0000001 − p_nat[y]). Returns (loss, BCE, robust term)."""
    nat_logits = model(x)
    adv_logits = model(x_adv)
    p_adv = F.softmax(adv_logits, dim=1)
    ranked = p_adv.argsort(dim=1)
    first, second = ranked[:, -1], ranked[:, -2]
    wrong = torch.where(first == y, second, first)
    bce = F.cross_entropy(adv_logits, y) + F.nll_loss((1.0001 - p_adv + 1e-12).log(), wrong)
    p_nat = F.softmax(nat_logits, dim=1)
    kl_rows = nn.KLDivLoss(reduction="none")((p_adv + 1e-12).log(), p_nat).sum(dim=1)
    weights = 1.0000001 - p_nat[torch.arange(len(y)), y]
    robust = (kl_rows * weights).sum() / x.shape[0]
    return bce + beta * robust, bce, robust


# ---------------------------------------------------------------------------------------------
# The trades-kl attack.


@pytest.mark.parametrize(("norm", "eps"), [("Linf", EPS), ("L2", 0.8)])
def test_trades_kl_matches_the_reference_loop(norm: str, eps: float) -> None:
    # float64: in float32 a few near-zero gradient components change sign with the summation
    # order, and L-inf steps then differ by 2·alpha on those pixels.
    net = _net(torch.float64).eval()
    x, y = _digits(dtype=torch.float64)
    alpha = ALPHA if norm == "Linf" else 2 * eps / STEPS
    attack = create_attack("trades-kl", eps=eps, alpha=alpha, steps=STEPS, norm=norm)

    torch.manual_seed(3)
    if norm == "L2":  # the reference draws an L-inf start it does not use, then δ's start
        torch.randn(x.shape, dtype=x.dtype)
    ours = attack(net, x, y)
    torch.manual_seed(3)
    theirs = reference_trades_attack(copy.deepcopy(net), x, alpha, eps, STEPS, norm)

    assert (ours - x).abs().max() > 10 * 0.001  # moved well beyond the Gaussian start
    # L2: torch.renorm rescales to eps / (norm + 1e-7), the library's projection to eps / norm.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12 if norm == "Linf" else 1e-6)


def test_trades_kl_default_steps_follow_the_reference() -> None:
    assert create_attack("trades-kl", eps=0.031).alpha == pytest.approx(2.5 * 0.031 / 10)
    # L2: the reference's SGD learning rate, epsilon / perturb_steps * 2.
    assert create_attack("trades-kl", eps=0.5, steps=4, norm="L2").alpha == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="alpha"):
        create_attack("trades-kl", eps=0.1, alpha=0.0)


def test_trades_kl_l2_replaces_a_zero_gradient_by_a_random_direction() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(net[1].weight)  # constant logits: the KL and its gradient are exactly 0
    x, y = _digits(8)
    eps = 0.5

    l2 = create_attack("trades-kl", eps=eps, steps=2, norm="L2")(net, x, y)
    linf = create_attack("trades-kl", eps=0.1, steps=2)(net, x, y)

    l2_dist = (l2 - x).flatten(1).norm(dim=1)
    # alpha·N(0, I) (alpha = 2·eps/steps = 0.5) in 64 dimensions has norm ~ 0.5 · 8 = 4 > eps:
    # clipped to the box, then to the ball. Without the substitute the points would stay at the
    # 0.001·N(0, 1) start.
    assert (l2_dist > 0.2).all() and (l2_dist <= eps + 1e-6).all()
    # L-inf steps by sign(0) = 0: only the start's noise remains (clipped to the box).
    assert (linf - x).abs().max() <= 0.01


def test_trades_kl_computes_the_clean_distribution_once_in_its_mode() -> None:
    net = _net()
    x, y = _digits()
    tracked = net[1].num_batches_tracked.clone()
    create_attack("trades-kl", eps=EPS, steps=STEPS, model_mode="train")(net, x, y)
    # One clean pass plus one per step (the reference runs the clean batch at every step).
    assert int(net[1].num_batches_tracked - tracked) == 1 + STEPS


# ---------------------------------------------------------------------------------------------
# TRADES.


def _step(method, net, x, y, seed: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    out = method(net, x, y)
    out["loss"].backward()
    return out


@pytest.mark.parametrize("reference_passes", [False, True])
def test_trades_matches_the_reference_loss_gradients_and_batch_norm(
    reference_passes: bool,
) -> None:
    net = _net()
    x, y = _digits()
    attack = create_attack("trades-kl", eps=EPS, alpha=ALPHA, steps=STEPS)
    method = create_method("trades", attack=attack, reference_passes=reference_passes)
    assert method.lam == 6.0
    fresh, ref_net = copy.deepcopy(net), copy.deepcopy(net)
    torch.manual_seed(5)
    x_adv = attack(copy.deepcopy(net), x, y)  # the attack runs in eval mode: no state change

    out = _step(method, net, x, y)
    expected, nat, rob = reference_trades_loss(ref_net, x, x_adv, y, beta=6.0)
    expected.backward()

    torch.testing.assert_close(out["loss"], expected.detach())
    torch.testing.assert_close(out["nat_risk"], nat.detach())
    torch.testing.assert_close(out["rob_reg"], rob.detach())
    _assert_same(_grads(net), _grads(ref_net))
    if reference_passes:
        _assert_same(_buffers(net), _buffers(ref_net), rtol=0, atol=0)
    else:
        # The one documented difference: one clean pass (clean, adversarial), not two.
        with torch.no_grad():
            fresh(x)
            fresh(x_adv)
        _assert_same(_buffers(net), _buffers(fresh), rtol=0, atol=0)
        assert int(ref_net[1].num_batches_tracked - net[1].num_batches_tracked) == 1
        assert not torch.equal(net[1].running_mean, ref_net[1].running_mean)


def test_trades_detach_clean_is_the_constant_target_variant() -> None:
    net = _net()
    x, y = _digits()
    attack = create_attack("trades-kl", eps=EPS, alpha=ALPHA, steps=STEPS)
    detached = create_method("trades", attack=attack, lam=2.0, detach_clean=True)
    ref_net, attached_net = copy.deepcopy(net), copy.deepcopy(net)
    torch.manual_seed(5)
    x_adv = attack(copy.deepcopy(net), x, y)

    out = _step(detached, net, x, y)
    expected, _, _ = reference_trades_loss(ref_net, x, x_adv, y, beta=2.0, detach=True)
    expected.backward()
    _step(create_method("trades", attack=attack, lam=2.0), attached_net, x, y)

    torch.testing.assert_close(out["loss"], expected.detach())  # same value...
    _assert_same(_grads(net), _grads(ref_net))
    # ...different gradients: the reference's target carries gradient through the clean pass.
    assert not torch.allclose(net[0].weight.grad, attached_net[0].weight.grad, atol=1e-6)


def test_trades_attack_runs_in_the_attack_mode() -> None:
    x, y = _digits()
    counts = {}
    for mode in ("eval", "train"):
        net = _net()
        attack = create_attack("trades-kl", eps=EPS, steps=STEPS, model_mode=mode)
        before = net[1].num_batches_tracked.clone()
        _step(create_method("trades", attack=attack), net, x, y)
        counts[mode] = int(net[1].num_batches_tracked - before)
        assert net.training  # train mode restored for the objective
    assert counts == {"eval": 2, "train": 2 + 1 + STEPS}


def test_trades_spec_builds_the_kl_attack() -> None:
    cls = type(create_method("trades", attack=create_attack("trades-kl")))
    assert cls.attack_spec({}) == ("trades-kl", {})
    assert cls.default_lam == 6.0


def test_war_drives_trades_lambda() -> None:
    net = _net()
    x, y = _digits()
    zeta, war_alpha, lam0 = 0.5, 0.1, 6.0
    attack = create_attack("trades-kl", eps=EPS, alpha=ALPHA, steps=2)
    method = create_method(
        "trades",
        attack=attack,
        lam=lam0,
        lam_schedule=create_lambda_schedule("war", zeta=zeta, alpha=war_alpha),
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    lam = lam0
    for step in range(2):
        out = method(net, x[16 * step : 16 * (step + 1)], y[16 * step : 16 * (step + 1)])
        ratio = float(out["nat_risk"] / out["rob_reg"])
        lam = max(lam + war_alpha * (zeta - ratio), 0.0)  # Wu et al. 2021, Algorithm 1
        assert float(out["lam"]) == pytest.approx(lam, rel=1e-6)
        torch.testing.assert_close(out["loss"], out["nat_risk"] + lam * out["rob_reg"])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert method.lam == pytest.approx(lam, rel=1e-6)
    assert abs(method.lam - lam0) > 0.05  # λ moved: the checks above are not of a constant


def test_trades_resume_gives_the_same_next_step() -> None:
    x, y = _digits()
    attack = create_attack("trades-kl", eps=EPS, alpha=ALPHA, steps=2)

    def war_trades():
        return create_method(
            "trades", attack=attack, lam_schedule=create_lambda_schedule("war", zeta=0.5)
        )

    net, method = _net(), war_trades()
    _step(method, net, x[:16], y[:16])
    net.zero_grad(set_to_none=True)
    resumed = war_trades()
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    twin = copy.deepcopy(net)
    a = _step(method, net, x[16:], y[16:], seed=9)
    b = _step(resumed, twin, x[16:], y[16:], seed=9)
    assert torch.equal(a["lam"], b["lam"]) and torch.equal(a["loss"], b["loss"])
    _assert_same(_grads(net), _grads(twin), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# MART.


def test_mart_matches_the_reference_loss_and_gradients() -> None:
    net = _net()
    x, y = _digits()
    attack = create_attack("pgd", eps=EPS, alpha=ALPHA, steps=STEPS, random_start="normal")
    method = create_method("mart", attack=attack)
    assert method.lam == 6.0
    ref_net = copy.deepcopy(net)
    torch.manual_seed(5)
    x_adv = attack(copy.deepcopy(net), x, y)

    out = _step(method, net, x, y)
    expected, bce, rob = reference_mart_loss(ref_net, x, x_adv, y, beta=6.0)
    expected.backward()

    torch.testing.assert_close(out["loss"], expected.detach())
    torch.testing.assert_close(out["bce"], bce.detach())
    torch.testing.assert_close(out["rob_reg"], rob.detach())
    with torch.no_grad():
        nat = F.cross_entropy(copy.deepcopy(ref_net)(x), y)  # weights unchanged: no step taken
    torch.testing.assert_close(out["nat_risk"], nat, rtol=1e-5, atol=1e-6)
    _assert_same(_grads(net), _grads(ref_net))
    # Two passes, clean then adversarial, as the reference: identical running statistics.
    _assert_same(_buffers(net), _buffers(ref_net), rtol=0, atol=0)


def test_mart_weights_the_kl_by_misclassification() -> None:
    """The regularizer vanishes where the clean prediction is certain and right, and BCE's margin
    term is −log(1.0001 − p) of the most likely wrong class."""
    from robustlab.training.methods.mart import mart_bce, mart_weighted_kl

    y = torch.tensor([0, 1, 2])
    # Right and sure; wrong and sure; right and unsure.
    nat = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 50.0], [0.0, 0.0, 0.5]])
    adv = torch.tensor([[0.0, 1.0, 2.0]]).expand(3, 3)
    weighted = mart_weighted_kl(adv, nat, y)
    assert weighted[0] < 1e-6 < weighted[2] < weighted[1]
    p = F.softmax(adv, 1)
    # The most likely wrong class: 2 for the first two points, 1 for the third (its label is 2).
    wrong = torch.tensor([2, 2, 1])
    expected = -torch.log(p[[0, 1, 2], y]) - torch.log(1.0001 - p[[0, 1, 2], wrong] + 1e-12)
    torch.testing.assert_close(mart_bce(adv, y), expected)


def test_mart_spec_fixes_the_reference_attack() -> None:
    cls = type(create_method("mart", attack=create_attack("pgd")))
    assert cls.attack_spec({}) == ("pgd", {"random_start": "normal", "loss": "ce"})


def test_mart_attack_matches_the_reference_inside_the_box() -> None:
    """PGD with MART's settings computes the reference's iterates. Inside the box only: PGD
    clips its Gaussian start to [0, 1], the reference takes the first gradient at the unclipped
    start, which on pixels at 0 or 1 can differ in sign."""
    net = _net(torch.float64).eval()
    x, y = _digits(dtype=torch.float64)
    x = 0.1 + 0.8 * x  # no pixel on a face of the box
    attack = create_attack(
        "pgd", eps=EPS, alpha=ALPHA, steps=STEPS, random_start="normal", loss="ce"
    )
    torch.manual_seed(3)
    ours = attack(net, x, y)
    torch.manual_seed(3)
    theirs = reference_mart_attack(copy.deepcopy(net), x, y, ALPHA, EPS, STEPS)
    assert (ours - x).abs().max() > 10 * 0.001
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
