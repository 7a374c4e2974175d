"""Per-epoch figures: the metrics against epochs and at the best epoch against width (Wu et al.
2021, Fig. 3), natural risk and robust regularization (Fig. 1), the local Lipschitz estimate
(Fig. 4), λ's trajectory (WAR, §5) and the ε and learning-rate schedules (Liu et al. 2020,
Fig. 4). Each draws one band (mean ± std over seeds) per setting from the ``epochs`` table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...diagnostics._plot import new_figure, save
from ...store.sqlite import RunRecord
from ._base import (
    LINESTYLES,
    Band,
    FigureFile,
    Selection,
    Series,
    axis_label,
    band,
    draw_band,
    legend_below,
    register_figure,
    sort_key,
)

# The three quantities of Wu et al. (robust = correct and stable, eq. 3.1), per-epoch keys.
TEST_METRICS = (
    ("test_rob_acc", "robust accuracy (%)"),
    ("test_nat_acc", "natural accuracy (%)"),
    ("test_stability", "perturbation stability (%)"),
)
PANEL = (4.3, 4.0)  # inches per panel of a row of panels
SINGLE = (6.5, 4.6)  # a one-panel figure, with room for the legend under it


def epoch_band(selection: Selection, series: Series, key: str, scale: float = 1.0) -> Band:
    """``key`` against the epoch over the series' seeds (null epochs, e.g. ``eval.every``,
    left out)."""
    return band(
        [
            (m["epoch"], None if m.get(key) is None else scale * m[key])
            for m in selection.epochs(record)
        ]
        for record in series.records
    )


def _row(selection: Selection, keys: tuple[tuple[str, str], ...], scale: float) -> Any:
    """A row of panels, ``key`` against the epoch, one band per series; ``None`` without
    matplotlib."""
    size = SINGLE if len(keys) == 1 else (PANEL[0] * len(keys), PANEL[1] + 0.6)
    drawn = new_figure(ncols=len(keys), size=size)
    if drawn is None:
        return None
    figure, axes = drawn
    for axis, (key, ylabel) in zip(axes, keys, strict=True):
        for series in selection.series():
            draw_band(axis, epoch_band(selection, series, key, scale), series)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        _integer_epochs(axis)
    return figure, axes, legend_below(figure, axes)


def _integer_epochs(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _written(
    selection: Selection,
    figure: Any,
    path: Path,
    title: str,
    caption: str,
    section: str,
    legend: dict[str, str],
) -> list[FigureFile]:
    figure.suptitle(title, fontsize=10)
    return [FigureFile(save(figure, path), title, caption, section, selection.run_id(), legend)]


@register_figure("metrics_vs_epoch", section="training curves")
def metrics_vs_epoch(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """Robust accuracy, natural accuracy and perturbation stability on the test points against
    the epoch (Wu et al. 2021, Fig. 3 left)."""
    if not selection.has_epoch_metric("test_rob_acc"):
        return []
    drawn = _row(selection, TEST_METRICS, 100.0)
    if drawn is None:
        return []
    title = f"Test metrics per epoch ({selection.title_suffix()}; {selection.seeds_text()})"
    caption = (
        "Robust accuracy, natural accuracy and perturbation stability on the run's per-epoch "
        "test points under its evaluation attack, per epoch; shaded: ± std over seeds "
        "(Wu et al. 2021, Fig. 3 left)."
    )
    path = out_dir / "metrics_vs_epoch.png"
    return _written(selection, drawn[0], path, title, caption, "training curves", drawn[2])


def best_epoch(selection: Selection, record: RunRecord) -> dict[str, Any] | None:
    """The epoch the run selected as its best (``eval.select``), as recorded at its end; for
    a run that did not finish, the epoch with the highest value of its selection key so far."""
    best = record.summary.get("best")
    if isinstance(best, dict) and best.get("test_rob_acc") is not None:
        return best
    key = (record.config.get("eval") or {}).get("select", "val_rob_acc")
    measured = [m for m in selection.epochs(record) if m.get(key) is not None]
    if not measured:
        measured = [m for m in selection.epochs(record) if m.get("test_rob_acc") is not None]
        key = "test_rob_acc"
    return max(measured, key=lambda m: m[key]) if measured else None


@register_figure("metrics_vs_width", section="training curves")
def metrics_vs_width(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """The three test metrics at each run's best epoch against the width, one line per λ (or
    per value of the other varying keys) (Wu et al. 2021, Fig. 3 right). Needs two widths."""
    widths = sorted({c.get("model.width") for c in selection.configs.values()} - {None})
    if len(widths) < 2:
        return []
    best = {r.run_id: best_epoch(selection, r) for r in selection.records}
    if not any(best.values()):
        return []
    # One line per value of the other varying keys, coloured (and styled) as elsewhere: a λ
    # has its own colour, distinct from every width's.
    others = [k for k in selection.axes if k != "model.width"]
    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for record in selection.records:
        config = selection.configs[record.run_id]
        groups.setdefault(tuple(str(config.get(k)) for k in others), []).append(record)
    drawn = new_figure(ncols=3, size=(PANEL[0] * 3, PANEL[1] + 0.6))
    if drawn is None:
        return []
    figure, axes = drawn
    order = sorted(groups, key=lambda t: [sort_key(v) for v in t])
    for index, key in enumerate(order):
        members = groups[key]
        config = selection.configs[members[0].run_id]
        colour = selection.colour(others[0], config.get(others[0])) if others else "tab:blue"
        label = ", ".join(axis_label(k, config.get(k)) for k in others) or "best epoch"
        line = Series({}, members, colour, LINESTYLES[index // 10 % len(LINESTYLES)], label)
        for axis, (metric, _) in zip(axes, TEST_METRICS, strict=True):
            draw_band(
                axis,
                band(
                    [(float(selection.configs[r.run_id]["model.width"]), 100.0 * chosen[metric])]
                    for r in members
                    if (chosen := best[r.run_id]) and chosen.get(metric) is not None
                ),
                line,
            )
    spread = widths[-1] / max(widths[0], 1e-12)
    for axis, (_, ylabel) in zip(axes, TEST_METRICS, strict=True):
        axis.set_xlabel("model width (model.width" + (", log scale)" if spread >= 8 else ")"))
        axis.set_ylabel(f"{ylabel[:-4]} at the best epoch (%)")
        if spread >= 8:
            axis.set_xscale("log", base=2)
        axis.set_xticks(widths, [f"{w:g}" for w in widths])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    legend = legend_below(figure, axes)
    title = (
        "Test metrics at the best epoch against width "
        f"({selection.title_suffix()}; {selection.seeds_text()})"
    )
    caption = (
        "Each run's best epoch (its eval.select key, as recorded at the end of the run); "
        "one line per setting of the other varying keys; shaded: ± std over seeds "
        "(Wu et al. 2021, Fig. 3 right: wider models lose perturbation stability)."
    )
    path = out_dir / "metrics_vs_width.png"
    return _written(selection, figure, path, title, caption, "training curves", legend)


@register_figure("losses", section="training curves")
def losses(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """The natural risk and the robust regularization of eq. 1.1 per epoch, averaged over the
    epoch's training batches (Wu et al. 2021, Fig. 1)."""
    if not selection.has_epoch_metric("rob_reg"):
        return []
    keys = (
        ("nat_risk", "natural risk (CE on clean inputs)"),
        ("rob_reg", "robust regularization (method's term)"),
    )
    drawn = _row(selection, keys, 1.0)
    if drawn is None:
        return []
    title = f"Natural risk and robust regularization per epoch ({selection.title_suffix()})"
    caption = (
        "The two terms of the training objective (eq. 1.1), averaged over each epoch's "
        f"training batches; {selection.seeds_text()} (Wu et al. 2021, Fig. 1: wider models "
        "reach a lower natural risk but a higher robust regularization)."
    )
    path = out_dir / "losses.png"
    return _written(selection, drawn[0], path, title, caption, "training curves", drawn[2])


@register_figure("lipschitz", section="training curves")
def lipschitz(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """The local Lipschitz estimate per epoch (Wu et al. 2021, §4.2, Fig. 4)."""
    if not selection.has_epoch_metric("lipschitz"):
        return []
    drawn = _row(selection, (("lipschitz", "local Lipschitz estimate (mean over points)"),), 1.0)
    if drawn is None:
        return []
    title = f"Local Lipschitz estimate per epoch ({selection.seeds_text()})"
    caption = (
        "Mean over eval.lipschitz_n training points of max ||f(x') - f(x)||_1 / ||x' - x|| in "
        "the ε-ball (Wu et al. 2021, §4.2, Fig. 4: wider models are less smooth)."
    )
    path = out_dir / "lipschitz.png"
    return _written(selection, drawn[0], path, title, caption, "training curves", drawn[2])


def iterations_per_epoch(records: list[dict[str, Any]]) -> int:
    """Iterations per epoch, from the first iteration recorded in the last epoch (every
    iteration of the last 2,000 is recorded, so it is that epoch's first)."""
    last = max(r["epoch"] for r in records)
    if last <= 1:
        return max(r["iteration"] for r in records) + 1
    first = min(r["iteration"] for r in records if r["epoch"] == last)
    return max(1, math.ceil(first / (last - 1)))


def within_epochs(
    selection: Selection, record: RunRecord, key: str
) -> list[tuple[float, float | None]]:
    """``key`` at fractional epochs from the tracked iterations (``train.track_every``; the
    iteration's end is epoch (i + 1) / iterations per epoch); ``[]`` when not tracked."""
    traced = [r for r in selection.iterations(record) if r.get(key) is not None]
    if not traced:
        return []
    per_epoch = iterations_per_epoch(selection.iterations(record))
    return [((r["iteration"] + 1) / per_epoch, r[key]) for r in traced]


def _lam_points(selection: Selection, record: RunRecord) -> list[tuple[float, float | None]]:
    """λ within epochs: the tracked iterations' λ when traced, else the epochs' ``lam_trace``
    samples, at fractional epochs (epoch e's samples spread over (e-1, e])."""
    traced = within_epochs(selection, record, "lam")
    if traced:
        return traced
    points: list[tuple[float, float | None]] = []
    for m in selection.epochs(record):
        trace = m.get("lam_trace") or []
        for i, value in enumerate(trace):
            points.append((m["epoch"] - 1 + (i + 1) / len(trace), value))
    return points


@register_figure("lam", section="training curves")
def lam(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """λ against the epoch when some run's λ moves (WAR, Wu et al. 2021 §5; a λ schedule):
    sampled within the epochs (``lam_trace``, or the tracked iterations) and at epochs' ends."""
    moving = []
    for record in selection.records:
        values = {v for _, v in _lam_points(selection, record) if v is not None}
        values |= {m.get("lam") for m in selection.epochs(record) if m.get("lam") is not None}
        if len(values) > 1:
            moving.append(record)
    if not moving:
        return []
    drawn = new_figure(size=SINGLE)
    if drawn is None:
        return []
    figure, (axis,) = drawn
    for series in selection.series(moving):
        inside = band(_lam_points(selection, r) for r in series.records)
        draw_band(axis, inside, series, marker=None)
        ends = epoch_band(selection, series, "lam")
        axis.plot(ends.x, ends.mean, "o", color=series.colour, markersize=4, label="_end")
    axis.set_xlabel("epoch (fractional: samples within each epoch)")
    axis.set_ylabel("λ (weight of the robust regularization)")
    axis.grid(alpha=0.3)
    _integer_epochs(axis)
    legend = legend_below(figure, [axis])
    title = f"λ during training ({selection.seeds_text(selection.series(moving))})"
    caption = (
        "λ as the method used it: samples within each epoch (lines; per tracked iteration with "
        "train.track_every) and its value at each epoch's end (dots). WAR raises λ while "
        "the ratio of natural risk to robust regularization exceeds ζ (Wu et al. 2021, §5)."
    )
    return _written(
        selection, figure, out_dir / "lam.png", title, caption, "training curves", legend
    )


def _schedule(selection: Selection, record: RunRecord, key: str) -> list[tuple[float, Any]]:
    """``key`` (``lr``, ``eps``) at fractional epochs: per tracked iteration when traced (the
    schedule's shape within epochs), else at each epoch's last iteration."""
    return within_epochs(selection, record, key) or [
        (float(m["epoch"]), m.get(key)) for m in selection.epochs(record)
    ]


@register_figure("schedules", section="schedules")
def schedules(selection: Selection, out_dir: Path) -> list[FigureFile]:
    """The training attack's ε and the learning rate against the epoch (Liu et al. 2020,
    Fig. 4 compares ε schedulers). Settings that share a schedule share one line."""
    if not (selection.has_epoch_metric("eps") or selection.has_epoch_metric("lr")):
        return []
    norms = {str((r.config.get("attack") or {}).get("norm", r.norm)) for r in selection.records}
    norm = norms.pop() if len(norms) == 1 else "its norm"
    panels = (("eps", f"training attack's ε ({norm} budget)"), ("lr", "learning rate"))
    drawn = new_figure(ncols=2, size=(PANEL[0] * 2, PANEL[1] + 0.6))
    if drawn is None:
        return []
    figure, axes = drawn
    for axis, (key, ylabel) in zip(axes, panels, strict=True):
        # Seeds of a setting run the same schedule; settings with the same curve are merged.
        curves: dict[tuple[Any, ...], list[Series]] = {}
        for series in selection.series():
            data = band(_schedule(selection, r, key) for r in series.records)
            curves.setdefault((tuple(data.x), tuple(data.mean)), []).append(series)
        for (xs, ys), members in curves.items():
            first = members[0]
            if len(curves) == 1:
                label, colour, style = "every run", "black", "-"
            else:
                label, colour, style = (
                    " | ".join(m.label for m in members),
                    first.colour,
                    first.linestyle,
                )
            axis.plot(xs, ys, color=colour, linestyle=style, linewidth=1.4, label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        _integer_epochs(axis)
    legend = legend_below(figure, axes)
    title = f"ε and learning-rate schedules ({selection.title_suffix()})"
    caption = (
        "The training attack's budget and the learning rate (attack.eps_schedule, "
        "train.schedule): per tracked iteration with train.track_every, else at each epoch's "
        "last iteration; settings with the same schedule share one line "
        "(Liu et al. 2020, Fig. 4 compares ε schedulers)."
    )
    path = out_dir / "schedules.png"
    return _written(selection, figure, path, title, caption, "schedules", legend)
