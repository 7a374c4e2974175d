"""Singular values of every weight layer, the exact spectra of convolutions, and clipping them.

A convolution with a k×k kernel is a linear operator on its input (c_in × n × n values). With
*circular* padding that operator is doubly block-circulant, so the 2-D DFT diagonalizes it
block-wise (Sedghi, Gupta & Long 2019, "The Singular Values of Convolutional Layers", ICLR,
Theorem 6): its singular values are the union over the n² frequencies (u, v) of the singular
values of the c_out × c_in matrices P(u, v) = Σ_{a,b} K[:, :, a, b] ω^{ua+vb}, the FFT of the
kernel zero-padded to n × n. robustlab's layers use zero padding; as in the paper, the circular
operator stands in for them (the two differ only in how the border wraps, and the paper uses
the circular spectrum to measure and to clip; brain-research/conv-sv does the same).

Everything here is batched: all frequencies of a layer go through one ``torch.linalg.svdvals``
call. A real kernel's spectrum is conjugate-symmetric, P(−u, −v) = conj P(u, v), which has the
same singular values, so only one frequency of each pair {f, −f} is decomposed (and counted
twice): half the work. 1×1 kernels need no FFT at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import model_mode
from ..errors import ConfigError
from ._base import DIAGNOSTICS, DiagnosticResult, as_float
from ._plot import new_figure, save


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def _check_positive(key: str, value: float) -> None:
    if not value > 0:  # written so that NaN fails too
        raise ConfigError(key, value, "must be > 0")


def _dilate(kernel: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """The kernel with ``dilation − 1`` zeros between taps (the same operator, dense support)."""
    dh, dw = dilation
    if (dh, dw) == (1, 1):
        return kernel
    kh, kw = kernel.shape[-2:]
    dense = kernel.new_zeros(*kernel.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dense[..., ::dh, ::dw] = kernel
    return dense


def _fold(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The kernel wrapped onto an h × w torus: taps at a and a + h act on the same input pixel
    under circular padding, so they add. (For k ≤ n this is zero-padding to n × n.)"""
    h, w = size
    kh, kw = kernel.shape[-2:]
    padded = F.pad(kernel, (0, -kw % w, 0, -kh % h))
    rows, cols = padded.shape[-2] // h, padded.shape[-1] // w
    return padded.reshape(*kernel.shape[:-2], rows, h, cols, w).sum(dim=(-4, -2))


def _conjugate_representatives(
    height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One frequency of each pair {f, −f} of an height × width grid, within the rfft half-plane
    (columns 0..width//2), and how often each occurs in the full grid (2, or 1 if f = −f).

    Returns ``keep`` (height × (width//2 + 1), bool) and the multiplicities of the kept entries.
    In the self-mirrored columns (0, and width/2 when even) the half-plane still holds both u and
    −u; only the first is kept.
    """
    u = torch.arange(height, device=device)[:, None]
    v = torch.arange(width // 2 + 1, device=device)[None, :]
    mirror_u, mirror_v = (-u) % height, (-v) % width
    keep = (mirror_v > width // 2) | (u <= mirror_u)
    multiplicity = torch.where((mirror_u == u) & (mirror_v == v), 1, 2)
    return keep, multiplicity.expand_as(keep)[keep]


def _frequency_blocks(
    kernel: torch.Tensor, size: tuple[int, int], stride: tuple[int, int], groups: int
) -> torch.Tensor:
    """Per-frequency matrices whose singular values are the operator's, on a half-plane.

    Returns ``(groups, H, W // 2 + 1, c_out / groups, sh · sw · c_in / groups)`` complex, with
    (H, W) = (h / sh, w / sw). A stride keeps every s-th output pixel; the DFT turns that
    subsampling into aliasing: output frequency (u', v') collects the sh · sw input frequencies
    (u' + i·H, v' + j·W), so the operator is block-diagonal with blocks
    [P(u' + iH, v' + jW)]_{i,j} / sqrt(sh · sw) (the factor from the unitary DFTs of sizes n and
    n/s). Groups act on disjoint channels: a direct sum, one set of blocks per group.
    """
    (h, w), (sh, sw) = size, stride
    out_c, in_g = kernel.shape[:2]
    folded = _fold(kernel, size).reshape(groups, out_c // groups, in_g, h, w)
    if (sh, sw) == (1, 1):
        # Only the half-plane is needed, and rfft2 computes just that.
        return torch.fft.rfft2(folded).permute(0, 3, 4, 1, 2)
    H, W = h // sh, w // sw
    spectrum = torch.fft.fft2(folded).reshape(groups, out_c // groups, in_g, sh, H, sw, W)
    # (g, o, i, sh, H, sw, W) -> (g, H, W, o, sh, sw, i): frequency u = i_u · H + u'.
    blocks = spectrum.permute(0, 4, 6, 1, 3, 5, 2).reshape(groups, H, W, out_c // groups, -1)
    return blocks[:, :, : W // 2 + 1] / math.sqrt(sh * sw)


def conv_singular_values(
    kernel: torch.Tensor,
    input_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """Every singular value of the convolution with ``kernel`` on a c_in × h × w input, circular
    padding (Sedghi, Gupta & Long 2019, Theorem 6), sorted in decreasing order.

    There are g · (h/sh)(w/sw) · min(c_out/g, sh·sw·c_in/g) of them, the min(m, n) singular
    values of the operator's m × n matrix (zeros included). The operator norm is the first.

    Args:
        kernel: ``(c_out, c_in / groups, kh, kw)``, as ``nn.Conv2d.weight``.
        input_size: the layer's input height and width (an int for square inputs).
        stride: the layer's stride; it must divide the input size (then the result is exact:
            each output frequency's block stacks its aliased input frequencies).
        groups: the layer's channel groups.
        dilation: the layer's dilation (the kernel is spread out first).

    Raises:
        ConfigError: a stride that does not divide the input size.
    """
    (h, w), (sh, sw) = _pair(input_size), _pair(stride)
    if h % sh or w % sw:
        raise ConfigError(
            "stride", stride, f"must divide the input size {h}x{w} for the exact spectrum"
        )
    kernel = _dilate(kernel.detach(), _pair(dilation))
    H, W = h // sh, w // sw
    if kernel.shape[-2:] == (1, 1):
        values = _pointwise_singular_values(kernel, H * W, sh * sw, groups)
    else:
        blocks = _frequency_blocks(kernel, (h, w), (sh, sw), groups)
        keep, multiplicity = _conjugate_representatives(H, W, blocks.device)
        values = torch.linalg.svdvals(blocks[:, keep])  # (g, frequencies, r): one call
        values = values.repeat_interleave(multiplicity, dim=1)
    return values.flatten().sort(descending=True).values


def _operator_norm(blocks: torch.Tensor) -> torch.Tensor:
    """The largest singular value over a batch of matrices (a 0-d tensor; 0 for none).

    Only the largest value is needed, so it comes from the Hermitian eigenvalues of the smaller
    Gram matrix A^H A or A A^H (σ_max² = λ_max, rounding error ~ machine ε relative to σ_max²:
    exact as far as float32 goes). On a strided layer's c_out × s²·c_in blocks that is 1.5x
    faster than the SVD; for the small singular values the Gram route would lose half the
    digits, so :func:`conv_singular_values` keeps the SVD.
    """
    if blocks.numel() == 0:
        return torch.zeros((), device=blocks.device)
    m, n = blocks.shape[-2:]
    gram = blocks.mH @ blocks if n <= m else blocks @ blocks.mH
    return torch.linalg.eigvalsh(gram)[..., -1].max().clamp(min=0).sqrt()


def _pointwise_singular_values(
    kernel: torch.Tensor, pixels: int, subsampling: int, groups: int
) -> torch.Tensor:
    """A 1×1 convolution's spectrum without FFTs: every frequency block is the channel matrix W
    (for a stride s, W next to s² − 1 zero blocks), so the operator's singular values are
    σ(W), each ``pixels`` times, plus zeros up to min(c_out, s² c_in) per pixel and group."""
    out_g, in_g = kernel.shape[0] // groups, kernel.shape[1]
    values = torch.linalg.svdvals(kernel.reshape(groups, out_g, in_g))
    rank = min(out_g, subsampling * in_g)
    values = F.pad(values, (0, rank - values.shape[-1]))
    return values.repeat_interleave(pixels, dim=1)


def conv_operator_norm(
    kernel: torch.Tensor,
    input_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    groups: int = 1,
) -> float:
    """The largest singular value of the circular convolution (its ℓ2 operator norm), from the
    largest eigenvalue of each frequency block's Gram matrix (see :func:`_operator_norm`)."""
    (h, w), (sh, sw) = _pair(input_size), _pair(stride)
    if h % sh or w % sw:
        raise ConfigError(
            "stride", stride, f"must divide the input size {h}x{w} for the exact spectrum"
        )
    kernel = kernel.detach()
    if kernel.shape[-2:] == (1, 1):
        # Every frequency block is the channel matrix (beside s² − 1 zero blocks for a stride
        # s): the same norm, no FFT.
        blocks = kernel.reshape(groups, kernel.shape[0] // groups, kernel.shape[1])
    else:
        blocks = _frequency_blocks(kernel, (h, w), (sh, sw), groups)
        keep, _ = _conjugate_representatives(h // sh, w // sw, blocks.device)
        blocks = blocks[:, keep]
    return float(_operator_norm(blocks))


def clip_conv_singular_values(
    kernel: torch.Tensor,
    input_size: int | Sequence[int],
    C: float,
    *,
    groups: int = 1,
    iterations: int = 5,
) -> torch.Tensor:
    """A kernel of the same k×k support whose circular convolution has operator norm ≤ C.

    Sedghi, Gupta & Long 2019, §3 (projection onto an operator-norm ball), as
    brain-research/conv-sv's ``Clip_OperatorNorm``: FFT the kernel to the n × n frequency grid, replace every
    per-frequency matrix U diag(σ) V^H by U diag(min(σ, C)) V^H (the nearest operator with norm
    ≤ C), inverse FFT, and keep the original k×k support (the nearest kernel of that support).

    That last projection can raise the norm again; Sedghi et al. alternate the two projections
    (once per epoch in training). Here up to ``iterations`` rounds of clip + project run within
    one call, stopping once the norm is ≤ C; if it still exceeds C after them, the kernel is
    rescaled by C / norm, so the bound holds on return, exactly (up to rounding), whatever
    ``iterations``. The rescale shrinks every singular value by the remaining overshoot, which
    the alternating rounds make small.

    Strided layers: clip with the layer's input size; the strided operator keeps every s-th
    output of this stride-1 operator, so its norm is at most the stride-1 norm (≤ C too).

    Args:
        kernel: ``(c_out, c_in / groups, k, k)``, as ``nn.Conv2d.weight`` (not modified).
        input_size: the layer's input height and width (at least the kernel size).
        C: the bound on the singular values (> 0).
        groups: the layer's channel groups.
        iterations: rounds of clip + project before the final rescale (≥ 1).

    Returns:
        The clipped kernel, same shape, dtype and device as ``kernel``.
    """
    return clip_conv_with_norm(kernel, input_size, C, groups=groups, iterations=iterations)[0]


def clip_conv_with_norm(
    kernel: torch.Tensor,
    input_size: int | Sequence[int],
    C: float,
    *,
    groups: int = 1,
    iterations: int = 5,
) -> tuple[torch.Tensor, float]:
    """:func:`clip_conv_singular_values` and the operator norm of the clipped kernel's circular
    convolution on ``input_size`` (≤ C), which the clipping computes anyway: training that clips
    every epoch reports it without a second decomposition."""
    _check_positive("C", C)
    if iterations < 1:
        raise ConfigError("iterations", iterations, "must be >= 1")
    h, w = _pair(input_size)
    kh, kw = kernel.shape[-2:]
    if kh > h or kw > w:
        raise ConfigError(
            "input_size", (h, w), f"must be at least the kernel size {kh}x{kw} to clip"
        )
    if (kh, kw) == (1, 1):
        return _clip_pointwise(kernel, C, groups)
    out_c, in_g = kernel.shape[:2]
    keep, _ = _conjugate_representatives(h, w, kernel.device)
    # Self-mirrored columns of the half-plane hold both f and −f; only f is decomposed and −f
    # (rows ``mirrored``, columns ``columns``) filled in as its conjugate, since clipping conj(P)
    # gives conj of clipping P: 6% fewer SVDs on a 32×32 grid, 15% on 8×8. Only those few blocks
    # are touched (a full-grid torch.where cost more than the SVDs it saved).
    rows, columns = torch.nonzero(~keep, as_tuple=True)
    mirrored = (-rows) % h
    clipped = kernel.detach()
    for _ in range(iterations):
        blocks = _frequency_blocks(clipped, (h, w), (1, 1), groups)
        u, sigma, vh = torch.linalg.svd(blocks[:, keep], full_matrices=False)
        norm = float(sigma.max())
        if norm <= C:
            return clipped.clone(), norm
        blocks[:, keep] = (u * sigma.clamp(max=C).to(u.dtype)[..., None, :]) @ vh
        blocks[:, rows, columns] = blocks[:, mirrored, columns].conj()
        # (g, h, w//2+1, o, i) -> (o, i, h, w//2+1); irfft2 mirrors the half-plane, which is
        # exact: the clipped spectrum stays conjugate-symmetric, so its inverse FFT is real.
        half = blocks.permute(0, 3, 4, 1, 2).reshape(out_c, in_g, h, w // 2 + 1)
        clipped = torch.fft.irfft2(half, s=(h, w))[..., :kh, :kw].to(kernel.dtype)
    blocks = _frequency_blocks(clipped, (h, w), (1, 1), groups)
    norm = float(_operator_norm(blocks[:, keep]))
    if norm > C:
        clipped, norm = clipped * (C / norm), C
    return clipped.contiguous(), norm


def _clip_pointwise(kernel: torch.Tensor, C: float, groups: int) -> tuple[torch.Tensor, float]:
    """A 1×1 kernel: every frequency block is the channel matrix W (per group), so clipping W's
    singular values is the exact projection, in one step and without FFTs (the n² identical
    blocks of the general path would each be decomposed)."""
    out_c, in_g = kernel.shape[:2]
    matrix = kernel.detach().reshape(groups, out_c // groups, in_g)
    u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    norm = float(sigma.max()) if sigma.numel() else 0.0
    if norm <= C:
        return kernel.detach().clone(), norm
    clipped = (u * sigma.clamp(max=C)[..., None, :]) @ vh
    return clipped.reshape(kernel.shape).to(kernel.dtype).contiguous(), min(norm, C)


def clip_linear_singular_values(weight: torch.Tensor, C: float) -> torch.Tensor:
    """The nearest matrix (in Frobenius and spectral norm) to ``weight`` with singular values
    ≤ C: U diag(min(σ, C)) V^T. Exact in one step (no support constraint to restore)."""
    _check_positive("C", C)
    u, sigma, vh = torch.linalg.svd(weight.detach(), full_matrices=False)
    return (u * sigma.clamp(max=C)[None, :]) @ vh


# ---------------------------------------------------------------------------------------------
# Per-layer spectra of a whole model.


@dataclass(repr=False)
class LayerSpectrum:
    """The singular values of one weight layer.

    Attributes:
        name: the module's qualified name; ``kind``: ``"linear"`` or ``"conv"``.
        weight_shape: the weight's shape.
        matrix_values: singular values of the weight matrix (linear) or of the kernel reshaped to
            (c_out, c_in · kh · kw) (conv), decreasing.
        operator_values: conv only: every singular value of the convolution as a linear operator
            on the layer's input (circular padding), decreasing; ``None`` when the layer did not
            run in the sizing pass.
        input_size: conv only: the (h, w) the operator acts on.
        stride: conv only: (sh, sw).
        exact: whether ``operator_values`` are the strided layer's own (the stride divides the
            input size); if not, they are the stride-1 operator's, whose norm bounds the layer's.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    matrix_values: torch.Tensor
    operator_values: torch.Tensor | None = None
    input_size: tuple[int, int] | None = None
    stride: tuple[int, int] = (1, 1)
    exact: bool = True

    @property
    def values(self) -> torch.Tensor:
        """The layer's spectrum as an operator: exact for convs where known, else the matrix's."""
        return self.operator_values if self.operator_values is not None else self.matrix_values

    @property
    def spectral_norm(self) -> float:
        return float(self.values[0]) if self.values.numel() else 0.0

    def __repr__(self) -> str:
        return f"LayerSpectrum({self.summary()})"

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            **{f"matrix_{k}": v for k, v in _stats(self.matrix_values).items()},
        }
        if self.kind == "conv":
            summary.update(
                input_size=list(self.input_size) if self.input_size else None,
                stride=list(self.stride),
                exact=self.exact,
            )
            if self.operator_values is not None:
                summary.update(
                    {f"operator_{k}": v for k, v in _stats(self.operator_values).items()}
                )
        return summary


def _stats(values: torch.Tensor) -> dict[str, float | int]:
    v = values.double()
    if v.numel() == 0:
        return {"count": 0, "mean": float("nan"), "std": float("nan"), "max": float("nan")}
    return {
        "count": int(v.numel()),
        "mean": float(v.mean()),
        "std": float(v.std(correction=0)),
        "max": float(v.max()),
        "min": float(v.min()),
    }


@dataclass(repr=False)
class SpectraResult(DiagnosticResult):
    """Per-layer singular values and the spectral complexity.

    Attributes:
        layers: one :class:`LayerSpectrum` per nn.Linear / nn.Conv2d, in module order.
        seconds: wall time of the decompositions.
    """

    layers: list[LayerSpectrum] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def spectral_complexity(self) -> float:
        """Π_i ||W_i||_2 over the layers (Wen et al. 2020, App. B.4.2, Definition 7), with the
        exact operator norm for convolutions."""
        return math.exp(self.log_spectral_complexity)

    @property
    def log_spectral_complexity(self) -> float:
        """Σ_i log ||W_i||_2 (the product overflows for deep models)."""
        norms = [layer.spectral_norm for layer in self.layers]
        return sum(math.log(n) if n > 0 else -math.inf for n in norms)

    @property
    def matrix_spectral_complexity(self) -> float:
        """The same product with each conv's reshaped-kernel norm instead of its operator norm."""
        norms = [
            float(layer.matrix_values[0]) for layer in self.layers if layer.matrix_values.numel()
        ]
        return math.exp(sum(math.log(n) if n > 0 else -math.inf for n in norms))

    def summary(self) -> dict[str, Any]:
        return {
            "layers": [layer.summary() for layer in self.layers],
            "n_layers": len(self.layers),
            "spectral_complexity": self.spectral_complexity,
            "log_spectral_complexity": self.log_spectral_complexity,
            "matrix_spectral_complexity": self.matrix_spectral_complexity,
            "max_spectral_norm": max((layer.spectral_norm for layer in self.layers), default=0.0),
            "seconds": self.seconds,
        }


def layer_input_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """The (h, w) of the input each nn.Conv2d of ``model`` receives, from one forward pass on
    one sample of ``x`` (eval mode, no gradients). A module run twice keeps its first size."""
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):

            def record(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                sizes.setdefault(name, tuple(args[0].shape[-2:]))

            handles.append(module.register_forward_pre_hook(record))
    try:
        with model_mode(model, "eval"), torch.no_grad():
            model(as_float(x[:1]))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def matrix_singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D matrix, decreasing, on the CPU.

    A wide matrix is decomposed as its transpose (the same values): LAPACK's SVD of a
    640 × 5760 kernel matrix takes about 5x longer than that of its 5760 × 640 transpose.
    """
    tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    return torch.linalg.svdvals(tall).cpu()


# TorchScript keeps a scripted layer's class name as ``original_name``.
_SCRIPTED_KINDS = {"Linear": "linear", "Conv2d": "conv"}


def _weight_layer_kind(module: nn.Module) -> str | None:
    """``"linear"`` or ``"conv"`` for an nn.Linear or nn.Conv2d, scripted ones included."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, torch.jit.ScriptModule):
        return _SCRIPTED_KINDS.get(getattr(module, "original_name", ""))
    return None


def _layer_spectrum(
    name: str, module: nn.Module, input_size: tuple[int, int] | None, operator: bool
) -> LayerSpectrum:
    weight = module.weight.detach()
    if _weight_layer_kind(module) == "linear":
        return LayerSpectrum(name, "linear", tuple(weight.shape), matrix_singular_values(weight))
    matrix = matrix_singular_values(weight.reshape(weight.shape[0], -1))
    stride = _pair(module.stride)
    spectrum = LayerSpectrum(
        name, "conv", tuple(weight.shape), matrix, input_size=input_size, stride=stride
    )
    if not operator or input_size is None:
        return spectrum
    h, w = input_size
    # Exact for strides dividing the input; otherwise the stride-1 operator, whose norm bounds
    # the strided one's (subsampling the output is a contraction).
    spectrum.exact = h % stride[0] == 0 and w % stride[1] == 0
    spectrum.operator_values = conv_singular_values(
        weight,
        input_size,
        stride=stride if spectrum.exact else 1,
        groups=module.groups,
        dilation=module.dilation,
    ).cpu()
    return spectrum


def plot_spectra(result: SpectraResult, path: str | Path) -> Path | None:
    """Per layer: the largest, mean and std of its singular values, to ``path`` (PNG).

    Wen, Li & Jia 2020 compare the spread (std) of the singular values across adversarial
    training strengths (§4.2.2, Fig. 5c–d) and bound capacity by the product of the largest
    ones (App. B.4.2). Solid lines are each layer's operator spectrum (the exact circular
    convolution for convs), the dashed line the reshaped kernel's largest value; a log scale is
    used when the values span more than two decades.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    drawn = new_figure()
    if drawn is None:
        return None
    figure, (axis,) = drawn
    index = list(range(1, len(result.layers) + 1))
    stats = [(layer.values.double(), layer.matrix_values.double()) for layer in result.layers]

    def of(values: torch.Tensor, fn: str) -> float:
        if values.numel() == 0:
            return float("nan")
        return float(getattr(values, fn)() if fn != "std" else values.std(correction=0))

    lines = (
        ("max (spectral norm)", [of(v, "max") for v, _ in stats], "-", "tab:red"),
        ("mean", [of(v, "mean") for v, _ in stats], "-", "tab:blue"),
        ("std", [of(v, "std") for v, _ in stats], "-", "tab:green"),
        ("max of the reshaped kernel", [of(m, "max") for _, m in stats], "--", "tab:gray"),
    )
    for label, values, style, colour in lines:
        axis.plot(index, values, style, marker="o", markersize=3, color=colour, label=label)
    positive = [v for _, values, _, _ in lines for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) / min(positive) > 100:
        axis.set_yscale("log")
    else:
        axis.set_ylim(bottom=0)
    if len(index) <= 12:  # few layers: name them
        axis.set_xticks(index, [layer.name for layer in result.layers], rotation=30, ha="right")
    else:
        axis.set_xticks(index[:: max(1, len(index) // 12)])
    axis.set_xlabel("layer (module order: linear and conv layers)")
    axis.set_ylabel("singular value (operator gain)")
    axis.legend(fontsize=8, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    figure.suptitle(
        f"Singular values per layer ({len(result.layers)} layers; "
        f"spectral complexity {result.spectral_complexity:.3g})"
    )
    return save(figure, path)


@DIAGNOSTICS.register("spectra", data="shapes", attack=False, plot=plot_spectra)
def spectra(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    operator: bool = True,
) -> SpectraResult:
    """Singular values of every nn.Linear and nn.Conv2d of ``model``.

    Wen, Li & Jia 2020 find that adversarial training lowers the spread (std) of the singular
    values of the weight matrices (§4.2.2, Fig. 5c–d; App. B.2, Fig. 11c–d), and control capacity
    by the spectral complexity, the product of the layers' spectral norms (App. B.4.2,
    Definition 7, Table 6). Per layer this returns the singular values of

    * a linear layer's weight matrix;
    * a convolution's kernel reshaped to (c_out, c_in · kh · kw), and the exact singular values
      of the convolution as a linear operator on the layer's input size, with circular padding
      (Sedghi, Gupta & Long 2019; see :func:`conv_singular_values`; the layers' zero padding is
      replaced by circular padding as in that paper). Strides that divide the input size are
      exact; others get the stride-1 operator's values (``exact = False``), an upper bound of
      the norm. Groups and dilation are handled. A TorchScript model's convolutions get the
      reshaped kernel only (their input sizes cannot be hooked, so ``operator_values`` is
      ``None``); its linear layers are exact.

    and, in the summary, each layer's mean, std and max, and the spectral complexity with the
    exact operator norms (and with the reshaped-kernel norms). Normalization layers (batch norm's
    affine scaling, the input normalization) are not weight layers here, as in Wen et al., whose
    spectral experiments use networks without batch norm (App. D.3).

    Args:
        model: the model; one forward pass on ``x[:1]`` (eval mode, mode restored) finds each
            convolution's input size.
        x: a sample input (only its first point and shape are used); ``y`` is ignored.
        operator: compute the conv operators' spectra (the expensive part); ``False``: the
            reshaped kernels only.

    Example:
        >>> result = spectra(model, x[:1])
        >>> result.summary()["spectral_complexity"], result.layers[0].values[:5]
    """
    start = time.perf_counter()
    sizes = layer_input_sizes(model, x) if operator else {}
    layers = [
        _layer_spectrum(name, module, sizes.get(name), operator)
        for name, module in model.named_modules()
        if _weight_layer_kind(module) is not None
    ]
    return SpectraResult(layers=layers, seconds=time.perf_counter() - start)
