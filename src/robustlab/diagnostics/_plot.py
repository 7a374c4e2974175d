"""What every measurement's ``plot_*(result, path)`` shares: the figure, the colours, saving.

matplotlib is imported only when a figure is drawn, and through its object-oriented API
(``matplotlib.figure.Figure``, no ``pyplot``): that draws off-screen with the Agg canvas without
choosing a backend, so a plot never opens a window or changes the backend of a notebook or
script that imported robustlab. Without matplotlib a plot is skipped with a one-line notice.

Figures follow the project's manners: one idea per figure, labelled axes with units, a title
saying what is compared, tab10 colours (the same split keeps the same colour in every figure),
about 6 x 4 inches at 150 dpi.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

R = TypeVar("R")

DPI = 150
SIZE = (6.0, 4.0)
# tab10, by split: train and test keep their colours in every figure.
SPLIT_COLOURS = {"train": "tab:blue", "test": "tab:orange", "": "tab:blue"}
# tab10, for the categories of one figure (stability's groups, spectra's statistics).
CATEGORY_COLOURS = ("tab:green", "tab:orange", "tab:purple", "tab:gray", "tab:blue", "tab:red")

_notice_shown = False


def new_figure(ncols: int = 1, size: tuple[float, float] = SIZE) -> tuple[Any, list[Any]] | None:
    """A figure with ``ncols`` axes side by side, or ``None`` (and a one-line notice on stderr,
    once per process) when matplotlib is not installed."""
    global _notice_shown
    try:
        from matplotlib.figure import Figure
    except ImportError:
        if not _notice_shown:
            print(
                "robustlab: matplotlib is not installed, so no figures are drawn "
                "(pip install matplotlib)",
                file=sys.stderr,
            )
            _notice_shown = True
        return None
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def save(figure: Any, path: str | Path) -> Path:
    """Write the figure as a PNG at 150 dpi (the directory must exist)."""
    path = Path(path)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def by_split(results: R | Mapping[str, R]) -> dict[str, R]:
    """``{split: result}``: a mapping as it is, one result as ``{"": result}``.

    Measurements of one split of points (margins, stability, ...) plot several splits together
    (train against test) when given ``{"train": ..., "test": ...}``.
    """
    if isinstance(results, Mapping):
        return dict(results)
    return {"": results}


def split_figure(
    result: R | Mapping[str, R], ncols: int = 1, size: tuple[float, float] = SIZE
) -> tuple[dict[str, R], R, Any, list[Any]] | None:
    """What a per-split plot starts from: ``(results, first, figure, axes)``, the results by
    split (:func:`by_split`), the first of them (whose settings, such as ``norm`` or ``eps``,
    label the axes) and a :func:`new_figure`; ``None`` when matplotlib is not installed."""
    results = by_split(result)
    drawn = new_figure(ncols, size)
    if drawn is None:
        return None
    figure, axes = drawn
    return results, next(iter(results.values())), figure, axes


def split_label(split: str, n: int) -> str:
    """``"test (n=128)"``, or ``"n=128"`` for a result of no named split."""
    return f"{split} (n={n})" if split else f"n={n}"


def split_colour(split: str, index: int) -> str:
    return SPLIT_COLOURS.get(split, f"C{index % 10}")


def finite(values: torch.Tensor) -> torch.Tensor:
    """The finite entries, as float64 on the CPU (histograms skip ±inf and NaN)."""
    flat = values.detach().flatten().double().cpu()
    return flat[torch.isfinite(flat)]


def shared_edges(series: list[torch.Tensor], bins: int) -> list[float]:
    """Bin edges spanning every series' finite values, so overlaid histograms compare bin by bin."""
    values = torch.cat([finite(s) for s in series]) if series else torch.zeros(0)
    low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 1.0)
    if not high > low:
        low, high = low - 0.5, high + 0.5
    return torch.linspace(low, high, bins + 1, dtype=torch.float64).tolist()


def overlaid_histograms(
    axis: Any, series: Mapping[str, torch.Tensor], bins: int, *, density: bool = True
) -> None:
    """One step histogram per split on ``axis`` (filled lightly, so overlaps stay readable)."""
    edges = shared_edges(list(series.values()), bins)
    for index, (split, values) in enumerate(series.items()):
        data = finite(values).numpy()
        colour = split_colour(split, index)
        label = split_label(split, int(values.numel()))
        axis.hist(
            data, bins=edges, density=density, histtype="stepfilled", alpha=0.25, color=colour
        )
        axis.hist(data, bins=edges, density=density, histtype="step", color=colour, label=label)
