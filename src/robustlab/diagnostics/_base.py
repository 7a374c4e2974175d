"""The diagnostics registry and the helpers every measurement shares.

A measurement is a function ``f(model, x, y, **options) -> result``: tensors in (images in
[0, 1], or uint8 images mapped to [0, 1] batch by batch), the model evaluated in eval mode and
its mode restored after, and a plain dataclass out. Every result keeps its raw per-point values
(tensors on the CPU) and has a ``summary()``: a dict of JSON-ready scalars and lists, the form
the results store and ``--json`` take.

Registry metadata tells a caller such as the CLI what each measurement needs, without an
if-chain on names:

* ``data``: ``"points"`` (one split; call once per split), ``"train_test"`` (needs the training
  and the test points: ``f(model, x_train, y_train, x_test, y_test, ...)``) or ``"shapes"``
  (only a sample input, to find each layer's input size; labels are ignored).
* ``attack``: whether the measurement takes an ``attack=`` (a robustlab :class:`Attack`).
* ``plot``: its figure, ``plot_<name>(result, path) -> path`` (a PNG), defined next to the
  measurement (helpers in ``_plot.py``).
* ``plot_splits``: ``"points"`` measurements whose plot also takes ``{split: result}`` and
  draws the splits together (train against test); without it, ``robustlab diagnose`` draws
  one figure per split.
* ``inputs``: further inputs the command line supplies, ``{option: {"kind": "model", "flag":
  "--with", "help": ...}}`` (``kind`` ``"model"``: a model reference loaded as TARGET is).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..registry import Registry

DIAGNOSTICS: Registry[Callable[..., DiagnosticResult]] = Registry("diagnostic", "diagnostic")

DATA_KINDS = ("points", "train_test", "shapes")

# The dual norm of each threat model's norm: a first-order change of a function g over the
# ε-ball of ||·||_p is ε·||∇g||_q with 1/p + 1/q = 1 (ℓ1 for L-inf, ℓ2 for L2).
DUAL_ORDER = {"Linf": 1, "L2": 2}

# Quantiles reported for per-point distributions.
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


class DiagnosticResult(ABC):
    """Base of every measurement's result: per-point values plus a JSON-ready summary."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """JSON-ready scalars and lists (floats, ints, strings; no tensors)."""

    def __repr__(self) -> str:
        # The per-point tensors would print thousands of values; the summary says what matters.
        return f"{type(self).__name__}({self.summary()})"


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images mapped to [0, 1]; float images as they are (per batch, to save memory)."""
    return images.float().div(255) if images.dtype == torch.uint8 else images


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    for begin in range(0, n, batch_size):
        yield slice(begin, min(begin + batch_size, n))


def dual_norm(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example dual norm of ``grad`` (B x ...) for the threat model ``norm``."""
    return grad.flatten(1).norm(p=DUAL_ORDER[norm], dim=1)


def mean_or_nan(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else float("nan")


def describe(values: torch.Tensor, quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
    """Mean, population std and quantiles of the finite entries of ``values`` (JSON-ready).

    Non-finite entries (e.g. a margin divided by a zero gradient) are left out and counted.
    """
    flat = values.detach().flatten().double().cpu()
    finite = flat[torch.isfinite(flat)]
    stats: dict[str, Any] = {
        "n": int(flat.numel()),
        "n_nonfinite": int(flat.numel() - finite.numel()),
    }
    if finite.numel() == 0:
        stats.update(mean=float("nan"), std=float("nan"), quantiles={})
        return stats
    q = torch.quantile(finite, torch.tensor(list(quantiles), dtype=torch.float64))
    stats.update(
        mean=float(finite.mean()),
        std=float(finite.std(correction=0)),
        quantiles={f"{p:g}": float(v) for p, v in zip(quantiles, q, strict=True)},
    )
    return stats


def histogram(
    values: torch.Tensor, bins: int = 50, value_range: tuple[float, float] | None = None
) -> dict[str, list]:
    """Counts and bin edges (``bins + 1`` of them) of the finite entries of ``values``.

    ``value_range`` fixes the edges (e.g. (0, 1) for probabilities, so histograms of several
    models share them); by default they span the data.
    """
    flat = values.detach().flatten().double().cpu()
    finite = flat[torch.isfinite(flat)]
    if value_range is None:
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    else:
        low, high = value_range
    if not high > low:  # all values equal: one bin of width 1 around them
        low, high = low - 0.5, high + 0.5
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    # Bin i holds edges[i] <= v < edges[i+1]; the last bin also holds v == high.
    index = torch.bucketize(finite, edges, right=True) - 1
    index = index.clamp(max=bins - 1)
    inside = (finite >= low) & (finite <= high)
    counts = torch.bincount(index[inside], minlength=bins)
    return {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}
