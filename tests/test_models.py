"""Model families: every registered family gets the same checks, plus published references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models import (
    NormalizedModel,
    count_parameters,
    create_model,
    family_spec,
    list_models,
)
from robustlab.models.resnet_cifar import FixupBlock

FAMILIES = list_models()
# Options that keep a family small enough for the registry-wide checks on 2 CPU cores: the
# bottleneck WRN's widen factor scales only its inner convs, whose base is 64 channels.
SMALL = {"wrn_bottleneck": {"base_channels": 4}}


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_all_families_registered() -> None:
    expected = {"mlp", "lenet", "preact_resnet18", "wrn", "resnet_cifar", "densenet_bc", "vgg"}
    assert expected <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 8), (3, 11)])
def test_forward_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(
        name, num_classes=5, in_channels=channels, image_size=size, width=2, **SMALL.get(name, {})
    )
    x = torch.rand(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# (family, width, depth, published count, count of this implementation)
PUBLISHED = [
    ("wrn", 10, 34, 46.16e6, 46_160_474),
    # Rice et al.'s PreActResNet-18 has a final BN before pooling: 1,024 more than the
    # 11,171,146 of the kuangliu/pytorch-cifar variant; both are 11.17M.
    ("preact_resnet18", 64, None, 11.17e6, 11_172_170),
    ("resnet_cifar", 16, 56, 0.85e6, 853_018),
    ("densenet_bc", 12, 40, 0.176e6, 176_122),
]


@pytest.mark.parametrize(("name", "width", "depth", "published", "exact"), PUBLISHED)
def test_published_parameter_counts(
    name: str, width: int, depth: int | None, published: float, exact: int
) -> None:
    model = create_model(name, 10, 3, 32, width=width, depth=depth)
    n = count_parameters(model)
    assert abs(n - published) / published < 0.01
    assert n == exact


@pytest.mark.parametrize("name", FAMILIES)
def test_width_increases_parameters(name: str) -> None:
    small = SMALL.get(name, {})
    counts = [count_parameters(create_model(name, 10, 3, 16, width=w, **small)) for w in (1, 2, 4)]
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("width", [0, -1, 2.5, True])
def test_invalid_width_raises(name: str, width: object) -> None:
    if width == 2.5 and family_spec(name).fractional_width:
        pytest.skip(f"{name} scales channels by its width: 2.5 is valid")
    with pytest.raises(ConfigError) as info:
        create_model(name, 10, 3, 32, width=width)
    assert info.value.key == "model.width"


@pytest.mark.parametrize("name", FAMILIES)
def test_invalid_depth_raises(name: str) -> None:
    spec = family_spec(name)
    if spec.default_depth is None:
        bad = [18, 1]  # fixed-depth families take no depth at all
    elif spec.depths is not None:
        bad = [0, -1, 7, max(spec.depths) + 6]
    else:
        bad = [0, -1]
    for depth in bad:
        with pytest.raises(ConfigError) as info:
            create_model(name, 10, 3, 32, width=1, depth=depth)
        assert info.value.key == "model.depth"


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_option_raises(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(name, 10, 3, 32, width=1, no_such_option=1)
    assert info.value.key == "model.options.no_such_option"


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [("resnet_cifar", "batchnorm", "no"), ("vgg", "batchnorm", 0), ("wrn", "dropout", 1.5)],
)
def test_invalid_option_value_raises(name: str, option: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(name, 10, 3, 32, width=1, **{option: value})
    assert info.value.key == f"model.options.{option}"


def test_normalization_layer() -> None:
    torch.manual_seed(0)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    model = create_model("resnet_cifar", 10, 3, 16, width=2, mean=mean, std=std).eval()
    assert isinstance(model, NormalizedModel)
    x = torch.rand(4, 3, 16, 16)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.net((x - m) / s))
    identity = create_model("mlp", 10, 1, 8, width=4).eval()
    y = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(identity(y), identity.net(y))


def test_fixup_resnet_has_no_batchnorm_and_starts_at_identity() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_cifar", 10, 3, 16, width=4, depth=20, batchnorm=False)
    assert not _has_batchnorm(model)
    assert _has_batchnorm(create_model("resnet_cifar", 10, 3, 16, width=4, depth=20))
    # Zero-initialized last convs: every stride-1 block is ReLU of its input; zero FC: logits 0.
    block = model.net.stages[0][1]
    assert isinstance(block, FixupBlock)
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(block(x), F.relu(x))
    assert torch.equal(model(torch.rand(2, 3, 16, 16)), torch.zeros(2, 10))


def test_fixup_resnet_trains_without_nan() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_cifar", 4, 3, 16, width=4, depth=20, batchnorm=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]


def test_vgg_batchnorm_option() -> None:
    assert _has_batchnorm(create_model("vgg", 10, 3, 8, width=1))
    assert not _has_batchnorm(create_model("vgg", 10, 3, 8, width=1, batchnorm=False))


def test_vgg16_layout() -> None:
    # Liu et al. (2020), Table 2: 13 convs of 4w, 4w, 8w, 8w, 16w x3, 32w x6; FC(32w, classes).
    model = create_model("vgg", 10, 3, 32, width=2, depth=16)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert model.net.fc.in_features == 64


def test_wrn_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("wrn", 10, 3, 8, width=1, depth=16, dropout=0.5)
    x = torch.rand(2, 3, 8, 8)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_init_weights_follows_the_reference_codes():
    """BN at identity in every family that uses :func:`init_weights`; WRN and DenseNet zero the
    FC bias (TRADES/Madry, the DenseNet Torch code), the bottleneck WRN keeps torchvision's
    default; its ``init`` option picks Xavier uniform or He-normal over fan-out."""
    from robustlab.models._base import CONV_INITS, init_weights

    torch.manual_seed(0)
    built = {
        "wrn": create_model("wrn", 10, 3, 8, width=1, depth=16),
        "densenet_bc": create_model("densenet_bc", 10, 3, 8, width=4, depth=22),
        "xavier": create_model("wrn_bottleneck", 10, 3, 8, width=1, depth=50, base_channels=4),
        "kaiming": create_model(
            "wrn_bottleneck", 10, 3, 8, width=1, depth=50, base_channels=4, init="kaiming"
        ),
    }
    for name, model in built.items():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
            if isinstance(m, nn.Linear):
                assert torch.all(m.bias == 0) == (name in ("wrn", "densenet_bc")), name
    assert set(CONV_INITS) == {"xavier", "kaiming"}
    conv = nn.Conv2d(64, 64, 3)  # fan-in = fan-out = 576: Xavier std 1/24, He std 1/17
    init_weights(conv, "xavier")
    assert float(conv.weight.detach().std()) == pytest.approx((2 / 1152) ** 0.5, rel=0.05)
    init_weights(conv, "kaiming")
    assert float(conv.weight.detach().std()) == pytest.approx((2 / 576) ** 0.5, rel=0.05)
