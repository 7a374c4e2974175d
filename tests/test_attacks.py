"""Attacks: the contract of every registered attack, pure-function properties, references.

The contract checks are parametrized over ``list_attacks()``, so an attack registered later gets
them too: ``x_adv`` stays in its ball and in [0, 1], keeps the shape and dtype of ``x``, and the
attack leaves the model (mode, parameters, gradients, batch-norm statistics) and ``x`` as it
found them. The reference checks train a small MLP adversarially on digits and compare with
torchattacks' FGSM, PGD and PGDL2, which compute the same iterates.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchattacks
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from robustlab._options import accepted_options
from robustlab.attacks import (
    ATTACKS,
    LOSSES,
    RENAMED_OPTIONS,
    clip_to_ball,
    create_attack,
    list_attacks,
)
from robustlab.attacks import functional as fn
from robustlab.attacks.pgd import PGD
from robustlab.cli import eval as eval_cli
from robustlab.cli._sources import LoadedModel
from robustlab.config import AttackConfig, EvalConfig
from robustlab.errors import AttackInputError, ConfigError, UnknownNameError

ATTACK_NAMES = list_attacks()
# Small budgets for the contract tests: the invariants do not depend on the budget, and the
# published ones (100 iterations x 9 targets, 5,000 queries) would take minutes here. Each
# attack's own test file checks it at the published budget against torchattacks.
FAST_KWARGS: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 10},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "targets": 3},
    "fab": {"steps": 10},
    "fab-t": {"steps": 10, "targets": 3},
    "square": {"queries": 100},
    "autoattack": {"steps": 5, "queries": 50},
}


def make_attack(name: str, **kwargs: Any) -> Any:
    """``create_attack`` with the attack's small test budget (explicit arguments win)."""
    return create_attack(name, **{**FAST_KWARGS.get(name, {}), **kwargs})


NORMS = ("Linf", "L2")
# (norm, eps): no budget, a typical one, a large one. Images are 1 x 8 x 8, so an L2 radius of
# 2 is a quarter of the diagonal of the image box.
BUDGETS = [("Linf", 0.0), ("Linf", 8 / 255), ("Linf", 0.3), ("L2", 0.0), ("L2", 0.5), ("L2", 2.0)]
# Every registered attack with its defaults, plus the options that take other code paths.
CONFIGS = [pytest.param(name, {}, id=name) for name in ATTACK_NAMES] + [
    pytest.param("pgd", {"restarts": 3}, id="pgd-restarts3"),
    pytest.param("pgd", {"loss": "cw", "random_start": False}, id="pgd-cw-nostart"),
    pytest.param("fgsm", {"loss": "cw"}, id="fgsm-cw"),
]
MODEL_STATES = ("train", "eval", "mixed")
TOL = 1e-6  # float32 rounding of x + delta


# Tiny models: one intra-op thread (see the conftest fixture).
pytestmark = pytest.mark.usefixtures("one_thread")


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm, computed independently of the library's threat models."""
    order = math.inf if norm == "Linf" else 2
    return torch.linalg.vector_norm(delta.flatten(1), ord=order, dim=1)


def _takes(name: str, option: str) -> bool:
    return option in inspect.signature(ATTACKS.get(name)).parameters


# ---------------------------------------------------------------------------------------------
# The contract, for every registered attack.


def _bn_net() -> nn.Sequential:
    """A small convnet with batch norm, whose running statistics are not the defaults, so that
    running it in train or eval mode gives different outputs."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(32, 1, 8, 8))
    return net


def _set_state(net: nn.Sequential, state: str) -> None:
    net.train(state != "eval")
    if state == "mixed":  # a frozen batch-norm layer inside a model in train mode
        net[1].eval()


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    x[:, :, 0] = 0.0  # pixels on the faces of the image box, where clipping binds
    x[:, :, -1] = 1.0
    y = torch.randint(0, 10, (n,), generator=generator)
    return x, y


def _eval_predictions(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    probe = copy.deepcopy(net).eval()
    with torch.no_grad():
        return probe(x).argmax(1)


def _record_modes(net: nn.Module) -> list[bool]:
    """The ``training`` flag of every module each time it runs a forward pass."""
    seen: list[bool] = []
    for module in net.modules():
        module.register_forward_pre_hook(lambda m, _args: seen.append(m.training))
    return seen


def _snapshot(net: nn.Module) -> dict[str, Any]:
    return {
        "modes": {name: m.training for name, m in net.named_modules()},
        "params": {name: p.detach().clone() for name, p in net.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in net.named_parameters()},
        "grads": {
            name: None if p.grad is None else p.grad.clone() for name, p in net.named_parameters()
        },
        "buffers": {name: b.clone() for name, b in net.named_buffers()},
    }


def _give_some_grads(net: nn.Sequential) -> None:
    """Gradients left by an earlier backward pass on some parameters; the others have none."""
    net[0].weight.grad = torch.randn_like(net[0].weight)
    net[4].bias.grad = torch.randn_like(net[4].bias)


def _assert_model_untouched(net: nn.Module, before: dict[str, Any], buffers: bool = True) -> None:
    after = _snapshot(net)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert after["grads"][name] is not None, name
            assert torch.equal(after["grads"][name], grad), name
    if buffers:
        for name, value in before["buffers"].items():
            assert torch.equal(after["buffers"][name], value), name


@pytest.mark.parametrize("state", MODEL_STATES)
@pytest.mark.parametrize(("norm", "eps"), BUDGETS)
@pytest.mark.parametrize(("name", "options"), CONFIGS)
def test_attack_contract(
    name: str, options: dict[str, Any], norm: str, eps: float, state: str
) -> None:
    net = _bn_net()
    _set_state(net, state)
    _give_some_grads(net)
    before = _snapshot(net)
    seen = _record_modes(net)
    x, _ = _batch()
    # Labels the model predicts (in eval mode, as attacks run it): every point is correctly
    # classified, so every attack, minimum-norm ones (FAB) included, has work to do.
    y = _eval_predictions(net, x)
    x_before = x.clone()
    attack = make_attack(name, eps=eps, norm=norm, **options)

    x_adv = attack(net, x, y)

    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    distance = _distance(x_adv - x, norm)
    assert (distance <= eps + TOL).all(), distance.max().item()
    if eps == 0:
        assert torch.equal(x_adv, x)
    else:
        assert distance.max() > 0  # the attack moved something: the checks above are not vacuous
    assert torch.equal(x, x_before)
    # The attack ran the model in eval mode (its default) and restored every module's own flag.
    assert seen and not any(seen)
    _assert_model_untouched(net, before)


@pytest.mark.parametrize("state", MODEL_STATES)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_in_train_mode_restores_mode(name: str, state: str) -> None:
    net = _bn_net()
    _set_state(net, state)
    _give_some_grads(net)
    before = _snapshot(net)
    seen = _record_modes(net)
    x, y = _batch()

    x_adv = make_attack(name, eps=0.1, model_mode="train")(net, x, y)

    assert seen and all(seen)
    assert (_distance(x_adv - x, "Linf") <= 0.1 + TOL).all()
    # Train mode updates batch-norm running averages (as documented); nothing else changes.
    assert not torch.equal(net[1].running_mean, before["buffers"]["1.running_mean"])
    _assert_model_untouched(net, before, buffers=False)


@pytest.mark.parametrize("state", MODEL_STATES)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_mode_restored_when_the_attack_fails(name: str, state: str) -> None:
    net = _bn_net()
    _set_state(net, state)
    before = _snapshot(net)
    x, y = _batch()
    y[0] = 10  # caught at the model's first output, mid-attack
    with pytest.raises(AttackInputError, match="labels must be < 10"):
        make_attack(name, eps=0.1)(net, x, y)
    _assert_model_untouched(net, before)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_model_returning_the_wrong_shape_is_rejected(name: str) -> None:
    x, y = _batch()
    flat = torch.nn.Flatten()  # returns (B, C*H*W) images, not logits... of the right batch
    squeezed = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 10), torch.nn.Flatten(0)
    )
    with pytest.raises(AttackInputError, match="logits of shape"):
        make_attack(name, eps=0.1)(squeezed, x, y)
    with pytest.raises(AttackInputError, match="labels must be <"):
        make_attack(name, eps=0.1)(
            torch.nn.Sequential(flat, torch.nn.Linear(x[0].numel(), 2)), x, y
        )


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_input_requiring_grad_is_left_alone(name: str) -> None:
    net = _bn_net().eval()
    x, y = _batch()
    x.requires_grad_(True)
    x_adv = make_attack(name, eps=0.1)(net, x, y)
    assert x.grad is None
    assert not x_adv.requires_grad


def test_registry_lists_the_attacks() -> None:
    assert {"fgsm", "pgd"} <= set(ATTACK_NAMES)
    assert sorted(ATTACK_NAMES) == ATTACK_NAMES
    assert list_attacks("pg*") == ["pgd"]


# ---------------------------------------------------------------------------------------------
# Bad inputs and bad configuration.

Corruption = Callable[[torch.Tensor], torch.Tensor]


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda x: x + 1e-3, id="above-1"),
        pytest.param(lambda x: x - 1e-3, id="below-0"),
        pytest.param(lambda x: x.masked_fill(x > 0.99, float("nan")), id="nan"),
        pytest.param(lambda x: (x * 255).to(torch.uint8), id="uint8"),
        pytest.param(lambda x: (x * 255).to(torch.int64), id="int64"),
    ],
)
def test_bad_images_are_rejected(name: str, corrupt: Corruption) -> None:
    net = _bn_net().eval()
    x, y = _batch()
    with pytest.raises(AttackInputError):
        make_attack(name, eps=0.1)(net, corrupt(x.clone()), y)


def test_an_empty_batch_is_returned_but_its_labels_are_still_checked() -> None:
    net = _bn_net().eval()
    x, y = _batch()
    attack = make_attack("pgd", eps=0.1)
    assert attack(net, x[:0], y[:0]).shape == x[:0].shape
    with pytest.raises(AttackInputError, match="labels must be integers"):
        attack(net, x[:0], y[:0].float())


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda y: y[:-1], id="too-short"),
        pytest.param(lambda y: torch.cat([y, y[:1]]), id="too-long"),
        pytest.param(lambda y: y[:, None], id="2d"),
        pytest.param(lambda y: y - (y == y[0]).long() * 100, id="negative"),
    ],
)
def test_bad_labels_are_rejected(name: str, corrupt: Corruption) -> None:
    net = _bn_net().eval()
    x, y = _batch()
    with pytest.raises(AttackInputError):
        make_attack(name, eps=0.1)(net, x, corrupt(y))


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"eps": -0.1}, id="negative-eps"),
        pytest.param({"eps": 0.1, "norm": "L1"}, id="unknown-norm"),
        pytest.param({"eps": 0.1, "norm": "linf"}, id="norm-is-case-sensitive"),
        pytest.param({"eps": 0.1, "model_mode": "test"}, id="unknown-model-mode"),
        pytest.param({"eps": 0.1, "loss": "dlrr"}, id="unknown-loss"),
    ],
)
def test_bad_options_are_config_errors(name: str, options: dict[str, Any]) -> None:
    if not all(_takes(name, key) for key in options):
        pytest.skip(f"{name} does not take {sorted(options)}")
    with pytest.raises(ConfigError):
        create_attack(name, **options)


COUNT_OPTIONS = ("steps", "restarts", "queries", "targets")


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize(
    ("name", "option"),
    [(name, option) for name in ATTACK_NAMES for option in COUNT_OPTIONS if _takes(name, option)],
)
def test_iteration_counts_must_be_positive(name: str, option: str, value: int) -> None:
    with pytest.raises(ConfigError, match=option):
        create_attack(name, eps=0.1, **{option: value})


def test_pgd_step_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        create_attack("pgd", eps=0.1, alpha=0.0)


def test_unknown_attack_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_attack("pgdd", eps=0.1)
    message = str(info.value)
    assert all(name in message for name in ATTACK_NAMES)
    assert "did you mean 'pgd'" in message
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_unknown_option_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_attack(name, eps=0.1, norm="Linf", epsilon=0.1)
    message = str(info.value)
    assert f"attack[{name}].epsilon" in message
    assert "eps" in message  # the options the attack does take are listed


# ---------------------------------------------------------------------------------------------
# One vocabulary of options: every attack, the CLI flags and the config keys use the same names.

# Synonyms of the canonical names (AutoAttack's, torchattacks', and common spellings): no
# registered attack may take one, so that a concept never has two keywords.
SYNONYMS = {
    "steps": ("n_iter", "n_iters", "iters", "iterations", "n_steps", "num_steps", "max_iter"),
    "restarts": ("n_restarts", "num_restarts", "n_starts"),
    "queries": ("n_queries", "num_queries", "max_queries", "budget"),
    "targets": ("n_target_classes", "n_targets", "num_targets", "target_classes"),
}


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_constructors_use_the_canonical_vocabulary(name: str) -> None:
    taken = set(accepted_options(ATTACKS.get(name)))
    for canonical, synonyms in SYNONYMS.items():
        assert not taken & set(synonyms), f"{name} takes {taken & set(synonyms)}: use {canonical!r}"


@pytest.mark.parametrize(("old", "new"), list(RENAMED_OPTIONS.items()))
def test_an_old_option_name_points_to_its_new_name(old: str, new: str) -> None:
    name = next(n for n in ATTACK_NAMES if _takes(n, new))
    with pytest.raises(ConfigError, match=rf"attack\[{name}\]\.{old}=7: renamed to '{new}'"):
        create_attack(name, eps=0.1, **{old: 7})


def _cli_attacks(name: str, *flags: str) -> dict[str, Any]:
    """The attacks ``robustlab eval MODEL --attack NAME --eps 0.1 FLAGS`` builds, for a model
    from outside a run (so that only the command line sets options)."""
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    args = parser.parse_args(["model.pt", "--attack", name, "--eps", "0.1", *flags])
    return eval_cli.build_attacks(args, LoadedModel(model=nn.Identity(), source="model.pt"))


# A value for each flag that no attack has as its default, so that a flag taking effect shows.
CLI_VALUES = {"steps": 7, "restarts": 3, "alpha": 0.0125, "queries": 77, "targets": 2}


@pytest.mark.parametrize("option", eval_cli.ATTACK_OPTIONS)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_each_cli_flag_sets_the_keyword_of_the_same_name(name: str, option: str) -> None:
    value = CLI_VALUES.get(option)
    if option == "version":
        value = "plus"
    flag = eval_cli.OPTION_FLAGS[option]
    if not _takes(name, option):
        with pytest.raises(ConfigError, match=f"{flag}=.*: {name} takes no such setting"):
            _cli_attacks(name, flag, str(value))
        return
    (attack,) = _cli_attacks(name, flag, str(value)).values()
    assert getattr(attack, option) == value
    assert getattr(create_attack(name, eps=0.1, **{option: value}), option) == value


def test_cli_flags_are_named_as_the_keywords_they_set() -> None:
    """Each attack flag of ``robustlab eval`` is ``--KEYWORD`` (AutoAttack's ``--aa-version``
    excepted, so as not to read as the program's version) and stores into ``KEYWORD``."""
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    dest = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    for option in eval_cli.ATTACK_OPTIONS:
        flag = eval_cli.OPTION_FLAGS[option]
        assert dest[flag] == option
        assert flag == f"--{option}" or option == "version", flag


def test_every_cli_flag_and_count_option_has_a_taker() -> None:
    """No CLI flag is dead, and every count an attack takes can be set from the command line
    and has a config key of the same name where the run's attack has it."""
    taken = {option for name in ATTACK_NAMES for option in accepted_options(ATTACKS.get(name))}
    assert set(eval_cli.ATTACK_OPTIONS) <= taken
    assert set(COUNT_OPTIONS) <= set(eval_cli.ATTACK_OPTIONS)
    config_keys = {f.name for f in dataclasses.fields(AttackConfig)} | {
        f.name for f in dataclasses.fields(EvalConfig)
    }
    assert {"steps", "restarts", "alpha"} <= config_keys


# ---------------------------------------------------------------------------------------------
# Properties of the pure functions.

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)
SHAPES = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))
EPS = st.floats(0.0, 2.0)
BALLS = st.sampled_from(NORMS)


def _array(shape: tuple[int, ...], low: float, high: float) -> st.SearchStrategy[torch.Tensor]:
    elements = st.floats(low, high, width=32)
    return arrays(np.float32, shape, elements=elements).map(torch.tensor)


@st.composite
def _tensors(draw: st.DrawFn, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    return draw(_array(draw(SHAPES), low, high))


@PROPERTY
@given(delta=_tensors(), eps=EPS, norm=BALLS)
def test_projection_lands_in_ball_and_is_idempotent(
    delta: torch.Tensor, eps: float, norm: str
) -> None:
    ball = fn.threat_model(norm)
    projected = ball.project(delta, eps)
    assert projected.shape == delta.shape
    assert (_distance(projected, norm) <= eps + TOL).all()
    again = ball.project(projected, eps)
    if norm == "Linf":
        assert torch.equal(again, projected)
    else:
        torch.testing.assert_close(again, projected, rtol=1e-5, atol=TOL)


@PROPERTY
@given(delta=_tensors(), slack=st.floats(1.0, 3.0), norm=BALLS)
def test_projection_of_a_point_inside_the_ball_is_identity(
    delta: torch.Tensor, slack: float, norm: str
) -> None:
    ball = fn.threat_model(norm)
    eps = float(ball.norm(delta).max()) * slack  # every example is inside (or on) the ball
    assert torch.equal(ball.project(delta, eps), delta)


@PROPERTY
@given(data=st.data(), eps=EPS, norm=BALLS)
def test_clip_to_ball_keeps_both_constraints(data: st.DataObject, eps: float, norm: str) -> None:
    shape = data.draw(SHAPES)
    x = data.draw(_array(shape, 0.0, 1.0))
    x_adv = data.draw(_array(shape, -0.5, 1.5))
    ball = fn.threat_model(norm)
    clipped = clip_to_ball(x_adv, x, eps, ball)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    assert (_distance(clipped - x, norm) <= eps + TOL).all()
    # A point that already satisfies both constraints stays where it is.
    feasible = clip_to_ball(clipped, x, eps, ball)
    torch.testing.assert_close(feasible, clipped, rtol=0, atol=TOL)


@PROPERTY
@given(grad=_tensors(-10.0, 10.0), alpha=st.floats(1e-3, 2.0))
def test_linf_step_is_alpha_times_sign(grad: torch.Tensor, alpha: float) -> None:
    step = fn.linf_step(grad, alpha)
    nonzero = grad != 0
    torch.testing.assert_close(step.abs()[nonzero], torch.full_like(step[nonzero], alpha))
    assert (step[~nonzero] == 0).all()
    assert (step.sign() == grad.sign()).all()
    # Steepest ascent: the linear gain <step, grad> = alpha * ||grad||_1, the most the ball allows.
    gain = (step * grad).flatten(1).sum(1)
    torch.testing.assert_close(gain, alpha * grad.abs().flatten(1).sum(1), rtol=1e-5, atol=1e-5)


@PROPERTY
@given(grad=_tensors(-10.0, 10.0), alpha=st.floats(1e-3, 2.0))
def test_l2_step_has_norm_alpha(grad: torch.Tensor, alpha: float) -> None:
    step = fn.l2_step(grad, alpha)
    assert torch.isfinite(step).all()
    norms = _distance(step, "L2")
    grad_norms = _distance(grad, "L2")
    assert (norms <= alpha * (1 + 1e-5)).all()
    usable = grad_norms > 1e-6  # below this the division guard, not the gradient, sets the length
    torch.testing.assert_close(
        norms[usable], torch.full_like(norms[usable], alpha), rtol=1e-5, atol=0
    )
    # Along the gradient: <step, grad> = alpha * ||grad||_2.
    gain = (step * grad).flatten(1).sum(1)
    torch.testing.assert_close(gain[usable], alpha * grad_norms[usable], rtol=1e-4, atol=1e-5)
    assert (step[grad_norms == 0] == 0).all()


@PROPERTY
@given(shape=SHAPES, eps=EPS, norm=BALLS, seed=st.integers(0, 2**31 - 1))
def test_random_init_is_inside_the_ball(
    shape: tuple[int, ...], eps: float, norm: str, seed: int
) -> None:
    torch.manual_seed(seed)
    x = torch.rand(shape)
    delta = fn.threat_model(norm).random_init(x, eps)
    assert delta.shape == x.shape and delta.dtype == x.dtype
    assert (_distance(delta, norm) <= eps + TOL).all()
    if eps > 0.01:
        assert delta.abs().max() > 0  # a random point, not the centre


@PROPERTY
@given(data=st.data(), norm=BALLS)
def test_ball_norm_matches_reference(data: st.DataObject, norm: str) -> None:
    delta = data.draw(_tensors())
    torch.testing.assert_close(fn.threat_model(norm).norm(delta), _distance(delta, norm))


@PROPERTY
@given(data=st.data())
def test_cw_margin_positive_iff_misclassified(data: st.DataObject) -> None:
    batch, classes = data.draw(st.integers(1, 6)), data.draw(st.integers(2, 6))
    # Distinct logits: with a tie for the maximum, argmax and the margin disagree by convention.
    logits = data.draw(
        arrays(np.float32, (batch, classes), elements=st.floats(-20, 20, width=32), unique=True)
    )
    labels = data.draw(arrays(np.int64, (batch,), elements=st.integers(0, classes - 1)))
    margin = LOSSES.get("cw")(torch.tensor(logits), torch.tensor(labels))
    misclassified = torch.tensor(logits).argmax(1) != torch.tensor(labels)
    assert torch.equal(margin > 0, misclassified)
    expected = [
        max(np.delete(row, label)) - row[label] for row, label in zip(logits, labels, strict=True)
    ]
    torch.testing.assert_close(margin, torch.tensor(np.array(expected, dtype=np.float32)))


# ---------------------------------------------------------------------------------------------
# References: torchattacks on a small adversarially trained model.

REF_EPS = 0.1  # L-inf budget on digits (pixels 0..16 scaled to [0, 1]); PGD robust acc ~75%
REF_ALPHA = REF_EPS / 4
REF_L2_EPS = 0.8
REF_STEPS = 10


Reference = tuple[nn.Module, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def reference(robust_digits_mlp: Reference) -> Reference:
    """The shared PGD-trained digits MLP (conftest), trained at REF_EPS: eval mode, test set in [0, 1]."""
    return robust_digits_mlp


@pytest.fixture(scope="module")
def reference64(reference: Reference) -> Reference:
    """The reference model and data in float64, for the exact comparisons.

    In float32 a few pixels' gradients are rounding noise (~1e-8 against ~1 for the largest
    component of the same example), and their sign depends on the summation order: ours sums the
    per-example losses, torchattacks averages them, and FGSM then moves such a pixel by +eps in
    one and 0 or -eps in the other. In float64 that noise is ~1e-17 and every sign agrees.
    """
    model, x, y = reference
    return copy.deepcopy(model).double(), x.double(), y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_lowers_accuracy(reference: Reference, name: str) -> None:
    model, x, y = reference
    x_adv = make_attack(name, eps=REF_EPS)(model, x, y)
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.05


@pytest.mark.parametrize("eps", [0.05, REF_EPS])
def test_fgsm_matches_torchattacks(reference64: Reference, eps: float) -> None:
    model, x, y = reference64
    ours = create_attack("fgsm", eps=eps)(model, x, y)
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    assert (ours - x).abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_pgd_linf_matches_torchattacks(reference: Reference, reference64: Reference) -> None:
    model, x, y = reference
    natural = _accuracy(model, x, y)

    torch.manual_seed(1)
    attack = create_attack("pgd", eps=REF_EPS, alpha=REF_ALPHA, steps=REF_STEPS)
    ours = _accuracy(model, attack(model, x, y), y)
    torch.manual_seed(2)
    ta = torchattacks.PGD(model, eps=REF_EPS, alpha=REF_ALPHA, steps=REF_STEPS, random_start=True)
    theirs = _accuracy(model, ta(x, y), y)
    # The comparison means something only if the model is neither broken nor unattackable.
    assert 0.05 < ours < 0.95 and ours < natural
    # Random starts differ; over seeds the two accuracies differ by under 1 point here.
    assert ours <= theirs + 0.02, (ours, theirs)
    assert ours >= theirs - 0.02, (ours, theirs)

    # Without a random start both are deterministic and compute the same iterates.
    model, x, y = reference64
    det = create_attack("pgd", eps=REF_EPS, alpha=REF_ALPHA, steps=REF_STEPS, random_start=False)
    ta = torchattacks.PGD(model, eps=REF_EPS, alpha=REF_ALPHA, steps=REF_STEPS, random_start=False)
    ours_adv, theirs_adv = det(model, x, y), ta(x, y)
    assert torch.equal(_predictions(model, ours_adv), _predictions(model, theirs_adv))
    torch.testing.assert_close(ours_adv, theirs_adv, rtol=0, atol=1e-6)


def test_pgd_l2_matches_torchattacks(reference: Reference, reference64: Reference) -> None:
    model, x, y = reference
    alpha = REF_L2_EPS / 4
    torch.manual_seed(1)
    attack = create_attack("pgd", eps=REF_L2_EPS, alpha=alpha, norm="L2")
    ours = _accuracy(model, attack(model, x, y), y)
    torch.manual_seed(2)
    ta = torchattacks.PGDL2(model, eps=REF_L2_EPS, alpha=alpha, steps=REF_STEPS)
    theirs = _accuracy(model, ta(x, y), y)
    assert 0.05 < ours < 0.95
    # Near 35% robust accuracy more points sit on the boundary than for L-inf above: over seeds
    # both attacks' accuracies spread by ~1.7 points, so allow 3.
    assert ours <= theirs + 0.03, (ours, theirs)
    assert ours >= theirs - 0.03, (ours, theirs)

    model, x, y = reference64
    det = create_attack(
        "pgd", eps=REF_L2_EPS, alpha=alpha, steps=REF_STEPS, norm="L2", random_start=False
    )
    ta = torchattacks.PGDL2(model, eps=REF_L2_EPS, alpha=alpha, steps=REF_STEPS, random_start=False)
    ours_adv, theirs_adv = det(model, x, y), ta(x, y)
    agree = (_predictions(model, ours_adv) == _predictions(model, theirs_adv)).float().mean()
    assert agree >= 0.99
    # torchattacks divides the gradient of the *mean* loss by ``norm + 1e-10``; we divide the
    # gradient of the summed loss by ``max(norm, 1e-12)``. For very confident points the mean
    # loss's gradient is tiny and the 1e-10 shifts the step length slightly, hence the tolerance.
    torch.testing.assert_close(ours_adv, theirs_adv, rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_restarts_never_weaken_the_attack(reference: Reference, norm: str) -> None:
    model, x, y = reference
    eps = REF_EPS if norm == "Linf" else REF_L2_EPS
    options = {"eps": eps, "alpha": eps / 4, "steps": 5, "norm": norm}
    torch.manual_seed(3)
    single = create_attack("pgd", restarts=1, **options)(model, x, y)
    torch.manual_seed(3)  # the first of the three restarts draws the same random start
    multi = create_attack("pgd", restarts=3, **options)(model, x, y)

    fooled_single = _predictions(model, single) != y
    fooled_multi = _predictions(model, multi) != y
    assert not (fooled_single & ~fooled_multi).any()  # point-wise: keep the first success
    assert fooled_multi.sum() >= fooled_single.sum()
    # Where no restart succeeded, the kept example has the highest loss seen, so at least the
    # first restart's.
    loss_fn = LOSSES.get("ce")
    with torch.no_grad():
        loss_single, loss_multi = loss_fn(model(single), y), loss_fn(model(multi), y)
    neither = ~fooled_single & ~fooled_multi
    assert (loss_multi[neither] >= loss_single[neither] - 1e-6).all()


class _ScriptedPGD(PGD):
    """PGD whose runs return prepared candidates, to test how restarts choose among them.

    Overrides the private ``_ascend`` (one run of the ascent): the choice is the only part of
    :meth:`PGD.perturb` whose outcome the reference comparisons above cannot pin down.
    """

    def __init__(self, candidates: list[torch.Tensor]) -> None:
        super().__init__(eps=1.0, restarts=len(candidates), random_start=False)
        self.candidates = iter(candidates)

    def _ascend(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Any
    ) -> torch.Tensor:
        return next(self.candidates)


def test_pgd_restarts_keep_first_success_else_highest_loss() -> None:
    model = nn.Flatten()  # the candidate's pixels are its logits; every label is 0
    fooled_low = [0.30, 0.31] + [0.0] * 8  # fooled, CE 2.07
    close_high = [0.50] + [0.49] * 9  # not fooled, CE 2.29
    fooled_high = [0.0, 1.0] + [0.0] * 8  # fooled, CE 2.86
    safe_low = [0.90, 0.10] + [0.0] * 8  # not fooled, CE 1.55
    safe_mid = [0.80] + [0.0] * 9  # not fooled, CE 1.62
    runs = [  # one row per example, one entry per restart
        [fooled_low, close_high, fooled_high],  # keep the first success, not a higher loss
        [safe_low, close_high, safe_mid],  # no success: keep the highest loss
        [safe_low, safe_mid, fooled_high],  # a success in the last run wins
    ]
    candidates = [torch.tensor([row[r] for row in runs]).view(3, 1, 1, 10) for r in range(3)]
    x, y = torch.zeros(3, 1, 1, 10), torch.zeros(3, dtype=torch.long)

    best = _ScriptedPGD(candidates)(model, x, y)

    assert torch.equal(best[0], candidates[0][0])
    assert torch.equal(best[1], candidates[1][1])
    assert torch.equal(best[2], candidates[2][2])
