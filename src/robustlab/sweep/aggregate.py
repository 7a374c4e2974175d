"""Aggregation of a sweep's runs in the store: per cell, mean, std and count of every final metric.

A *cell* is a run's axis values without the seed: runs of one cell differ only by their seed.
A run's *final metrics* (only ``finished`` runs count), all read from the store:

* every number of its last epoch, under its ``metrics.jsonl`` name (``test_rob_acc``,
  ``test_nat_acc``, ``val_rob_acc``, ``train_loss``, ``lipschitz``, ...): measured during
  training on ``eval.n`` test points;
* its final model selection (``eval.final``), each model evaluated on the whole test set under
  the evaluation attack: ``last_robust_accuracy``, ``best_robust_accuracy`` (best epoch by
  validation robust accuracy), ``ensemble_robust_accuracy`` (PAS), and likewise
  ``*_natural_accuracy``, ``*_perturbation_stability``, ``*_natural_loss``, ``*_robust_loss``;
* ``wall_time_s``: the run's training wall time (all its resumed parts together).

The std is the sample standard deviation (n - 1), as seeds are reported in the literature
(airbench's mean ± std over runs); it is absent for a single run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._fraction import parse_number
from ..config import parse_override
from ..errors import ConfigError, RunError
from ..store.sqlite import RunRecord
from .plan import SEED_KEY

SELECTION_METRICS = (
    "natural_accuracy",
    "robust_accuracy",
    "perturbation_stability",
    "natural_loss",
    "robust_loss",
)
# Metrics where lower is better (the best cell of a column is the smallest).
_LOWER_IS_BETTER = ("loss", "time", "lipschitz", "seconds", "spectral")


def final_metrics(record: RunRecord) -> dict[str, float]:
    """The run's final metrics (see the module docstring); ``{}`` for an unfinished run."""
    if record.status != "finished":
        return {}
    summary = record.summary
    metrics: dict[str, float] = {}
    for key, value in (summary.get("final") or {}).items():
        if key != "epoch" and _is_number(value):
            metrics[key] = float(value)
    for which, entry in (summary.get("selection") or {}).items():
        for key in SELECTION_METRICS:
            if _is_number(entry.get(key)):
                metrics[f"{which}_{key}"] = float(entry[key])
    if _is_number(summary.get("wall_time_s")):
        metrics["wall_time_s"] = float(summary["wall_time_s"])
    return metrics


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in _LOWER_IS_BETTER)


@dataclass(frozen=True)
class Stat:
    """Mean, sample std (None for one value) and count of one metric in one cell."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Cell:
    """One cell of a sweep: its axis values (seed excluded), its runs and their statistics."""

    values: dict[str, Any]
    runs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, Stat] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "runs": self.runs,
            "seeds": self.seeds,
            "metrics": {k: vars(s) for k, s in self.metrics.items()},
        }


def value_of(record: RunRecord, key: str) -> Any:
    """A run's value of ``key``: its sweep axis value, else the config's (dotted), else None."""
    values = record.sweep_values or {}
    if key in values:
        return values[key]
    node: Any = record.config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def parse_where(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["model.width=10", "method.name=trades"]`` -> key/value pairs (TOML literals; fractions
    such as ``8/255`` are numbers)."""
    pairs = []
    for item in items:
        try:
            key, raw = parse_override(item)
        except ConfigError:
            raise ConfigError("--where", item, "expected KEY=VALUE, e.g. model.width=10") from None
        _check_key(key, item)
        pairs.append((key, _plain(raw.value)))
    return pairs


def _check_key(key: str, item: str) -> None:
    """Refuse a key that is no config key: a typo would match no run, and "no runs match"
    would not say why."""
    from ..config import all_keys
    from ..errors import did_you_mean

    known = set(all_keys())
    free = tuple(f"{k}." for k in known if k.endswith(".options"))  # any option name
    if key in known or key.startswith(free):
        return
    hint = did_you_mean(key, known)
    raise ConfigError(
        "--where", item, f"{key!r} is no config key" + (f"; did you mean {hint!r}?" if hint else "")
    )


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_number(value)
        except ValueError:
            return value
    return value


def matches(record: RunRecord, where: Sequence[tuple[str, Any]]) -> bool:
    """Whether the run has every ``key = value`` of ``where`` (numbers compared as numbers)."""
    return all(same_value(value_of(record, key), want) for key, want in where)


def same_value(have: Any, want: Any) -> bool:
    if _is_number(have) and _is_number(want):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return have == want or str(have) == str(want)


def cell_key(values: Mapping[str, Any]) -> str:
    return json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True, default=str)


def aggregate(records: Sequence[RunRecord]) -> list[Cell]:
    """The cells of ``records`` (grouped by their sweep values without the seed), in the order
    their first run appears, with every final metric's :class:`Stat` over the finished runs."""
    cells: dict[str, Cell] = {}
    collected: dict[str, dict[str, list[float]]] = {}
    for record in records:
        values = {k: v for k, v in (record.sweep_values or {}).items() if k != SEED_KEY}
        key = cell_key(values)
        cell = cells.setdefault(key, Cell(values))
        metrics = final_metrics(record)
        if not metrics:
            continue
        cell.runs.append(record.run_id)
        cell.seeds.append(record.seed)
        for name, value in metrics.items():
            collected.setdefault(key, {}).setdefault(name, []).append(value)
    for key, cell in cells.items():
        cell.metrics = {name: Stat.of(vs) for name, vs in collected.get(key, {}).items()}
    return list(cells.values())


# ---------------------------------------------------------------------------------------------
# The cell grid: rows x cols of one metric (or rows x metrics)

# ``cols_key`` of a grid whose columns are metrics (:func:`build_metric_table`).
METRIC_KEY = "metric"
# ``rows_key`` of a grid with one row per run (its id), for runs that share every setting.
RUN_KEY = "run"


@dataclass
class Grid:
    """``metric`` as mean ± std (n) for each (row value, column value), best per column.

    A grid whose ``cols_key`` is :data:`METRIC_KEY` has one metric per column (``cols`` are
    metric names, ``metric`` is empty) and ``percent_cols`` says which are in percent.
    """

    metric: str
    rows_key: str
    cols_key: str
    rows: list[Any]
    cols: list[Any]
    stats: dict[tuple[int, int], Stat]
    best: set[tuple[int, int]]
    percent: bool
    percent_cols: list[bool] | None = None

    def metric_at(self, j: int) -> str:
        """The metric of column ``j``."""
        return str(self.cols[j]) if self.cols_key == METRIC_KEY else self.metric

    def percent_at(self, j: int) -> bool:
        """Whether column ``j`` is shown in percent points."""
        return self.percent_cols[j] if self.percent_cols is not None else self.percent

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rows": {"key": self.rows_key, "values": self.rows},
            "cols": {"key": self.cols_key, "values": self.cols},
            "cells": [
                {
                    self.rows_key: self.rows[i],
                    self.cols_key: self.cols[j],
                    **vars(stat),
                    "best": (i, j) in self.best,
                }
                for (i, j), stat in sorted(self.stats.items())
            ],
        }


def build_grid(
    records: Sequence[RunRecord],
    rows_key: str,
    cols_key: str,
    metric: str,
    where: Sequence[tuple[str, Any]] = (),
) -> Grid:
    """Aggregate ``metric`` of the finished ``records`` (``where`` applied) into a grid.

    Raises:
        RunError: no finished run matches, the metric is unknown (the known ones are listed), or
            a key other than rows, cols and seed still varies among the runs (name it in
            ``--where``, or the cells would mix different settings).
    """
    chosen = [r for r in records if matches(r, where)]
    finished = [r for r in chosen if final_metrics(r)]
    if not finished:
        raise RunError(
            f"no finished runs{' match ' + _show_where(where) if where else ''} "
            f"({len(chosen)} runs, none finished)"
        )
    known = sorted({m for r in finished for m in final_metrics(r)})
    if metric not in known:
        raise ConfigError(
            "--metric", metric, f"not a final metric of these runs; known: {', '.join(known)}"
        )
    _check_unmixed(finished, rows_key, cols_key, where)
    rows = _ordered_values(finished, rows_key)
    cols = _ordered_values(finished, cols_key)
    samples: dict[tuple[int, int], list[float]] = {}
    for record in finished:
        value = final_metrics(record).get(metric)
        if value is None:
            continue
        i = _index(rows, value_of(record, rows_key))
        j = _index(cols, value_of(record, cols_key))
        samples.setdefault((i, j), []).append(value)
    stats = {ij: Stat.of(vs) for ij, vs in samples.items()}
    best = _best_per_column(stats, [metric] * len(cols))
    return Grid(metric, rows_key, cols_key, rows, cols, stats, best, _is_percent(metric, stats))


def build_metric_table(records: Sequence[RunRecord], rows_key: str, metrics: Sequence[str]) -> Grid:
    """One row per value of ``rows_key`` (:data:`RUN_KEY`: per run), one column per metric,
    each cell mean ± std over the finished runs of its row (a report's table when only one
    axis, or none, varies).

    Raises:
        RunError: no finished run among ``records``.
        ConfigError: a metric is unknown (the known ones are listed).
    """
    finished = [r for r in records if final_metrics(r)]
    if not finished:
        raise RunError(f"no finished runs ({len(records)} runs, none finished)")
    known = sorted({m for r in finished for m in final_metrics(r)})
    for metric in metrics:
        if metric not in known:
            raise ConfigError(
                "--metric", metric, f"not a final metric of these runs; known: {', '.join(known)}"
            )
    if rows_key == RUN_KEY:
        rows: list[Any] = list(dict.fromkeys(r.run_id for r in finished))
    else:
        rows = _ordered_values(finished, rows_key)
    samples: dict[tuple[int, int], list[float]] = {}
    for record in finished:
        values = final_metrics(record)
        i = _index(rows, record.run_id if rows_key == RUN_KEY else value_of(record, rows_key))
        for j, metric in enumerate(metrics):
            if metric in values:
                samples.setdefault((i, j), []).append(values[metric])
    stats = {ij: Stat.of(vs) for ij, vs in samples.items()}
    percent_cols = [
        _is_percent(m, {ij: s for ij, s in stats.items() if ij[1] == j})
        for j, m in enumerate(metrics)
    ]
    best = _best_per_column(stats, list(metrics))
    return Grid("", rows_key, METRIC_KEY, rows, list(metrics), stats, best, False, percent_cols)


def _best_per_column(
    stats: Mapping[tuple[int, int], Stat], metrics: Sequence[str]
) -> set[tuple[int, int]]:
    """The cells holding the best mean of their column (``metrics[j]``: column ``j``'s metric;
    lowest for losses and times, highest otherwise); ties all count."""
    best = set()
    for j, metric in enumerate(metrics):
        pick: Callable[..., Any] = min if lower_is_better(metric) else max
        column = {ij: s for ij, s in stats.items() if ij[1] == j}
        if column:
            top = pick(s.mean for s in column.values())
            best |= {ij for ij, s in column.items() if s.mean == top}
    return best


def _is_percent(metric: str, stats: Mapping[tuple[int, int], Stat]) -> bool:
    """Accuracies and stabilities (fractions in [0, 1]) are shown in percent points."""
    return all(0.0 <= s.mean <= 1.0 for s in stats.values()) and any(
        word in metric for word in ("acc", "stability")
    )


def _check_unmixed(
    records: Sequence[RunRecord], rows_key: str, cols_key: str, where: Sequence[tuple[str, Any]]
) -> None:
    """Raise :class:`RunError` if the runs of one (row, column) cell differ in a sweep key other
    than the seed: their mean would mix different settings. Keys that vary across cells only
    (a zip of settings that follow the row) are fine."""
    fixed = {k for k, _ in where} | {rows_key, cols_key, SEED_KEY}
    seen: dict[tuple[str, str, str], set[str]] = {}
    for record in records:
        cell = (_json(value_of(record, rows_key)), _json(value_of(record, cols_key)))
        for key, value in (record.sweep_values or {}).items():
            if key not in fixed:
                seen.setdefault((*cell, key), set()).add(_json(value))
    mixed = {key: values for (_, _, key), values in seen.items() if len(values) > 1}
    if mixed:
        key, values = next(iter(mixed.items()))
        raise RunError(
            f"the runs of one cell also differ in {', '.join(sorted(mixed))} "
            f"({key}: {', '.join(sorted(values))}); fix it with --where {key}=VALUE, "
            "or make it --rows/--cols"
        )


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _show_where(where: Sequence[tuple[str, Any]]) -> str:
    return " ".join(f"{k}={v}" for k, v in where)


def _ordered_values(records: Sequence[RunRecord], key: str) -> list[Any]:
    values: list[Any] = []
    for record in records:
        value = value_of(record, key)
        if not any(same_value(value, v) for v in values):
            values.append(value)
    try:
        return sorted(values)
    except TypeError:  # mixed types (None and numbers): keep first-seen order
        return values


def _index(values: Sequence[Any], value: Any) -> int:
    return next(i for i, v in enumerate(values) if same_value(value, v))


# -- rendering -------------------------------------------------------------------------------


def format_stat(stat: Stat, percent: bool) -> str:
    """``52.3 ± 0.4 (3)`` (percent points for accuracies), ``52.3 (1)`` for one run."""
    scale = 100.0 if percent else 1.0
    number = (lambda v: f"{v * scale:.1f}") if percent else (lambda v: f"{v:.4g}")
    text = number(stat.mean)
    if stat.std is not None:
        text += f" ± {number(stat.std)}"
    return f"{text} ({stat.n})"


def _label(key: str, value: Any) -> str:
    """A row or column header: a budget as it is written (``8/255``, ``0.2``: a run name's
    ``8`` would read as 8, and 0.2 as ``51``), other values as in run names."""
    from ..report.labels import format_eps
    from .spec import PIXEL_KEYS, format_name_value

    if isinstance(value, float) and key in PIXEL_KEYS:
        return format_eps(value)
    return format_name_value(key, value) if not isinstance(value, str) else value


def cell_texts(grid: Grid) -> list[list[str]]:
    """Each cell as :func:`format_stat` writes it (``-`` for an empty cell), row by row."""
    out = []
    for i in range(len(grid.rows)):
        row = []
        for j in range(len(grid.cols)):
            stat = grid.stats.get((i, j))
            row.append("-" if stat is None else format_stat(stat, grid.percent_at(j)))
        out.append(row)
    return out


def corner_label(grid: Grid) -> str:
    """The top-left header: ``rows \\ cols``, or the rows' key for a table of metrics."""
    if grid.cols_key == METRIC_KEY:
        return grid.rows_key
    return f"{grid.rows_key} \\ {grid.cols_key}"


def column_label(grid: Grid, j: int) -> str:
    """Column ``j``'s header: its value (``32``), or a metric with its unit."""
    if grid.cols_key == METRIC_KEY:
        return grid.metric_at(j) + (" (%)" if grid.percent_at(j) else "")
    return _label(grid.cols_key, grid.cols[j])


def row_label(grid: Grid, i: int) -> str:
    return _label(grid.rows_key, grid.rows[i])


def grid_note(grid: Grid) -> str:
    """What the cells are and what bold means, one line."""
    if grid.cols_key == METRIC_KEY:
        return (
            "mean ± std (runs) over seeds; bold: best in its column (lowest for losses and times)"
        )
    unit = " (%)" if grid.percent else ""
    direction = "lowest" if lower_is_better(grid.metric) else "highest"
    return f"{grid.metric}{unit}: mean ± std (runs) over seeds; bold: {direction} in its column"


def render_markdown(grid: Grid) -> str:
    """A Markdown table; the best mean of each column in bold."""
    header = [corner_label(grid), *(column_label(grid, j) for j in range(len(grid.cols)))]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(grid.cols)) + "|",
    ]
    for i, cells in enumerate(cell_texts(grid)):
        shown = [f"**{c}**" if (i, j) in grid.best else c for j, c in enumerate(cells)]
        lines.append("| " + " | ".join([row_label(grid, i), *shown]) + " |")
    lines.append("")
    lines.append(grid_note(grid))
    return "\n".join(lines)


def render_csv(grid: Grid) -> str:
    """CSV: one row per table row; the best of each column marked with a trailing ``*``."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    corner = grid.rows_key if grid.cols_key == METRIC_KEY else f"{grid.rows_key}\\{grid.cols_key}"
    writer.writerow([corner, *grid.cols])
    for i, cells in enumerate(cell_texts(grid)):
        writer.writerow(
            [grid.rows[i], *(c + ("*" if (i, j) in grid.best else "") for j, c in enumerate(cells))]
        )
    return buffer.getvalue().rstrip("\n")


def render_latex(grid: Grid) -> str:
    """A ``tabular`` (booktabs); the best of each column in bold."""

    def tex(text: str) -> str:
        return text.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%")

    lines = [
        r"\begin{tabular}{l" + "r" * len(grid.cols) + "}",
        r"\toprule",
        " & ".join(
            [
                tex(corner_label(grid).replace(" \\ ", " / ")),
                *(tex(column_label(grid, j)) for j in range(len(grid.cols))),
            ]
        )
        + r" \\",
        r"\midrule",
    ]
    for i, cells in enumerate(cell_texts(grid)):
        shown = [
            r"\textbf{" + tex(c) + "}" if (i, j) in grid.best else tex(c)
            for j, c in enumerate(cells)
        ]
        lines.append(" & ".join([tex(row_label(grid, i)), *shown]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[Grid], str]] = {
    "md": render_markdown,
    "csv": render_csv,
    "latex": render_latex,
    "json": lambda grid: json.dumps(grid.to_dict(), indent=2),
}
