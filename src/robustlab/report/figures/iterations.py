"""Per-iteration trackers (``train.track_every``): the stochastic gradient's norm, the robust
error of the training batches and the distance travelled from the initial weights, against the
iteration (Liu et al. 2020, §4.1, Figs. 1 and 8), one band per setting over its seeds.

The single-run version of this figure is :func:`robustlab.training.tracking.plot_iterations`;
this one shares the report's colours (one per width) and line styles (one per λ) and pools the
seeds of a setting, which record the same iterations.
"""

from __future__ import annotations

from pathlib import Path

from ...diagnostics._plot import new_figure, save
from ._base import FigureFile, Selection, band, draw_band, legend_below, register_figure

PANELS = (
    ("grad_norm", 1.0, "stochastic gradient norm ‖∇θ L‖ (log scale)"),
    ("rob_error", 100.0, "robust training error of the batch (%)"),
    ("distance", 1.0, "distance from the initial weights ‖θ − θ₀‖"),
)


@register_figure("iterations", section="per-iteration tracking")
def iterations(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """The tracked quantities against the iteration; drawn when some run was tracked."""
    tracked = [r for r in selection.records if selection.iterations(r)]
    if not tracked:
        return []
    drawn = new_figure(ncols=3, size=(13.0, 4.6))
    if drawn is None:
        return []
    figure, axes = drawn
    for series in selection.series(tracked):
        for axis, (key, scale, _) in zip(axes, PANELS, strict=True):
            data = band(
                [
                    (r["iteration"], None if r.get(key) is None else scale * r[key])
                    for r in selection.iterations(record)
                ]
                for record in series.records
            )
            draw_band(axis, data, series, marker=None)
    for axis, (_, _, ylabel) in zip(axes, PANELS, strict=True):
        axis.set_xlabel("training iteration (0-based over the run)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    legend = legend_below(figure, axes)
    every = sorted({int((r.config.get("train") or {}).get("track_every") or 0) for r in tracked})
    seeds = selection.seeds_text(selection.series(tracked))
    title = f"Per-iteration training dynamics ({selection.title_suffix()}; {seeds})"
    figure.suptitle(title, fontsize=10)
    caption = (
        f"Recorded every {', '.join(map(str, every))} iterations (train.track_every) and at "
        "every iteration of the run's first and last 2,000: the gradient norm stays large and "
        "the robust batch error plateaus when ε is large (Liu et al. 2020, Fig. 1)."
    )
    path = save(figure, out_dir / "iterations.png")
    return [FigureFile(path, title, caption, "per-iteration tracking", selection.run_id(), legend)]
