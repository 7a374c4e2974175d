"""Mode connectivity: the curve's ends are the two models exactly, its middle point loads as a
checkpoint, batch norm is re-estimated, and models of two architectures are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import create_attack
from robustlab.diagnostics import BezierCurve, connectivity, plot_connectivity
from robustlab.diagnostics._parameters import AtParameters, seeded
from robustlab.diagnostics.connectivity import bezier_coefficients, reestimate_batch_norm
from robustlab.errors import ConfigError


def bn_net(width: int = 6, seed: int = 0) -> nn.Module:
    """A small network with batch norm whose running statistics are not the defaults."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3)
    )
    net[2].running_mean.uniform_(-0.3, 0.3)
    net[2].running_var.uniform_(0.5, 2.0)
    return net


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=generator), torch.randint(
        0, 3, (n,), generator=generator
    )


def metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack=None, seed=0) -> tuple:
    model.eval()
    if attack is not None:
        with seeded(seed, x.device):  # one batch: seed + 0
            x = attack(model, x, y)
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) != y).float().mean())


def test_the_ends_reproduce_both_models_exactly(one_thread) -> None:
    first, second = bn_net(seed=0), bn_net(seed=1)
    x_train, y_train = data(32, 0)
    x_test, y_test = data(16, 1)
    attack = create_attack("pgd", eps=0.1, steps=2)
    result = connectivity(
        first, x_train, y_train, x_test, y_test,
        other=second, attack=attack, epochs=2, batch_size=16, points=5, seed=7,
    )  # fmt: skip
    assert result.t == [0.0, 0.25, 0.5, 0.75, 1.0]
    for end, model in ((0, first), (-1, second)):
        for split, (x, y) in (("train", (x_train, y_train)), ("test", (x_test, y_test))):
            loss, error = metrics(model, x, y)
            assert result.curve[f"{split}_nat_loss"][end] == loss  # exactly, not approximately
            assert result.curve[f"{split}_nat_error"][end] == error
            rob_loss, rob_error = metrics(model, x, y, attack=attack, seed=7)
            assert result.curve[f"{split}_rob_loss"][end] == pytest.approx(rob_loss, abs=1e-6)
            assert result.curve[f"{split}_rob_error"][end] == rob_error
        assert result.line["test_nat_loss"][end] == result.curve["test_nat_loss"][end]
    assert result.objective == "adversarial" and len(result.train_losses) == 2


def test_the_middle_point_loads_as_a_checkpoint(one_thread) -> None:
    first, second = bn_net(seed=0), bn_net(seed=1)
    x_train, y_train = data(32, 0)
    x_test, y_test = data(16, 1)
    result = connectivity(
        first, x_train, y_train, x_test, y_test,
        other=second, order=3, epochs=3, batch_size=8, points=3,
    )  # fmt: skip
    middle = bn_net(seed=5)
    middle.load_state_dict(result.middle_state)
    assert result.curve["test_nat_loss"][1] == pytest.approx(metrics(middle, x_test, y_test)[0])
    # The curve was trained: its middle is not the straight line's.
    halfway = {
        name: (a + b) / 2
        for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True)
    }
    assert not torch.allclose(result.middle_state["1.weight"], halfway["1.weight"])
    assert result.objective == "natural" and result.attack is None
    assert "test_rob_loss" not in result.curve


def test_bezier_curve_ends_are_fixed_and_start_on_the_line() -> None:
    start, end = torch.randn(10), torch.randn(10)
    for order in (1, 2, 3, 4):
        c0, c1 = (
            bezier_coefficients(torch.tensor(0.0), order),
            bezier_coefficients(torch.tensor(1.0), order),
        )
        assert c0.tolist() == [1.0] + [0.0] * order and c1.tolist() == [0.0] * order + [1.0]
        t = torch.tensor(0.3)
        assert float(bezier_coefficients(t, order).sum()) == pytest.approx(1.0)
        curve = BezierCurve(start, end, order)
        assert torch.equal(curve(torch.tensor(0.0)), start)
        assert torch.equal(curve(torch.tensor(1.0)), end)
        assert torch.allclose(curve(t), 0.7 * start + 0.3 * end, atol=1e-6)


def test_batch_norm_is_reestimated_from_the_training_points() -> None:
    """One pass with momentum b / (seen + b): the mean of the batch statistics."""
    model = bn_net()
    x, _ = data(24, 2)
    params = dict(model.named_parameters())
    buffers = reestimate_batch_norm(model, params, x, batch_size=8)
    hidden = model[1](x.flatten(1)).detach()
    means = torch.stack([hidden[i : i + 8].mean(0) for i in range(0, 24, 8)]).mean(0)
    variances = torch.stack([hidden[i : i + 8].var(0) for i in range(0, 24, 8)]).mean(0)
    assert torch.allclose(buffers["2.running_mean"], means, atol=1e-6)
    assert torch.allclose(buffers["2.running_var"], variances, atol=1e-5)
    assert not torch.equal(model[2].running_mean, means)  # the model's own are untouched
    assert model[2].momentum == 0.1
    moved = AtParameters(model, {**params, **buffers}).eval()
    assert moved(x).shape == (24, 3)


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (bn_net(width=8), r"'1.weight' has shape \(8, 16\) there and \(6, 16\) here"),
        (nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), "its layers differ"),
        (nn.Linear(16, 3), "a Linear, not a Sequential"),
    ],
)
def test_models_of_two_architectures_are_refused_in_one_line(other: nn.Module, match: str) -> None:
    x, y = data(4, 0)
    with pytest.raises(ConfigError, match=match) as error:
        connectivity(bn_net(), x, y, x, y, other=other)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("other=")


@pytest.mark.parametrize(
    ("options", "match"),
    [({"order": 5}, "order=5"), ({"order": 1}, "order=1"), ({"points": 1}, "points=1")],
)
def test_bad_settings_are_refused(options: dict, match: str) -> None:
    x, y = data(4, 0)
    with pytest.raises(ConfigError, match=match):
        connectivity(bn_net(), x, y, x, y, other=bn_net(seed=1), **options)


def test_plot_writes_a_png(tmp_path, one_thread) -> None:
    x, y = data(16, 0)
    attack = create_attack("pgd", eps=0.1, steps=1)
    result = connectivity(
        bn_net(), x, y, x, y, other=bn_net(seed=1), attack=attack, epochs=1, points=5
    )
    path = plot_connectivity(result, tmp_path / "connectivity.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


def test_readme_parameter_space_example_runs(tmp_path, monkeypatch, one_thread, capsys) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("#### Curvature, loss landscape and mode connectivity", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("[1.0, ")  # similarity 1 at a = 0
    assert (tmp_path / "connectivity.png").read_bytes()[:4] == b"\x89PNG"


def _trained_mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """A small MLP trained to a low loss on (x, y) (full-batch SGD, 150 steps)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


def test_the_default_curve_bends_below_the_line(one_thread) -> None:
    """Garipov et al.'s claim at the defaults (40 epochs, lr 0.03): between two minima the
    trained curve's midpoint has a lower training loss than the line's."""
    x, y = data(96, 3)
    first, second = _trained_mlp(x, y, 0), _trained_mlp(x, y, 1)
    result = connectivity(first, x, y, x[:16], y[:16], other=second, points=5, batch_size=32)
    curve, line = result.curve["train_nat_loss"][2], result.line["train_nat_loss"][2]
    ends = max(result.curve["train_nat_loss"][0], result.curve["train_nat_loss"][-1])
    assert line > 2 * ends  # the line crosses a barrier between the two minima
    # The curve goes around much of it (the former 10 epochs at lr 0.01: 0.99 of the line's).
    assert curve < 0.75 * line, (curve, line)
    assert result.epochs == 40 and len(result.train_losses) == 40


def test_torchscript_models_give_the_eager_models_curve(one_thread) -> None:
    x, y = data(48, 4)
    first, second = _trained_mlp(x, y, 0), _trained_mlp(x, y, 1)
    options = {"other": second, "epochs": 2, "points": 3, "batch_size": 16}
    eager = connectivity(first, x, y, x[:8], y[:8], **options)
    options["other"] = torch.jit.script(second)
    scripted = connectivity(torch.jit.script(first), x, y, x[:8], y[:8], **options)
    assert scripted.curve["train_nat_loss"] == pytest.approx(eager.curve["train_nat_loss"])


def test_a_torchscript_model_with_batch_norm_is_refused_in_one_line() -> None:
    x, y = data(8, 0)
    scripted = torch.jit.script(bn_net())
    with pytest.raises(ConfigError, match="TorchScript with batch norm"):
        connectivity(scripted, x, y, x, y, other=torch.jit.script(bn_net(seed=1)))
