"""Machinery shared by the model families: the registry, input normalization, validation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "model.name")


@dataclass(frozen=True)
class FamilySpec:
    """What a model family accepts, declared at registration.

    Attributes:
        default_width: the family's width knob at its standard value.
        default_depth: the standard depth (None for families with a fixed depth).
        depths: the depths the family supports (None: any positive depth allowed by ``depth_rule``).
        width_meaning: what ``model.width`` controls, for docs and error messages.
        fractional_width: the width is a multiplier of channel counts, so a fraction such as
            WRN-34-0.5 (Wu et al. 2021, section 5.4) is meaningful; each count is then rounded
            down (``int(c * width)``), as the reference code does where it scales by a factor.
            Families whose width is itself a count (MLP units, growth rate) take integers only.
    """

    default_width: int
    default_depth: int | None
    depths: tuple[int, ...] | None
    width_meaning: str
    fractional_width: bool = False


def register_model(
    name: str,
    *,
    default_width: int,
    default_depth: int | None = None,
    depths: Sequence[int] | None = None,
    width_meaning: str,
    fractional_width: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a family factory ``f(num_classes, in_channels, image_size, width, depth, **options)``."""
    spec = FamilySpec(
        default_width,
        default_depth,
        tuple(depths) if depths else None,
        width_meaning,
        fractional_width,
    )
    return MODELS.register(name, spec=spec)


def family_spec(name: str) -> FamilySpec:
    return MODELS.meta(name)["spec"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the model's first layer.

    Keeping normalization inside the model means attacks and the data pipeline always work on
    images in [0, 1], where the threat model (the epsilon-ball) is defined.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """A network preceded by :class:`Normalize`; inputs are images in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def normalize_width(width: int | float) -> int | float:
    """A whole-number float width (``10.0`` from a TOML file or a sweep axis) as the int it is,
    so that run names, the store and the saved config show ``10``, not ``10.0``."""
    if isinstance(width, float) and width.is_integer():
        return int(width)
    return width


def scaled_channels(base: int, width: float, key: str = "model.width") -> int:
    """``int(base * width)``: a channel count scaled by a (possibly fractional) width factor,
    rounded down as Liu et al.'s VGG/ResNet code does (``int(layer_label * width)``) and as a
    fractional widen factor must be for the TRADES WideResNet code to build at all.

    Raises:
        ConfigError: the width is so small that a layer would have no channel.
    """
    channels = int(base * width)
    if channels < 1:
        raise ConfigError(
            key, width, f"too small: a layer of {base} x width channels would have {channels}"
        )
    return channels


# Conv weight initializations by name: Xavier uniform (Wen et al. 2020, App. D.2) and He-normal
# over fan-out (the TRADES/Madry WRN, DenseNet's Torch code, torchvision's ResNets).
CONV_INITS: dict[str, Callable[[torch.Tensor], object]] = {
    "xavier": nn.init.xavier_uniform_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
}


def init_weights(model: nn.Module, conv: str = "kaiming", *, zero_linear_bias: bool = True) -> None:
    """The reference codes' initialization, module by module in ``model.modules()`` order:
    convs by ``CONV_INITS[conv]``, batch norm at identity (weight 1, bias 0) and, with
    ``zero_linear_bias``, zero linear biases (linear weights keep PyTorch's default)."""
    conv_init = CONV_INITS[conv]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            conv_init(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def validate_shape_args(name: str, spec: FamilySpec, width: int | float, depth: int | None) -> None:
    """Raise :class:`ConfigError` for a width or depth the family cannot build."""
    number = isinstance(width, int | float) and not isinstance(width, bool)
    if not number or width <= 0:
        kind = "a positive number" if spec.fractional_width else "a positive integer"
        raise ConfigError("model.width", width, f"{kind} ({spec.width_meaning})")
    if isinstance(width, float) and not width.is_integer() and not spec.fractional_width:
        raise ConfigError(
            "model.width",
            width,
            f"{name} needs a positive integer ({spec.width_meaning}); fractional widths are "
            f"for families that scale channels by a factor: {', '.join(_fractional_families())}",
        )
    if spec.depths is None and spec.default_depth is None:
        if depth is not None:
            raise ConfigError(
                "model.depth", depth, f"{name} has a fixed depth; leave model.depth unset"
            )
        return
    if spec.depths is not None and depth not in spec.depths:
        allowed = ", ".join(str(d) for d in spec.depths)
        raise ConfigError("model.depth", depth, f"{name} supports depth {allowed}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
        raise ConfigError("model.depth", depth, "a positive integer")


def _fractional_families() -> list[str]:
    return [n for n in MODELS.names() if MODELS.meta(n)["spec"].fractional_width]


Shape = tuple[int, ...]


def shape_mismatches(
    ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]
) -> dict[str, tuple[Shape | None, Shape | None]]:
    """The tensors of two state dicts that do not fit each other: name -> (their shape, our
    shape), None where one side lacks the name; ``ours``' order, then names only ``theirs``
    has. Empty when one model's weights load into the other."""
    out: dict[str, tuple[Shape | None, Shape | None]] = {}
    for name, tensor in ours.items():
        other = theirs.get(name)
        if other is None or other.shape != tensor.shape:
            out[name] = (None if other is None else tuple(other.shape), tuple(tensor.shape))
    for name in theirs.keys() - ours.keys():
        out[name] = (tuple(theirs[name].shape), None)
    return out
