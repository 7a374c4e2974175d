"""The tables of a report: which axes, which metrics, one :class:`~robustlab.sweep.aggregate.Grid`
each, and their Markdown / CSV / LaTeX files.

The layout follows what varies among the finished runs (:func:`.selection.varying_keys`):

* two settings or more: one table per metric, rows x columns two of them (Wu et al. 2021,
  Table 1: rows λ, columns width; :data:`.selection.PREFERRED_ROWS` / ``PREFERRED_COLS``, or
  ``--rows`` / ``--cols``), each cell mean ± std over its seeds with n, the best of each column
  in bold; a third setting splits the tables (one set per value, titled by it);
* one setting: one table, a row per value, a column per metric;
* none (seeds of one setting, or single runs): a row per run.

The metrics are robust accuracy, natural accuracy and perturbation stability as the runs
measured them at the end (the last model on the whole test set, ``eval.final``; else the last
epoch's evaluation on ``eval.n`` test points), and every ``--metric``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..store.sqlite import RunRecord
from ..sweep import aggregate
from ..sweep.aggregate import RUN_KEY, Grid, final_metrics, value_of
from .labels import epoch_split, evaluation_label
from .selection import PREFERRED_COLS, PREFERRED_ROWS, as_key, varying_keys

# The report's standard metrics: for each, the final metrics that measure it, best first (the
# last model on the whole test set; else the last epoch on eval.n points).
STANDARD_METRICS: dict[str, tuple[str, ...]] = {
    "robust accuracy": ("last_robust_accuracy", "test_rob_acc"),
    "natural accuracy": ("last_natural_accuracy", "test_nat_acc"),
    "perturbation stability": ("last_perturbation_stability", "test_stability"),
}
# The file formats of every table, by extension (the renderers of `robustlab sweep table`).
TABLE_FORMATS = {"md": "md", "csv": "csv", "tex": "latex"}


@dataclass(frozen=True)
class Layout:
    """The axes of the tables: ``rows``/``cols`` (None: absent) and the keys that split them."""

    rows: str | None
    cols: str | None
    facets: list[str] = field(default_factory=list)


@dataclass
class ReportTable:
    """One table of a report: its grid, a title, the file stem and what its numbers measured."""

    grid: Grid
    title: str
    slug: str
    facet: dict[str, Any]
    measured: str

    def files(self) -> dict[str, str]:
        """``{"table_<slug>.md": text, ...}``: the table in every :data:`TABLE_FORMATS`."""
        return {
            f"table_{self.slug}.{ext}": aggregate.RENDERERS[fmt](self.grid) + "\n"
            for ext, fmt in TABLE_FORMATS.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "facet": self.facet,
            "measured": self.measured,
            "files": sorted(self.files()),
            **self.grid.to_dict(),
        }


def known_metrics(records: Sequence[RunRecord]) -> list[str]:
    """The final metrics some finished run of ``records`` has, sorted."""
    return sorted({m for r in records for m in final_metrics(r)})


def choose_metrics(records: Sequence[RunRecord], asked: Sequence[str] = ()) -> list[str]:
    """The standard metrics the runs have (:data:`STANDARD_METRICS`), then ``asked``.

    Raises:
        ConfigError: an ``asked`` metric no finished run has (the known ones are listed).
    """
    known = known_metrics(records)
    for name in asked:
        if name not in known:
            allowed = f"known: {', '.join(known)}" if known else "no run has finished yet"
            raise ConfigError("--metric", name, f"not a final metric of these runs; {allowed}")
    chosen = [
        next(m for m in candidates if m in known)
        for candidates in STANDARD_METRICS.values()
        if any(m in known for m in candidates)
    ]
    return list(dict.fromkeys([*chosen, *asked]))


def choose_layout(
    records: Sequence[RunRecord], rows: str | None = None, cols: str | None = None
) -> Layout:
    """The tables' axes: ``rows``/``cols`` if given (each must vary), else the preferred ones
    among the settings that vary; the other varying settings split the tables.

    Raises:
        ConfigError: ``--rows``/``--cols`` names a key that does not vary among ``records`` (the
            varying ones are listed), or both name the same key.
    """
    varying = varying_keys(records)
    for flag, key in (("--rows", rows), ("--cols", cols)):
        if key is not None and not _varies(records, key):
            have = {json.dumps(value_of(r, key), default=str) for r in records}
            why = (
                "no run has this key"
                if have == {"null"}
                else f"does not vary in the selection (every run has {key}={have.pop()})"
            )
            listed = ", ".join(varying) or "none, the runs differ only by seed"
            raise ConfigError(flag, key, f"{why}; varying: {listed}")
    if rows is not None and rows == cols:
        raise ConfigError("--cols", cols, "is also --rows; give two different keys")
    free = [
        k
        for k in varying
        if not _same_split(records, k, rows) and not _same_split(records, k, cols)
    ]
    if cols is None and (rows is not None or len(free) >= 2):
        cols = _first(free, PREFERRED_COLS, avoid=rows)
        free = [k for k in free if not _same_split(records, k, cols)]
    if rows is None and free:
        rows = _first(free, PREFERRED_ROWS, avoid=cols)
        free = [k for k in free if not _same_split(records, k, rows)]
    if rows is None and cols is not None:  # one axis, given as --cols: it is the table's rows
        rows, cols = cols, None
    return Layout(rows, cols, free)


def _first(keys: Sequence[str], preferred: Sequence[str], avoid: str | None) -> str | None:
    candidates = [k for k in keys if k != avoid]
    for key in preferred:
        if key in candidates:
            return key
    if not candidates:
        return None
    # No preferred key: the columns take the second varying key, the rows the first.
    return candidates[1] if preferred is PREFERRED_COLS and len(candidates) > 1 else candidates[0]


def _varies(records: Sequence[RunRecord], key: str) -> bool:
    return len({json.dumps(value_of(r, key), default=str, sort_keys=True) for r in records}) > 1


def _same_split(records: Sequence[RunRecord], key: str, other: str | None) -> bool:
    """Whether ``key`` and ``other`` group the runs the same way (one setting, two names)."""
    if other is None:
        return False
    if key == other:
        return True
    pairs = {(as_key(value_of(r, key)), as_key(value_of(r, other))) for r in records}
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def build_tables(
    records: Sequence[RunRecord],
    layout: Layout,
    metrics: Sequence[str],
) -> list[ReportTable]:
    """The report's tables of the finished ``records`` (``[]`` when none finished)."""
    finished = [r for r in records if final_metrics(r)]
    if not finished:
        return []
    tables: list[ReportTable] = []
    for facet, group in _facets(finished, layout.facets):
        where = list(facet.items())
        suffix = "".join(f"--{_slug(k)}-{_slug(str(v))}" for k, v in facet.items())
        heading = ", ".join(f"{k}={_show(v)}" for k, v in facet.items())
        if layout.rows is not None and layout.cols is not None:
            have = set(known_metrics(group))
            for metric in (m for m in metrics if m in have):
                grid = aggregate.build_grid(finished, layout.rows, layout.cols, metric, where)
                title = f"{metric_title(metric)} ({metric})" + (f", {heading}" if heading else "")
                tables.append(
                    ReportTable(grid, title, _slug(metric) + suffix, facet, measured(group, metric))
                )
            continue
        rows_key = layout.rows or RUN_KEY
        have = set(known_metrics(group))
        shown = [m for m in metrics if m in have]
        grid = aggregate.build_metric_table(group, rows_key, shown)
        title = "final metrics by " + ("run" if rows_key == RUN_KEY else rows_key)
        title += f", {heading}" if heading else ""
        labels = {m: measured(group, m) for m in shown}
        if len(set(labels.values())) == 1:  # the usual case: every metric of one evaluation
            measures = next(iter(labels.values()))
        else:
            measures = "; ".join(f"{m}: {label}" for m, label in labels.items())
        tables.append(ReportTable(grid, title, "by_" + _slug(rows_key) + suffix, facet, measures))
    return tables


def _facets(
    records: Sequence[RunRecord], keys: Sequence[str]
) -> list[tuple[dict[str, Any], list[RunRecord]]]:
    """``records`` grouped by their values of ``keys`` (one group, ``{}``, when no keys)."""
    groups: dict[str, tuple[dict[str, Any], list[RunRecord]]] = {}
    for record in records:
        values = {k: value_of(record, k) for k in keys}
        groups.setdefault(as_key(values), (values, []))[1].append(record)
    try:
        return [groups[k] for k in sorted(groups, key=lambda k: tuple(groups[k][0].values()))]
    except TypeError:
        return list(groups.values())


def measured(records: Sequence[RunRecord], metric: str) -> str:
    """What ``metric`` of ``records`` measured, from what the runs recorded:
    ``last@2 pgd-2 Linf ε=0.1 test`` (several, joined by ``;``)."""
    labels: list[str] = []
    which = metric.split("_", 1)[0]
    for record in records:
        selection = (record.summary.get("selection") or {}).get(which) or {}
        if selection.get("label"):
            labels.append(str(selection["label"]))
            continue
        final = record.summary.get("final") or {}
        if metric.startswith("test_") and "epoch" in final:
            ev = record.config.get("eval", {})
            settings = [{"name": "pgd", "steps": ev.get("steps"), "restarts": ev.get("restarts")}]
            labels.append(
                evaluation_label(
                    f"epoch {final['epoch']}",
                    settings,
                    ev.get("norm") or record.norm,
                    ev.get("eps") if ev.get("eps") is not None else record.eps,
                    epoch_split(ev.get("n")),
                )
            )
        elif metric in final and "epoch" in final:
            labels.append(f"epoch {final['epoch']} (the last)")
        elif metric == "wall_time_s":
            labels.append("training wall time")
    unique = list(dict.fromkeys(labels))
    return "; ".join(unique[:3]) + (" ..." if len(unique) > 3 else "") if unique else "-"


def metric_title(metric: str) -> str:
    """``robust accuracy`` for the standard metrics, else the name with spaces."""
    for title, candidates in STANDARD_METRICS.items():
        if metric in candidates:
            return title
    return metric.replace("_", " ")


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"
