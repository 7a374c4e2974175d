"""Fractional widths (Wu et al.'s WRN-34-0.5) and the bottleneck WRN-50-2 (Wen et al. App. D.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import ConfigError
from robustlab.models import count_parameters, create_model, family_spec


def _wrn_parameters(depth: int, channels: list[int], classes: int, in_channels: int = 3) -> int:
    """WideResNet's parameter count written out from its definition (TRADES' code without the
    unused sub_block1): stem conv; per block BN, conv3x3, BN, conv3x3 and a 1x1 shortcut when
    the shape changes; final BN; FC."""
    n = (depth - 4) // 6
    total = in_channels * channels[0] * 9
    for group in range(3):
        for block in range(n):
            cin = channels[group] if block == 0 else channels[group + 1]
            cout = channels[group + 1]
            total += 2 * cin + cin * cout * 9 + 2 * cout + cout * cout * 9
            if block == 0 and (cin != cout or group > 0):
                total += cin * cout
    return total + 2 * channels[3] + channels[3] * classes + classes


def test_the_written_out_count_matches_the_published_wrn_34_10() -> None:
    # Validates the formula the fractional case is checked with (46.16M, Zagoruyko & Komodakis).
    assert _wrn_parameters(34, [16, 160, 320, 640], 10) == 46_160_474


def test_wrn_34_half_has_the_rounded_channels_and_their_parameters() -> None:
    model = create_model("wrn", 10, 3, 32, width=0.5, depth=34)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 16  # the stem keeps 16 channels, as the TRADES code
    assert [group[0].conv1.out_channels for group in model.net.groups] == [8, 16, 32]
    assert {m.out_channels for m in convs[1:]} == {8, 16, 32}
    assert model.net.fc.in_features == 32
    assert count_parameters(model) == _wrn_parameters(34, [16, 8, 16, 32], 10)
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_a_fraction_that_does_not_divide_is_rounded_down() -> None:
    model = create_model("wrn", 10, 3, 32, width=0.3, depth=16)  # 4.8, 9.6, 19.2 channels
    assert model.net.fc.in_features == 19
    assert count_parameters(model) == _wrn_parameters(16, [16, 4, 9, 19], 10)


def test_vgg_takes_a_fractional_factor_as_liu_et_al_code() -> None:
    model = create_model("vgg", 10, 3, 32, width=1.5, depth=11)  # int(4 * 1.5) = 6, ...
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [6, 12, 24, 24, 48, 48, 48, 48]


def test_a_width_too_small_for_a_channel_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("wrn", 10, 3, 32, width=0.05, depth=16)  # int(16 * 0.05) = 0
    assert info.value.key == "model.width"


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet_cifar", "densenet_bc"])
def test_integer_families_refuse_a_fraction(name: str) -> None:
    assert not family_spec(name).fractional_width
    with pytest.raises(ConfigError, match="needs a positive integer") as info:
        create_model(name, 10, 3, 32, width=0.5)
    assert info.value.key == "model.width"


def test_config_keeps_the_fraction_and_whole_floats_become_ints() -> None:
    assert build_config(overrides=["model.name=wrn", "model.width=0.5"]).model.width == 0.5
    assert build_config(overrides=["model.name=wrn", "model.width=1/2"]).model.width == 0.5
    whole = build_config(overrides=["model.name=wrn", "model.width=10.0"]).model.width
    assert whole == 10 and isinstance(whole, int)


def test_cli_refuses_a_fraction_for_an_integer_family_in_one_line(capsys) -> None:
    code = main(["config", "--set", "model.width=0.5"])  # the default mlp
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("robustlab config: error: model.width=0.5: mlp needs a positive integer")


def test_cli_accepts_wrn_34_half(capsys) -> None:
    overrides = ["model.name=wrn", "model.width=0.5", "model.depth=34", "data.name=synthetic"]
    code = main(["config", *[arg for o in overrides for arg in ("--set", o)]])
    assert code == 0
    assert "width = 0.5" in capsys.readouterr().out


# ------------------------------------------------------------------- WRN-50-2 (bottleneck)

TORCHVISION_WIDE_RESNET50_2 = 68_883_240  # torchvision's published count (1,000 classes)


def _count_on_meta(**kwargs) -> int:
    with torch.device("meta"):  # 68.9M parameters, none allocated
        return count_parameters(create_model("wrn_bottleneck", **kwargs))


def test_wrn_50_2_with_the_imagenet_stem_is_torchvisions() -> None:
    count = _count_on_meta(
        num_classes=1000, in_channels=3, image_size=224, stem="imagenet", init="kaiming"
    )
    assert count == TORCHVISION_WIDE_RESNET50_2


def test_wrn_50_2_for_tiny_imagenet_parameter_count() -> None:
    # 200 classes: the FC loses 800 x 2048 weights and 800 biases; Wen et al.'s 3x3 stem has
    # 3 x 64 x (9 - 49) fewer weights than the 7x7 one.
    fc = 800 * 2048 + 800
    imagenet_stem = _count_on_meta(num_classes=200, in_channels=3, image_size=56, stem="imagenet")
    assert imagenet_stem == TORCHVISION_WIDE_RESNET50_2 - fc == 67_244_040
    small = _count_on_meta(num_classes=200, in_channels=3, image_size=56)
    assert small == imagenet_stem - 3 * 64 * (49 - 9) == 67_236_360


def test_bottleneck_layout_and_small_stem_resolution() -> None:
    model = create_model("wrn_bottleneck", 7, 3, 24, width=2, base_channels=4)
    units = [len(group) for group in model.net.groups]
    assert units == [3, 4, 6, 3]
    first = model.net.groups[1][0]  # planes 8: inner 3x3 width 2 x 8, output 4 x 8, stride 2
    assert first.conv2.out_channels == 16 and first.conv3.out_channels == 32
    assert first.conv2.stride == (2, 2) and first.shortcut is not None
    seen = {}

    def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen["g0"] = output.shape

    model.net.groups[0].register_forward_hook(record)
    model(torch.rand(2, 3, 24, 24))
    assert seen["g0"] == (2, 16, 24, 24)  # no stride and no max-pool before the first group
    deeper = create_model("wrn_bottleneck", 7, 3, 24, width=1, depth=101, base_channels=4)
    assert [len(group) for group in deeper.net.groups] == [3, 4, 23, 3]


def test_bottleneck_xavier_init_by_default() -> None:
    torch.manual_seed(0)
    conv = create_model("wrn_bottleneck", 7, 3, 24, base_channels=4).net.groups[0][0].conv2
    fan_in = fan_out = conv.in_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier uniform's bound (Wen et al. App. D.2)
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize(
    ("option", "value"), [("stem", "cifar"), ("init", "he"), ("base_channels", 0)]
)
def test_bottleneck_invalid_options(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        create_model("wrn_bottleneck", 10, 3, 32, **{option: value})
    assert info.value.key == f"model.options.{option}"
