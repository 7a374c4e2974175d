"""Spectral-norm clipping during training (``train.spectral_clip``).

Wen, Li & Jia 2020 control a network's capacity by its spectral complexity, the product of its
layers' spectral norms (App. B.4.2, Definition 7, Fig. 6, Table 6): after every epoch each layer's
singular values are clipped to at most C ("Spectral Norm 1" means every weight matrix has
spectral norm ≤ 1), following Sedghi, Gupta & Long 2019, who clip once per epoch rather than per
iteration (App. D.3). Here:

* a linear layer's weight W becomes U diag(min(σ, C)) V^T (exact, one step);
* a convolution is clipped as the linear operator it is on its input (circular padding, as in
  Sedghi et al.): per frequency U diag(min(σ, C)) V^H, projected back to a kernel of the original
  k×k support, alternated and finally rescaled so that the bound holds
  (:func:`~robustlab.diagnostics.spectra.clip_conv_singular_values`). The input size is the one
  the layer sees in a forward pass of one training image. A strided layer is clipped as its
  stride-1 operator, whose norm bounds the strided one's; a layer whose kernel is larger than its
  input (VGG's last stage on small images) on the smallest multiple of its input size that holds
  the kernel: the frequencies of an n-grid are among those of an m·n-grid, so the bound carries
  over to size n.

Other weights (batch norm's affine scale, the input normalization) are left alone, as in Wen et
al., whose spectral experiments use networks without batch norm (App. D.3).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ConfigError

CLIPPED_LAYERS = (nn.Linear, nn.Conv2d)


def _clipped_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, CLIPPED_LAYERS):
            yield name, module


def check_clippable(model: nn.Module) -> None:
    """Refuse models whose layers the clipping cannot bound exactly, before any training.

    Raises:
        ConfigError: a dilated convolution (its kernel's support is not a k×k block).
    """
    for name, module in _clipped_modules(model):
        if isinstance(module, nn.Conv2d) and tuple(module.dilation) != (1, 1):
            raise ConfigError(
                "train.spectral_clip",
                "set",
                f"layer {name!r} is a dilated convolution, which spectral clipping does not support",
            )


def _clip_size(input_size: tuple[int, int], kernel_size: tuple[int, int]) -> tuple[int, int]:
    """The input size itself, or its smallest multiple holding the kernel (see the module)."""
    return tuple(n * math.ceil(k / n) for n, k in zip(input_size, kernel_size, strict=True))


@torch.no_grad()
def clip_spectral_norms(model: nn.Module, sample: torch.Tensor, C: float) -> float:
    """Clip every linear and conv layer of ``model`` to spectral norm ≤ C, in place.

    Args:
        model: the model (its mode is restored; one forward pass on ``sample[:1]`` sizes the
            convolutions' inputs).
        sample: training images in [0, 1] (only the first is used).
        C: the bound (> 0).

    Returns:
        The largest spectral norm over the layers after clipping (≤ C up to rounding): a linear
        layer's largest singular value; a convolution's exact operator norm on its input size
        (with its stride where the stride divides the input size), as
        :func:`robustlab.diagnostics.spectra` reports it.
    """
    # Imported here: the diagnostics package is only needed by runs that clip (issue 14's
    # start-up time: a run imports what it uses).
    from ..diagnostics.spectra import (
        clip_conv_with_norm,
        clip_linear_singular_values,
        conv_operator_norm,
        layer_input_sizes,
    )

    sizes = layer_input_sizes(model, sample)
    largest = 0.0
    for name, module in _clipped_modules(model):
        weight = module.weight
        if isinstance(module, nn.Linear):
            clipped = clip_linear_singular_values(weight, C)
            norm = float(torch.linalg.matrix_norm(clipped.double(), ord=2))
        elif name not in sizes:
            continue  # not reached by a forward pass: no input size, nothing it computes
        else:
            size, groups = sizes[name], module.groups
            clip_size = _clip_size(size, tuple(weight.shape[-2:]))
            clipped, norm = clip_conv_with_norm(weight, clip_size, C, groups=groups)
            stride = tuple(module.stride)
            divides = all(n % s == 0 for n, s in zip(size, stride, strict=True))
            exact_stride = stride if divides else (1, 1)
            if clip_size != size or exact_stride != (1, 1):
                # The norm the clipping saw (stride 1, clip_size) only bounds the layer's own.
                norm = conv_operator_norm(clipped, size, stride=exact_stride, groups=groups)
        weight.copy_(clipped)
        largest = max(largest, norm)
    return largest
