"""``robustlab report``'s work: check everything (:func:`plan_report`, writes nothing), then
write the tables, the figures and the page (:func:`write_report`).

Every mistake a user can make (a selection that is empty, an axis that does not vary, an unknown
metric, an output folder that is a file) is found by :func:`plan_report`, before anything
exists on disk. The figures need matplotlib; without it the report is the tables, with a
one-line notice (:func:`draw_figures`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError
from ..store import ResultsStore
from ..sweep.aggregate import final_metrics
from .grids import Layout, ReportTable, build_tables, choose_layout, choose_metrics
from .selection import Selection, common_config, select_runs, varying_keys

# What ``--format`` prints on stdout (the files of every table are written whatever it is).
FORMATS = ("html", "md", "csv", "latex", "json")
DEFAULT_ROOT = Path("reports")
NO_MATPLOTLIB = (
    "matplotlib is not installed: the report has its tables but no figures (pip install matplotlib)"
)


@dataclass
class ReportPlan:
    """A report checked and laid out, nothing written yet."""

    store: ResultsStore
    selection: Selection
    layout: Layout
    metrics: list[str]
    tables: list[ReportTable]
    out: Path
    fmt: str


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: every file (absolute), the page, the notices."""

    out: Path
    files: list[Path] = field(default_factory=list)
    index: Path | None = None
    figures: list[Any] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def plan_report(
    store: ResultsStore,
    targets: Sequence[str],
    where: Sequence[tuple[str, Any]] = (),
    *,
    rows: str | None = None,
    cols: str | None = None,
    metrics: Sequence[str] = (),
    out: str | Path | None = None,
    fmt: str = "html",
) -> ReportPlan:
    """The runs, axes, metrics and tables of a report and where it goes; writes nothing.

    Raises:
        RunError: no run matches the targets and filters.
        ConfigError: an axis that does not vary, an unknown metric, an output that is a file.
    """
    if fmt not in FORMATS:
        raise ConfigError("--format", fmt, f"one of {', '.join(FORMATS)}")
    selection = select_runs(store, targets, where)
    finished = [r for r in selection.records if final_metrics(r)]
    layout = choose_layout(finished or selection.records, rows, cols)
    chosen = choose_metrics(finished, metrics)
    out_dir = Path(out) if out is not None else DEFAULT_ROOT / selection.slug
    check_output_dir(out_dir)
    tables = build_tables(finished, layout, chosen)
    return ReportPlan(store, selection, layout, chosen, tables, out_dir, fmt)


def check_output_dir(path: Path) -> None:
    """Raise :class:`ConfigError` if ``path`` cannot be (or become) a folder we can write."""
    if path.exists() and not path.is_dir():
        raise ConfigError("--out", str(path), "is a file; give a directory for the report")
    for parent in [path, *path.absolute().parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError("--out", str(path), f"{str(parent)!r} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError("--out", str(path), f"{str(parent)!r} is not writable")
            return


def draw_figures(plan: ReportPlan) -> tuple[list[Any], str | None]:
    """The figures of the runs (:func:`robustlab.report.figures.render_figures`), and a notice
    when they cannot be drawn (no matplotlib: the report degrades to its tables)."""
    try:
        import matplotlib  # noqa: F401  (only to know whether figures can be drawn)
    except ImportError:
        return [], NO_MATPLOTLIB
    from .figures import render_figures

    return list(render_figures(plan.store, plan.selection.records, plan.out)), None


def write_report(plan: ReportPlan, log: Callable[[str], None] = lambda _: None) -> ReportResult:
    """Write the tables (Markdown, CSV, LaTeX); for ``html`` also the figures and ``index.html``;
    for ``json`` also ``report.json``."""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out.resolve())
    records = plan.selection.records
    unfinished = [r for r in records if not final_metrics(r)]
    if unfinished:
        result.notices.append(
            f"{len(unfinished)} of {len(records)} runs have not finished: "
            "the tables count the finished ones"
        )
    for table in plan.tables:
        for name, text in table.files().items():
            path = out / name
            path.write_text(text)
            result.files.append(path.resolve())
    if plan.fmt == "html":
        figures, notice = draw_figures(plan)
        if notice:
            result.notices.append(notice)
        result.figures = figures
        result.files += [Path(f.path).resolve() for f in figures]
        result.index = _write_page(plan, figures, result.notices)
        result.files.append(result.index)
    elif plan.fmt == "json":
        path = out / "report.json"
        result.files.append(path.resolve())
        path.write_text(json.dumps(report_json(plan, result), indent=2) + "\n")
    for line in result.notices:
        log(line)
    return result


def _write_page(plan: ReportPlan, figures: Sequence[Any], notices: Sequence[str]) -> Path:
    from .html import Page, render_page

    records = plan.selection.records
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = Page(
        title=plan.selection.title,
        source=f"{len(records)} runs from {plan.store.path.resolve()}, "
        f"robustlab {__version__}, {when}",
        records=records,
        common=common_config(records),
        varying=varying_keys(records),
        tables=plan.tables,
        figures=figures,
        epochs={r.run_id: plan.store.epochs(r.run_id) for r in records},
        notices=list(notices),
        metrics=plan.metrics,
    )
    path = plan.out / "index.html"
    path.write_text(render_page(page), encoding="utf-8")
    return path.resolve()


def report_json(plan: ReportPlan, result: ReportResult) -> dict[str, Any]:
    """The report as one JSON object: the selection, the layout, the tables and the files."""
    return {
        "title": plan.selection.title,
        "store": str(plan.store.path.resolve()),
        "out": str(result.out),
        "runs": [r.run_id for r in plan.selection.records],
        "rows": plan.layout.rows,
        "cols": plan.layout.cols,
        "split_by": plan.layout.facets,
        "metrics": plan.metrics,
        "tables": [t.to_dict() for t in plan.tables],
        "files": [str(f) for f in result.files],
        "notices": result.notices,
    }


def printed(plan: ReportPlan, result: ReportResult) -> str:
    """What ``robustlab report`` prints on stdout for ``plan.fmt``."""
    if plan.fmt == "html":
        return str(result.index)
    if plan.fmt == "json":
        return json.dumps(report_json(plan, result), indent=2)
    from ..sweep import aggregate

    renderer = aggregate.RENDERERS[plan.fmt]
    comment = {"md": "### ", "csv": "# ", "latex": "% "}[plan.fmt]
    blocks = []
    for table in plan.tables:
        heading = comment + table.title
        # One CSV table prints as bare CSV, so `robustlab report ... --format csv > x.csv` parses.
        if plan.fmt == "csv" and len(plan.tables) == 1:
            heading = ""
        text = renderer(table.grid)
        blocks.append(
            f"{heading}\n\n{text}"
            if heading and plan.fmt == "md"
            else f"{heading}\n{text}".lstrip("\n")
        )
    return "\n\n".join(blocks) if blocks else "(no finished runs: no table)"
