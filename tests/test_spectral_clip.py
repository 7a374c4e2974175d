"""Spectral-norm clipping as a training option (issue 9, point 3; Wen et al. 2020 App. B.4.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.diagnostics import conv_singular_values, layer_input_sizes, spectra
from robustlab.diagnostics.spectra import clip_conv_with_norm, conv_operator_norm
from robustlab.errors import ConfigError
from robustlab.rundir import RunDirectory
from robustlab.training.runner import RunInterrupted, fit, prepare
from robustlab.training.spectral_clip import check_clippable, clip_spectral_norms

C = 0.7
# LeNet (width 2: convs of 4 and 8 channels on 8x8 and 4x4 inputs, FCs of 128 and 10) on digits.
LENET = [
    "data.name=digits", "model.name=lenet", "model.width=2", "train.epochs=2",
    "train.batch_size=128", "attack.steps=2", "eval.steps=2", "eval.n_train=64", "eval.n=64",
    "eval.lipschitz_n=0", "eval.final=false", "device=cpu",
]  # fmt: skip


def exact_norms(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Every layer's exact operator norm: a conv's at its input size and stride (circular
    padding; conv_singular_values is checked against explicit operator matrices in
    test_diagnostics_spectra), a linear layer's largest singular value; in float64."""
    sizes = layer_input_sizes(model, x)
    norms = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Conv2d) and name in sizes:
            values = conv_singular_values(
                weight.detach().double(), sizes[name], stride=module.stride, groups=module.groups
            )
            norms[name] = float(values[0])
        elif isinstance(module, nn.Linear):
            norms[name] = float(torch.linalg.svdvals(weight.detach().double())[0])
    return norms


def test_training_with_a_clip_bounds_every_layers_exact_operator_norm(tmp_path, one_thread) -> None:
    config = build_config(None, [*LENET, f"train.spectral_clip={C}"])
    experiment = prepare(config)
    x = experiment.fixed_x[:1]
    before = exact_norms(experiment.model, x)
    assert max(before.values()) > C + 0.3  # the clip has work to do
    run = RunDirectory.create(tmp_path / "run", config, "clip")
    history = fit(experiment, run, "clip", show_progress=False).history
    after = exact_norms(experiment.model, x)
    assert set(after) == set(before) and len(after) == 4  # 2 convs, 2 linear layers
    assert all(norm <= C + 1e-4 for norm in after.values()), after
    assert max(after.values()) > C - 0.05  # clipped to C, not shrunk far below it
    for epoch in history:
        assert epoch["max_spectral_norm"] <= C + 1e-4
    assert history[-1]["max_spectral_norm"] == pytest.approx(max(after.values()), abs=1e-5)
    assert run.read_metrics()[-1]["max_spectral_norm"] == history[-1]["max_spectral_norm"]
    # The spectra diagnostic measures the same model the same way.
    measured = spectra(experiment.model, x).summary()["max_spectral_norm"]
    assert measured == pytest.approx(max(after.values()), abs=1e-5)


def test_without_clip_the_metric_is_absent(tmp_path, fast_run, one_thread) -> None:
    config = build_config(None, [*fast_run, "train.epochs=1", "eval.final=false"])
    run = RunDirectory.create(tmp_path / "run", config, "plain")
    (epoch,) = fit(prepare(config), run, "plain", show_progress=False).history
    assert "max_spectral_norm" not in epoch


def test_resume_with_clipping_matches_an_uninterrupted_run(tmp_path, one_thread) -> None:
    """Clipping happens inside the epoch's work, before the checkpoint: a run stopped after
    epoch 2 and resumed ends with exactly the uninterrupted run's metrics. Clipping every 2
    epochs: epoch 1 has none (null), epoch 3 is the last and clips."""
    overrides = [*LENET, "train.epochs=3", "train.spectral_clip=0.9", "train.spectral_clip_every=2"]
    config = build_config(None, overrides)
    full = fit(
        prepare(config), RunDirectory.create(tmp_path / "a", config, "a"), "a", show_progress=False
    ).history
    assert [m["max_spectral_norm"] is None for m in full] == [True, False, False]

    def stop_after_two(metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt

    run = RunDirectory.create(tmp_path / "b", config, "b")
    with pytest.raises(RunInterrupted):
        fit(prepare(config), run, "b", show_progress=False, on_epoch=stop_after_two)
    resumed = fit(prepare(config), run, "b", resume=True, show_progress=False).history

    def without_time(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in m.items() if k != "time_s"} for m in history]

    assert without_time(resumed) == without_time(full)


def test_strided_pointwise_and_kernel_larger_than_input_layers_are_bounded(one_thread) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),  # 8x8 -> 4x4, strided
        nn.ReLU(),
        nn.Conv2d(4, 6, 1),  # pointwise
        nn.MaxPool2d(2),  # -> 2x2
        nn.Conv2d(6, 3, 3, padding=1),  # a 3x3 kernel on a 2x2 input
        nn.Conv2d(3, 5, 1, stride=2),  # strided pointwise, 2x2 -> 1x1
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    x = torch.rand(1, 2, 8, 8)
    assert min(exact_norms(model, x).values()) > 1.0
    reported = clip_spectral_norms(model, x, 0.5)
    after = exact_norms(model, x)
    assert all(norm <= 0.5 + 1e-4 for norm in after.values()), after
    assert reported == pytest.approx(max(after.values()), abs=1e-5)


def test_dilated_convolutions_are_refused() -> None:
    with pytest.raises(ConfigError, match="dilated"):
        check_clippable(nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2)))


@pytest.mark.parametrize(
    ("value", "why"), [("0", "must be > 0"), ("-1", "must be > 0"), ("nan", "finite")]
)
def test_a_bound_that_is_not_positive_is_refused(
    value, why, tmp_path, monkeypatch, capsys, fast_run
) -> None:
    with pytest.raises(ConfigError, match=rf"train\.spectral_clip=.*{why}"):
        build_config(None, [f"train.spectral_clip={value}"])
    monkeypatch.chdir(tmp_path)
    sets = [
        part for item in [*fast_run, f"train.spectral_clip={value}"] for part in ("--set", item)
    ]
    assert main(["train", *sets, "--out", "run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "train.spectral_clip" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="train.spectral_clip_every"):
        build_config(None, ["train.spectral_clip=1", "train.spectral_clip_every=0"])


@pytest.mark.parametrize(
    ("shape", "n", "stride", "groups"),
    [
        ((5, 3, 3, 3), 6, 1, 1),
        ((6, 2, 3, 3), 8, 2, 1),
        ((4, 4, 1, 1), 6, 2, 2),
        ((3, 2, 3, 3), 2, 1, 1),
    ],
)
def test_operator_norm_and_clip_norm_are_the_exact_largest_singular_value(
    shape, n, stride, groups
) -> None:
    """The Gram-matrix route to the largest singular value, and the norm the clipping returns,
    against the full spectrum (itself checked against explicit operator matrices)."""
    kernel = torch.randn(*shape, dtype=torch.float64)
    exact = conv_singular_values(kernel, n, stride=stride, groups=groups)[0]
    assert conv_operator_norm(kernel, n, stride=stride, groups=groups) == pytest.approx(
        float(exact), rel=1e-10
    )
    if stride == 1 and shape[-1] <= n:
        clipped, norm = clip_conv_with_norm(kernel, n, 0.5 * float(exact), groups=groups)
        after = conv_singular_values(clipped, n, groups=groups)[0]
        assert norm == pytest.approx(float(after), rel=1e-10) and norm <= 0.5 * float(exact) + 1e-12
