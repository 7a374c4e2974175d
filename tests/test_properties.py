"""Property tests (hypothesis): the invariants of every registered attack, of the worst-case
evaluation, and of the config's TOML round trip, over randomly drawn inputs.

Attacks, for every name in the registry and both threat models (Linf, L2), over drawn budgets,
image shapes (C x H x W with C in {1, 3}, H = W in 4..10), batch sizes 1..6, numbers of classes
and dtypes (float32, float64; no attack claims half precision, so float16/bfloat16 are not
drawn): ``x_adv`` is inside the ball (up to rounding) and in [0, 1], keeps shape and dtype, and
the model's modes, parameters, batch-norm buffers and parameter ``.grad`` are left as found.

Evaluation: under any cascade of registered attacks, the worst case is never more accurate than
clean (robust points are correct and stable, point by point), and the per-attack accuracies of
the cascade never increase.

Config: a drawn valid configuration, resolved, rendered with :func:`robustlab.config.to_toml` and
parsed back, is the same configuration, and renders to the same text.

Each property runs a few examples by default (the file takes well under 30 s on one thread);
the ``slow``-marked twins run many more (``pytest -m slow tests/test_properties.py``).
"""

from __future__ import annotations

import copy
import itertools
import math
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustlab.attacks import create_attack, list_attacks
from robustlab.config import FLOAT32_TINY, build_config, to_toml

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ATTACKS = list_attacks()
NORMS = ("Linf", "L2")
# Small iteration budgets: the invariants do not depend on them (each attack's own tests check
# its published budget), and the defaults (100 iterations x 9 targets, 5,000 queries) take
# seconds per example.
FAST: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 4},
    "apgd-ce": {"steps": 4},
    "apgd-dlr": {"steps": 4},
    "apgd-t": {"steps": 4, "targets": 2},
    "autoattack": {"steps": 3, "queries": 20, "targets": 2},
    "fab": {"steps": 4},
    "fab-t": {"steps": 4, "targets": 2},
    "fgsm": {},
    "pgd": {"steps": 3},
    "square": {"queries": 20},
    "trades-kl": {"steps": 3},
}
# float32 rounding of x + delta (float64 is far inside it)
TOL = 1e-5
FAST_EXAMPLES = 5
SLOW_EXAMPLES = 40


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models: one intra-op thread is fastest (module-scoped: hypothesis re-runs a test
    # body many times inside one function-scoped fixture, which it refuses).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def twin(
    body: Callable[..., None], strategies: dict[str, st.SearchStrategy[Any]]
) -> tuple[Callable[..., None], Callable[..., None]]:
    """The property ``body`` as a fast default test and a ``slow``-marked one with more examples."""

    def make(examples: int) -> Callable[..., None]:
        return settings(
            max_examples=examples,
            deadline=None,
            derandomize=examples == FAST_EXAMPLES,  # the default run is reproducible
            suppress_health_check=[HealthCheck.too_slow],
        )(given(**strategies)(body))

    return make(FAST_EXAMPLES), pytest.mark.slow(make(SLOW_EXAMPLES))


# ---------------------------------------------------------------------------------------------
# Attacks


def _problem(
    seed: int, channels: int, side: int, batch: int, classes: int, dtype: torch.dtype
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP with batch norm (running statistics not at their defaults) and a batch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    features = channels * side * side
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(features, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, classes)
    ).to(dtype)
    with torch.no_grad():
        model.train()
        model(torch.rand(16, channels, side, side, generator=generator, dtype=dtype))
    x = torch.rand(batch, channels, side, side, generator=generator, dtype=dtype)
    x[:, :, 0] = 0.0  # pixels on the faces of the box, where the clipping binds
    x[:, :, -1] = 1.0
    y = torch.randint(0, classes, (batch,), generator=generator)
    return model, x, y


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "modes": [m.training for m in model.modules()],
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
    }


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
        for u, v in zip(a, b, strict=True)
    )


def _distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    order = math.inf if norm == "Linf" else 2
    return torch.linalg.vector_norm(delta.flatten(1).double(), ord=order, dim=1)


ATTACK_CASE = {
    "seed": st.integers(0, 2**16),
    "channels": st.sampled_from([1, 3]),
    "side": st.integers(4, 10),
    "batch": st.integers(1, 6),
    "classes": st.integers(4, 10),  # targeted DLR (APGD-T) needs 4; > the 2 targets drawn
    "dtype": st.sampled_from([torch.float32, torch.float64]),
    "budget": st.floats(0.0, 1.0),  # a fraction of the norm's largest budget
    "mode": st.sampled_from(["train", "eval", "mixed"]),
}


def attack_invariants(
    name: str,
    norm: str,
    seed: int,
    channels: int,
    side: int,
    batch: int,
    classes: int,
    dtype: torch.dtype,
    budget: float,
    mode: str,
) -> None:
    model, x, y = _problem(seed, channels, side, batch, classes, dtype)
    model.train(mode != "eval")
    if mode == "mixed":  # a frozen batch-norm layer inside a model in train mode
        model[2].eval()
    model[1].weight.grad = torch.randn_like(model[1].weight)  # left by an earlier backward pass
    # Linf: up to 0.5 (a budget of 1 allows every image); L2: up to half the box's diagonal.
    eps = budget * (0.5 if norm == "Linf" else 0.5 * math.sqrt(channels * side * side))
    before, x_before = _state(model), x.clone()

    x_adv = create_attack(name, eps=eps, norm=norm, **FAST[name])(model, x, y)

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad and torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    distance = _distance(x_adv - x, norm)
    assert (distance <= eps * (1 + TOL) + TOL).all(), (distance.max().item(), eps)
    assert torch.equal(x, x_before)
    after = _state(model)
    assert after["modes"] == before["modes"]
    for part in ("params", "grads", "buffers"):
        assert _same(after[part], before[part]), part


def _attack_tests(name: str, norm: str) -> tuple[Callable[..., None], Callable[..., None]]:
    def body(**drawn: Any) -> None:
        attack_invariants(name, norm, **drawn)

    return twin(body, ATTACK_CASE)


# One test per (attack, norm), so a failure names the attack; generated from the registry.
for _name in ATTACKS:
    for _norm in NORMS:
        _fast, _slow = _attack_tests(_name, _norm)
        _id = f"{_name.replace('-', '_')}_{_norm}"
        globals()[f"test_attack_invariants_{_id}"] = _fast
        globals()[f"test_attack_invariants_{_id}_slow"] = _slow


def test_every_registered_attack_has_property_tests() -> None:
    # A new attack without a small budget here fails loudly instead of running at its default.
    assert set(FAST) == set(ATTACKS)
    for name in ATTACKS:
        for norm in NORMS:
            assert f"test_attack_invariants_{name.replace('-', '_')}_{norm}" in globals()


# ---------------------------------------------------------------------------------------------
# The worst-case evaluation


def cascade_is_never_more_accurate_than_clean(
    names: list[str], norm: str, seed: int, batch: int, budget: float, stability: str
) -> None:
    from robustlab.evaluation import evaluate_robustness

    model, x, y = _problem(seed, 1, 6, batch, 4, torch.float32)
    model.eval()
    # Half the images at the model's own prediction, so both correct and wrong points occur.
    with torch.no_grad():
        y[: batch // 2] = model(x[: batch // 2]).argmax(1)
    eps = budget * (0.3 if norm == "Linf" else 3.0)
    attacks = {n: create_attack(n, eps=eps, norm=norm, **FAST[n]) for n in names}

    result = evaluate_robustness(model, x, y, attacks, batch_size=4, stability_labels=stability)

    assert result.robust_accuracy <= result.natural_accuracy
    assert not (result.robust & ~result.correct).any()  # robust => correct, point by point
    assert not (result.robust & ~result.stable).any()  # robust => stable
    per_attack = list(result.per_attack.values())
    assert all(later <= earlier for earlier, later in itertools.pairwise(per_attack))
    assert per_attack[-1] == pytest.approx(result.robust_accuracy)
    assert per_attack[0] <= result.natural_accuracy


(
    test_cascade_is_never_more_accurate_than_clean,
    test_cascade_is_never_more_accurate_than_clean_slow,
) = twin(
    cascade_is_never_more_accurate_than_clean,
    {
        "names": st.lists(
            st.sampled_from([n for n in ATTACKS if n != "autoattack"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        "norm": st.sampled_from(NORMS),
        "seed": st.integers(0, 2**16),
        "batch": st.integers(1, 9),
        "budget": st.floats(0.0, 1.0),
        "stability": st.sampled_from(["predicted", "true"]),
    },
)


# ---------------------------------------------------------------------------------------------
# Config: render the resolved config to TOML and parse it back


def _registry(kind: str) -> list[str]:
    from robustlab.config import _registry_names

    return _registry_names(kind)


_FINITE = {"allow_nan": False, "allow_infinity": False}
_KEY_CHARS = string.ascii_letters + string.digits + "_"


def _positive(high: float = 1e6) -> st.SearchStrategy[float]:
    return st.floats(min_value=1e-8, max_value=high, **_FINITE)


def _non_negative(high: float = 1e6) -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=high, **_FINITE)


def _options() -> st.SearchStrategy[dict[str, Any]]:
    """Flat options tables as a factory takes them (keyword names; scalar values)."""
    names = st.text(_KEY_CHARS, min_size=1, max_size=8).filter(lambda s: not s[0].isdigit())
    values = st.one_of(
        st.integers(-(2**31), 2**31), st.floats(**_FINITE), st.booleans(), st.text(max_size=8)
    )
    return st.dictionaries(names, values, max_size=3)


def _budget(norm: str) -> st.SearchStrategy[Any]:
    """A budget as a float or as papers write it (``"8/255"``): Linf in [0, 1], L2 any size."""
    high = 1.0 if norm == "Linf" else 50.0
    return st.one_of(
        st.just(0.0),
        st.floats(FLOAT32_TINY, high, **_FINITE),  # below: refused (the step would underflow)
        st.integers(0, int(255 * high)).map(lambda k: f"{k}/255"),
    )


@st.composite
def valid_trees(draw: st.DrawFn) -> dict[str, Any]:
    """A nested config tree of valid values (the combinations validate() allows)."""
    epochs = draw(st.integers(1, 400))
    norm = draw(st.sampled_from(["Linf", "L2"]))
    eval_norm = draw(st.sampled_from([None, "Linf", "L2"]))
    method = draw(st.sampled_from(_registry("methods")))
    war = method in ("gat", "trades", "awp", "mart") and draw(st.booleans())
    ascending = st.lists(_non_negative(float(epochs)), max_size=4).map(sorted)
    periods = (
        draw(st.lists(st.integers(1, epochs - 1), max_size=3, unique=True).map(sorted))
        if epochs > 1
        else []
    )
    tree: dict[str, Any] = {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "device": draw(st.sampled_from(["auto", "cpu"])),
        "tag": draw(st.text(max_size=20)),  # any text: quotes, backslashes, control characters
        "data": {
            "name": draw(st.sampled_from(_registry("datasets"))),
            "root": draw(st.text(min_size=1, max_size=20)),
            "val_size": draw(st.one_of(st.integers(0, 10_000), st.floats(0.0, 0.99, **_FINITE))),
            "train_size": draw(
                st.one_of(st.none(), st.integers(1, 10**6), st.floats(0.01, 0.99, **_FINITE))
            ),
            "augment": draw(st.sampled_from(_registry("augmentations"))),
            "options": draw(_options()),
            "extra_fraction": draw(st.floats(0.0, 0.99, **_FINITE)),
        },
        "model": {
            "name": draw(st.sampled_from(_registry("models"))),
            "width": draw(st.one_of(st.none(), st.integers(1, 1024))),
            "depth": draw(st.one_of(st.none(), st.integers(1, 200))),
            "normalize": draw(st.booleans()),
            "options": draw(_options()),
        },
        "method": {
            "name": method,
            "lam": draw(st.one_of(st.none(), _non_negative(100.0))),
            "lam_schedule": "war" if war else "constant",
            "zeta": draw(_positive(100.0)) if war else None,
            "war_alpha": draw(_positive(1.0)),
            "options": draw(_options()),
        },
        "attack": {
            "norm": norm,
            "eps": draw(_budget(norm)),
            "alpha": draw(st.one_of(st.none(), _positive(1.0))),
            "steps": draw(st.integers(1, 100)),
            "random_start": draw(st.booleans()),
            "loss": draw(st.sampled_from(_registry("attack_losses"))),
            "bn_mode": draw(st.sampled_from(["auto", "eval", "train"])),
        },
        "eval": {
            "norm": eval_norm,
            # unset, eval.eps takes attack.eps: an L2 one can be too large for a Linf eval
            "eps": draw(
                _budget(eval_norm)
                if (eval_norm, norm) == ("Linf", "L2")
                else st.one_of(st.none(), _budget(eval_norm or norm))
            ),
            "alpha": draw(st.one_of(st.none(), _positive(1.0))),
            "steps": draw(st.integers(1, 100)),
            "restarts": draw(st.integers(1, 10)),
            "n": draw(st.one_of(st.none(), st.integers(1, 10**5))),
            "n_train": draw(st.integers(0, 10**4)),
            "batch_size": draw(st.integers(1, 4096)),
            "stability_labels": draw(st.sampled_from(["predicted", "true"])),
            "every": draw(st.integers(1, 10)),
            "final": draw(st.booleans()),
            "select": draw(st.sampled_from(_registry("selection_metrics"))),
        },
        "train": {
            "epochs": epochs,
            "batch_size": draw(st.integers(1, 4096)),
            "optimizer": draw(st.sampled_from(_registry("optimizers"))),
            "lr": draw(_positive(10.0)),
            "momentum": draw(st.floats(0.0, 0.999, **_FINITE)),
            "nesterov": draw(st.booleans()),
            "weight_decay": draw(_non_negative(1.0)),
            "schedule": draw(st.sampled_from(_registry("schedules"))),
            "milestones": draw(st.one_of(st.none(), ascending)),
            "gamma": draw(_positive(1.0)),
            "cyclic_peak": draw(st.floats(0.01, 0.99, **_FINITE)),
            "warmup_epochs": draw(_non_negative(float(epochs))),
            "periods": periods,
            "precision": draw(st.sampled_from(["fp32", "bf16", "fp16"])),
            "save_epochs": draw(st.lists(st.integers(1, epochs), max_size=3, unique=True)),
            "track_every": draw(st.integers(0, 1000)),
            "deterministic": draw(st.booleans()),
            "init_from": draw(st.text(max_size=20)),
        },
    }
    # A step of 0 only goes with a budget of 0 (validate); no step is drawn as 0 here.
    return _drop_none(tree)


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    """Unset keys are left out, as in a file (TOML has no null)."""
    return {
        k: _drop_none(v) if isinstance(v, dict) and k != "options" else v
        for k, v in tree.items()
        if v is not None
    }


def config_round_trip(tree: dict[str, Any], tmp: Path) -> None:
    config = build_config(base=tree)
    text = to_toml(config)
    tomllib.loads(text)  # valid TOML
    path = tmp / "config.toml"
    path.write_text(text, encoding="utf-8")
    again = build_config(path)
    assert again == config
    assert to_toml(again) == text


def test_config_round_trip(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("round-trip")

    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(tree=valid_trees())
    def check(tree: dict[str, Any]) -> None:
        config_round_trip(tree, tmp)

    check()


@pytest.mark.slow
def test_config_round_trip_slow(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("round-trip")

    @settings(max_examples=500, deadline=None)
    @given(tree=valid_trees())
    def check(tree: dict[str, Any]) -> None:
        config_round_trip(tree, tmp)

    check()


def test_the_drawn_trees_are_valid_and_varied() -> None:
    # The strategy draws what it claims: configs that validate, across many keys' values.
    seen: dict[str, set[Any]] = {"method": set(), "norm": set(), "schedule": set()}

    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(tree=valid_trees())
    def collect(tree: dict[str, Any]) -> None:
        config = build_config(base=copy.deepcopy(tree))
        seen["method"].add(config.method.name)
        seen["norm"].add(config.attack.norm)
        seen["schedule"].add(config.train.schedule)

    collect()
    assert len(seen["method"]) >= 3 and seen["norm"] == {"Linf", "L2"}
    assert len(seen["schedule"]) >= 2
