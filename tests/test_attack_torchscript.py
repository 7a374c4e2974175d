"""Every registered attack on TorchScript models (``torch.jit.script`` and ``torch.jit.trace``),
in the library and through ``robustlab eval FILE --data digits`` without ``--mean/--std``.

A scripted module supports no forward hooks, so nothing on the attacks' path may rely on one;
the attacks only call the model. On the same weights, an attack on the TorchScript model must
give what it gives on the eager one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from robustlab._options import accepted_options
from robustlab.attacks import ATTACKS, create_attack, list_attacks
from robustlab.cli.main import main
from robustlab.errors import AttackInputError

ATTACK_NAMES = list_attacks()
# Small budgets: what is tested is that the model can be attacked, not the attack's strength.
# ``targets`` must stay below the model's 10 classes; 3 keeps APGD-T and FAB-T short.
SMALL_BUDGET = {"steps": 3, "queries": 20, "targets": 3}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # torch.jit.script and trace are deprecated in recent torch, and still what users export.
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
]


def _eager() -> nn.Module:
    """A small digits classifier (1 x 8 x 8 in [0, 1], 10 classes) in eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(model)


def _trace(model: nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.trace(model, torch.rand(2, 1, 8, 8))


CONVERSIONS: dict[str, Callable[[nn.Module], torch.jit.ScriptModule]] = {
    "script": _script,
    "trace": _trace,
}


def _budget(name: str) -> dict[str, Any]:
    """The small budget, for the options the attack takes."""
    taken = set(accepted_options(ATTACKS.get(name)))
    return {key: value for key, value in SMALL_BUDGET.items() if key in taken}


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    return x, torch.randint(0, 10, (n,), generator=generator)


@pytest.mark.parametrize("conversion", list(CONVERSIONS))
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_runs_on_a_torchscript_model(name: str, conversion: str) -> None:
    eager = _eager()
    compiled = CONVERSIONS[conversion](eager)
    x, y = _batch()
    eps = 0.1
    outputs = {}
    for kind, model in (("eager", eager), (conversion, compiled)):
        torch.manual_seed(0)
        outputs[kind] = create_attack(name, eps=eps, **_budget(name))(model, x, y)
        assert not model.training  # the mode is restored on the TorchScript module too
    x_adv = outputs[conversion]
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().amax() <= eps + 1e-6
    # The same weights and the same random draws: the same adversarial examples.
    torch.testing.assert_close(x_adv, outputs["eager"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_torchscript_model_returning_the_wrong_shape_is_rejected(name: str) -> None:
    """The check of the model's first output still runs without forward hooks."""
    flat = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Flatten(0)))
    x, y = _batch(4)
    with pytest.raises(AttackInputError, match=r"logits of shape \(4, classes\), got \(40,\)"):
        create_attack(name, eps=0.1, **_budget(name))(flat, x, y)


def _cli_flags(name: str) -> list[str]:
    """The small budget as ``robustlab eval`` flags, each named as the attack's keyword."""
    return [part for key, value in _budget(name).items() for part in (f"--{key}", str(value))]


@pytest.mark.parametrize("conversion", list(CONVERSIONS))
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_cli_evaluates_a_torchscript_file_with_every_attack(
    tmp_path, monkeypatch, capsys, name: str, conversion: str
) -> None:
    """``robustlab eval FILE.pt --data digits --eps 0.1 --attack NAME --n 16``: no --mean/--std,
    so the attacks get the TorchScript module itself."""
    monkeypatch.chdir(tmp_path)
    CONVERSIONS[conversion](_eager()).save(str(tmp_path / "model.pt"))
    args = ["eval", "model.pt", "--data", "digits", "--eps", "0.1", "--attack", name, "--n", "16"]
    code = main([*args, *_cli_flags(name), "--seed", "0", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["n"] == 16 and result["source"] == "model.pt"
    assert 0 <= result["robust_accuracy"] <= result["natural_accuracy"]
    assert result["max_perturbation_norm"] <= 0.1 + 1e-6
    components = list(create_attack(name).components) if name == "autoattack" else [name]
    assert list(result["per_attack"]) == components
