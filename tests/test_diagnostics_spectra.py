"""Singular values of layers: convolutions against their explicit operator matrices."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.diagnostics import (
    clip_conv_singular_values,
    clip_linear_singular_values,
    conv_singular_values,
    layer_input_sizes,
    spectra,
)
from robustlab.errors import ConfigError


def explicit_operator(
    kernel: torch.Tensor,
    n: int | tuple[int, int],
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
) -> torch.Tensor:
    """The (c_out·h'·w') × (c_in·h·w) matrix of the convolution with circular padding, column by
    column: the layer applied to every basis image (in float64)."""
    h, w = (n, n) if isinstance(n, int) else n
    kernel = kernel.double()
    c_in, span = kernel.shape[1] * groups, dilation * (kernel.shape[-1] - 1)
    pad = (span // 2, span - span // 2) * 2

    def apply(image: torch.Tensor) -> torch.Tensor:
        wrapped = F.pad(image.view(1, c_in, h, w), pad, mode="circular")
        return F.conv2d(wrapped, kernel, stride=stride, groups=groups, dilation=dilation).flatten()

    basis = torch.eye(c_in * h * w, dtype=torch.float64)
    return torch.stack([apply(e) for e in basis], dim=1)


def test_conv_singular_values_equal_the_explicit_operators() -> None:
    """3×3 kernel, 2 → 3 channels, 6×6 input, circular padding (the issue's exact check)."""
    kernel = torch.randn(3, 2, 3, 3)
    expected = torch.linalg.svdvals(explicit_operator(kernel, 6))
    values = conv_singular_values(kernel, 6)
    assert values.shape == expected.shape == (2 * 36,)
    assert torch.allclose(values.double(), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("out_c", "in_c", "k", "n", "stride", "groups", "dilation"),
    [
        (3, 2, 3, 6, 2, 1, 1),  # strided: the aliased frequency blocks
        (2, 3, 1, 6, 3, 1, 1),  # a strided 1x1 shortcut, stride 3
        (4, 2, 3, 6, 1, 2, 1),  # groups
        (3, 2, 3, 6, 1, 1, 2),  # dilation
        (2, 2, 3, 5, 1, 1, 1),  # odd input size (no Nyquist column)
        (2, 2, 3, 2, 1, 1, 1),  # kernel larger than the input: taps wrap around
        (2, 3, 3, 4, 2, 1, 1),  # more inputs than outputs per block
        (2, 2, 3, (4, 6), 1, 1, 1),  # a rectangular input
        (3, 2, 3, (6, 5), 1, 1, 1),  # rectangular, one side odd
        (6, 2, 1, 4, 1, 1, 1),  # 1x1 kernels need no FFT: more outputs than inputs
        (6, 2, 1, 4, 2, 1, 1),  # ... strided, with zero singular values
        (4, 4, 1, 6, 2, 2, 1),  # ... grouped
    ],
)
def test_conv_variants_equal_the_explicit_operators(out_c, in_c, k, n, stride, groups, dilation):
    kernel = torch.randn(out_c, in_c // groups, k, k, dtype=torch.float64)
    expected = torch.linalg.svdvals(explicit_operator(kernel, n, stride, groups, dilation))
    values = conv_singular_values(kernel, n, stride=stride, groups=groups, dilation=dilation)
    assert values.shape == expected.shape
    assert torch.allclose(values, expected, atol=1e-8)


def test_stride_that_does_not_divide_the_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="stride"):
        conv_singular_values(torch.randn(2, 2, 3, 3), 7, stride=2)


@pytest.mark.parametrize("C", [0.5, 1.5])
def test_clipped_kernel_has_operator_norm_at_most_C(C: float) -> None:
    kernel = torch.randn(3, 2, 3, 3)
    before = torch.linalg.svdvals(explicit_operator(kernel, 6))[0]
    assert before > C + 0.5  # the clip has work to do
    clipped = clip_conv_singular_values(kernel, 6, C)
    assert clipped.shape == kernel.shape and clipped.dtype == kernel.dtype
    after = torch.linalg.svdvals(explicit_operator(clipped, 6))
    assert after[0] <= C + 1e-4
    assert after[0] >= C - 0.05  # clipped to C, not shrunk far below it
    # A kernel already within the bound is left alone.
    assert torch.equal(clip_conv_singular_values(clipped, 6, C + 0.01), clipped)


def test_clip_bound_holds_for_grouped_kernels_and_rejects_bad_input() -> None:
    kernel = torch.randn(4, 1, 3, 3)
    clipped = clip_conv_singular_values(kernel, 5, 0.7, groups=2, iterations=1)
    assert torch.linalg.svdvals(explicit_operator(clipped, 5, groups=2))[0] <= 0.7 + 1e-4
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ConfigError, match="C="):
            clip_conv_singular_values(kernel, 5, bad, groups=2)
        with pytest.raises(ConfigError, match="C="):
            clip_linear_singular_values(torch.randn(3, 3), bad)
    with pytest.raises(ConfigError, match="input_size"):
        clip_conv_singular_values(kernel, 2, 1.0, groups=2)


def test_linear_spectra_and_clipping() -> None:
    weight = torch.randn(5, 7)
    layer = nn.Linear(7, 5)
    with torch.no_grad():
        layer.weight.copy_(weight)
    result = spectra(layer, torch.rand(1, 7))
    assert torch.allclose(result.layers[0].values, torch.linalg.svdvals(weight))
    values = torch.linalg.svdvals(weight)
    C = float(values[2])
    clipped = torch.linalg.svdvals(clip_linear_singular_values(weight, C))
    assert torch.allclose(clipped, values.clamp(max=C), atol=1e-5)


def test_model_spectra_find_input_sizes_and_multiply_norms(one_thread) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 2, 3, stride=2, padding=1),  # input 4x4 ... then 2x2
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    )
    sizes = layer_input_sizes(model, torch.rand(5, 1, 8, 8))
    assert sizes == {"0": (8, 8), "2": (8, 8), "4": (4, 4)}
    result = spectra(model, torch.rand(5, 1, 8, 8))
    assert [layer.name for layer in result.layers] == ["0", "2", "4", "6"]
    conv = result.layers[1]
    assert conv.exact and conv.stride == (2, 2) and conv.input_size == (8, 8)
    assert torch.equal(conv.operator_values, conv_singular_values(model[2].weight, 8, stride=2))
    matrix = torch.linalg.svdvals(model[2].weight.detach().reshape(6, -1))
    assert torch.allclose(conv.matrix_values, matrix)
    norms = [float(layer.values[0]) for layer in result.layers]
    assert result.spectral_complexity == pytest.approx(math.prod(norms), rel=1e-5)
    summary = result.summary()
    json.dumps(summary)
    assert summary["layers"][1]["operator_max"] == pytest.approx(norms[1])
    assert summary["layers"][1]["operator_count"] == 16 * min(6, 4 * 4)
    assert summary["layers"][3]["kind"] == "linear"


def test_inexact_stride_falls_back_to_the_stride_one_bound() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1))
    layer = spectra(model, torch.rand(1, 1, 7, 7)).layers[0]
    assert not layer.exact
    assert torch.equal(layer.operator_values, conv_singular_values(model[0].weight, 7))
