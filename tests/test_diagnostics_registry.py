"""The diagnostics registry: names, errors, and the contract every measurement keeps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab import diagnostics
from robustlab.attacks import create_attack
from robustlab.diagnostics import DIAGNOSTICS, DiagnosticResult, create_diagnostic, measure
from robustlab.errors import ConfigError, UnknownNameError

EXPECTED = [
    "connectivity",
    "gaps",
    "hessian",
    "landscape",
    "lipschitz",
    "loss_variation",
    "margins",
    "perturbation_similarity",
    "spectra",
    "stability",
]


def tiny_cnn() -> nn.Module:
    """Two convolutions (one strided), batch norm, a linear head: 1x8x8 images, 3 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


def call_generically(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Call a measurement the way a command line would: from its registry metadata only."""
    meta = DIAGNOSTICS.meta(name)
    options = {}
    if meta["attack"]:
        options["attack"] = create_attack("pgd", eps=0.1, steps=2)
    if meta["data"] == "train_test":
        options.update(x_test=x[:5], y_test=y[:5])
    # Extra inputs a command line supplies from a flag (connectivity's --with CHECKPOINT).
    for option, spec in meta.get("inputs", {}).items():
        assert spec["kind"] == "model" and spec["flag"].startswith("--") and spec["help"]
        options[option] = tiny_cnn()
    return measure(name, model, x, y, **options)


def test_every_measurement_is_registered_and_importable() -> None:
    assert diagnostics.list_diagnostics() == EXPECTED
    for name in EXPECTED:
        assert getattr(diagnostics, name) is DIAGNOSTICS.get(name)
        assert DIAGNOSTICS.meta(name)["data"] in diagnostics.DATA_KINDS
        assert DIAGNOSTICS.get(name).__doc__


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as error:
        measure("margin", nn.Linear(2, 2), torch.rand(1, 2), torch.zeros(1, dtype=torch.long))
    assert isinstance(error.value, ConfigError)
    assert "valid: " + ", ".join(EXPECTED) in str(error.value)
    assert "did you mean 'margins'" in str(error.value)


def test_options_are_checked_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"diagnostic\[margins\]\.nrm"):
        create_diagnostic("margins", nrm="L2")
    with pytest.raises(ConfigError, match="expected an integer"):
        create_diagnostic("margins", bins=2.5)
    with pytest.raises(ConfigError, match="norm"):
        measure(
            "margins",
            nn.Linear(2, 2),
            torch.rand(1, 2),
            torch.zeros(1, dtype=torch.long),
            norm="L3",
        )


@pytest.mark.parametrize("name", EXPECTED)
def test_measurement_contract(name: str, one_thread) -> None:
    """Eval mode during the measurement (batch norm's running statistics untouched), the
    model's mode restored after, parameter gradients untouched, a JSON-ready summary."""
    model = tiny_cnn()
    model.train()
    model[1].eval()  # a deliberately mixed state must survive too
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 3, (12,))
    running_mean = model[1].running_mean.clone()
    result = call_generically(name, model, x, y)
    assert isinstance(result, DiagnosticResult)
    assert model.training and not model[1].training and model[3].training
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(p.grad is None for p in model.parameters())
    summary = result.summary()
    json.dumps(summary)  # plain scalars, lists and dicts only
    assert "tensor(" not in repr(result)  # printing a result shows its summary, not its points


def test_uint8_images_are_mapped_to_the_unit_interval(one_thread) -> None:
    model = tiny_cnn().eval()
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (6,))
    from_uint8 = diagnostics.margins(model, x, y)
    from_float = diagnostics.margins(model, x.float() / 255, y)
    assert torch.allclose(from_uint8.margin, from_float.margin)


def test_readme_diagnostics_example_runs(one_thread, capsys) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Diagnostics", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and all(math.isfinite(float(value)) for value in printed)


def test_split_figure_keys_results_by_split_and_gives_the_first():
    """What every per-split plot starts from: one result as split ``""``, a mapping as it is,
    its first result, and a figure with ``ncols`` axes."""
    from robustlab.diagnostics._plot import split_figure

    results, first, figure, axes = split_figure("only")
    assert results == {"": "only"} and first == "only" and len(axes) == 1
    results, first, figure, axes = split_figure({"train": 1, "test": 2}, ncols=2, size=(10, 4))
    assert results == {"train": 1, "test": 2} and first == 1 and len(axes) == 2
    assert tuple(figure.get_size_inches()) == (10, 4)
