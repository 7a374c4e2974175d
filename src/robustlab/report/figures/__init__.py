"""Figures of runs and sweeps, drawn from the results store (never during training).

Each figure is registered in :data:`FIGURES` (``list_figures()``) and draws only when the runs
have its data, so one call draws what a selection can show:

>>> from robustlab.store import ResultsStore
>>> store = ResultsStore("runs/robustlab.db", create=False)
>>> files = render_figures(store, store.sweep_runs("digits-width-lambda"), Path("report"))
>>> [f.path.name for f in files]
['metrics_vs_epoch.png', 'metrics_vs_width.png', 'losses.png', ...]

The same width (λ, ...) keeps its colour in every figure of one call (:mod:`._base`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...store.sqlite import RunRecord

# Importing each file registers its figures.
from . import curves, diagnostics, iterations, phase  # noqa: F401
from ._base import FIGURES, ORDER, SECTIONS, FigureFile, RunData, Selection, colour_map

__all__ = [
    "FIGURES",
    "SECTIONS",
    "FigureFile",
    "Selection",
    "colour_map",
    "list_figures",
    "render_figures",
]


def list_figures(pattern: str | None = None) -> list[str]:
    """Names of the registered figures (optionally filtered by a shell-style pattern)."""
    return FIGURES.names(pattern)


def render_figures(
    store: RunData,
    records: Sequence[RunRecord],
    out_dir: Path,
    names: Sequence[str] | None = None,
) -> list[FigureFile]:
    """Draw every figure (or those in ``names``) the ``records`` have data for into ``out_dir``.

    Args:
        store: the :class:`~robustlab.store.ResultsStore` holding the runs' epochs, iterations
            and diagnostics (or any object with those three readers).
        records: the runs (``store.runs()``, ``store.sweep_runs(name)``, ``[store.run(id)]``).
        out_dir: created if absent; one PNG per figure, stored diagnostics' figures under
            ``diagnostics/``.
        names: registered figure names; all by default.

    Returns:
        The figures written, by section (training curves, schedules, per-iteration tracking,
        diagnostics, phase). Empty when no run has data any figure needs.

    Raises:
        UnknownNameError: a name in ``names`` is not a registered figure (nothing is written).
    """
    for name in names or ():
        FIGURES.get(name)  # an unknown name is refused before anything is written
    chosen = [name for name in ORDER if not names or name in names]
    if not records:
        return []
    selection = Selection(store, records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[FigureFile] = []
    for name in chosen:
        files.extend(FIGURES.get(name)(selection, out_dir))
    order = {section: i for i, section in enumerate(SECTIONS)}
    return sorted(files, key=lambda f: order.get(f.section, len(order)))
