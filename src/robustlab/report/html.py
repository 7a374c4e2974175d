"""A report as one self-contained HTML page: ``index.html`` that works offline, alone.

Everything is inside the file: the figures as ``data:image/png;base64`` URIs, the stylesheet
inline, no script and no address outside the page (not even a favicon), so the page can be
mailed, archived or opened from a laptop without the run directories. Its parts:

1. the selection and the configuration: what the runs share and what varies between them;
2. the tables (:mod:`.grids`), the best of each column highlighted;
3. the sweep's figures, grouped by their section (:mod:`.figures` draws them);
4. an overview of the runs, each linked to its own section: its settings, final evaluations,
   per-epoch metrics, figures, and links to the other seeds of its cell and to its neighbours.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..rundir import METRIC_ORDER, shown_status
from ..store.sqlite import RunRecord
from ..sweep import aggregate
from ..sweep.aggregate import RUN_KEY, Grid, value_of
from .grids import ReportTable, metric_title
from .labels import format_eps

# Per-epoch metrics shown in a run's section when the run has them, in metrics.jsonl's column
# order (a subset: the page has no room for every loss of every split).
_SHOWN_PER_EPOCH = frozenset(
    [
        "epoch",
        "lr",
        "eps",
        "lam",
        "train_loss",
        "nat_risk",
        "rob_reg",
        "lipschitz",
        "train_nat_acc",
        "train_rob_acc",
        "val_rob_acc",
        "test_nat_acc",
        "test_rob_acc",
        "test_stability",
        "time_s",
    ]
)
EPOCH_COLUMNS = tuple(key for key in METRIC_ORDER if key in _SHOWN_PER_EPOCH)
# Short column headers of the runs' overview (a row must fit a laptop's screen).
_SHORT = {
    "robust accuracy": "robust acc",
    "natural accuracy": "natural acc",
    "perturbation stability": "stability",
}
SELECTION_SHOWN = ("natural_accuracy", "robust_accuracy", "perturbation_stability")

STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --alt: #f6f8fa;
        --accent: #0969da; --best: #dafbe1; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 32px 80px; }
h1 { font-size: 1.7em; margin: 0 0 2px; }
h2 { font-size: 1.3em; margin: 40px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.08em; margin: 24px 0 6px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 0.88em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.muted, .note, figcaption { color: var(--muted); }
.note { font-size: 0.88em; margin: 2px 0 14px; }
nav.toc { margin: 12px 0 0; padding: 8px 0; border-top: 1px solid var(--line);
          border-bottom: 1px solid var(--line); }
nav.toc a { margin-right: 18px; font-weight: 500; }
.notice { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 6px 12px; }
table { border-collapse: collapse; margin: 6px 0 2px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid var(--fg); font-weight: 600; }
tbody tr:nth-child(even) { background: var(--alt); }
td.best { background: var(--best); font-weight: 600; }
.scroll { overflow-x: auto; }
.varying td, .varying th { text-align: left; }
.config { columns: 3 300px; column-gap: 28px; font-size: 0.85em; margin: 6px 0; }
.config div { break-inside: avoid; border-bottom: 1px dotted var(--line); padding: 1px 0; }
.config span { color: var(--muted); }
.figures { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 6px;
         max-width: 100%; }
figure img { display: block; width: 100%; height: auto; }
figcaption { font-size: 0.88em; margin-top: 4px; }
figcaption b { color: var(--fg); }
.chip { display: inline-block; padding: 0 8px; margin: 0 4px 2px 0; border: 1px solid var(--line);
        border-radius: 10px; background: var(--alt); font-size: 0.88em; }
section.run { border-top: 1px solid var(--line); margin-top: 28px; }
.links { font-size: 0.9em; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
"""


class FigureLike(Protocol):
    """What the page needs of a figure (:class:`robustlab.report.figures.FigureFile`)."""

    path: Path
    title: str
    caption: str
    section: str
    run_id: str | None


@dataclass
class Page:
    """Everything the page shows.

    Attributes:
        title: the page's heading (``sweep digits-width-lambda``).
        source: where the runs came from (the store), one line.
        records: the runs, in order.
        common: the config keys every run shares (dotted) and their values.
        varying: the settings that differ, with their values.
        tables: the tables.
        figures: the figures drawn (report-wide ones have ``run_id`` None).
        epochs: each run's per-epoch metrics (by run id).
        notices: lines shown at the top (figures not drawn, unfinished runs).
        metrics: the table metrics, shown per run in the overview.
    """

    title: str
    source: str
    records: list[RunRecord]
    common: dict[str, Any]
    varying: dict[str, list[Any]]
    tables: list[ReportTable]
    figures: Sequence[FigureLike] = ()
    epochs: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


def run_anchor(run_id: str) -> str:
    """The ``id`` of a run's section: ``run-sweep-w8-lam1-s0``."""
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-")


def render_page(page: Page) -> str:
    """The whole page as one HTML string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty icon: a browser would otherwise ask for /favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<title>robustlab report: {_e(page.title)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body><main>",
        f"<h1>{_e(page.title)}</h1>",
        f'<div class="muted">{_e(page.source)}</div>',
        _toc(page),
        *(f'<p class="notice">{_e(line)}</p>' for line in page.notices),
        _configuration(page),
        _tables(page),
        _figures_section(page),
        _runs(page),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _toc(page: Page) -> str:
    items = [("configuration", "Configuration"), ("tables", "Tables")]
    if any(f.run_id is None for f in page.figures):
        items.append(("figures", "Figures"))
    items.append(("runs", f"Runs ({len(page.records)})"))
    links = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in items)
    return f'<nav class="toc">{links}</nav>'


def _configuration(page: Page) -> str:
    out = ['<h2 id="configuration">Configuration</h2>']
    if page.varying:
        rows = "".join(
            f"<tr><th>{_e(k)}</th><td>{', '.join(_e(_value(k, v)) for v in values)}</td></tr>"
            for k, values in page.varying.items()
        )
        out.append("<h3>What varies</h3>")
        out.append(f'<table class="varying"><tbody>{rows}</tbody></table>')
        seeds = sorted({r.seed for r in page.records})
        out.append(f'<p class="note">seeds: {", ".join(map(str, seeds))}</p>')
    else:
        out.append('<p class="note">The runs share every setting (they differ by seed only).</p>')
    items = "".join(
        f"<div><span>{_e(k)}</span> = <code>{_e(_value(k, v))}</code></div>"
        for k, v in page.common.items()
    )
    out.append("<h3>What every run shares</h3>")
    out.append(f'<div class="config">{items}</div>')
    return "\n".join(out)


def _tables(page: Page) -> str:
    out = ['<h2 id="tables">Tables</h2>']
    if not page.tables:
        out.append('<p class="note">No finished run yet: no table.</p>')
    for table in page.tables:
        out.append(f'<h3 id="table-{_e(table.slug)}">{_e(table.title)}</h3>')
        out.append(render_grid(table.grid))
        files = ", ".join(f"<code>{_e(name)}</code>" for name in sorted(table.files()))
        out.append(
            f'<p class="note">{_e(aggregate.grid_note(table.grid))}. '
            f"Measured: {_e(table.measured)}. Files: {files}.</p>"
        )
    return "\n".join(out)


def render_grid(grid: Grid) -> str:
    """A grid as an HTML table: the best of each column highlighted (and bold, for print);
    a table of runs links each run to its section."""
    head = "".join(f"<th>{_e(aggregate.column_label(grid, j))}</th>" for j in range(len(grid.cols)))
    body = []
    for i, cells in enumerate(aggregate.cell_texts(grid)):
        label = _e(aggregate.row_label(grid, i))
        if grid.rows_key == RUN_KEY:
            label = f'<a href="#{run_anchor(str(grid.rows[i]))}">{label}</a>'
        tds = "".join(
            f'<td class="best"><strong>{_e(c)}</strong></td>'
            if (i, j) in grid.best
            else f"<td>{_e(c)}</td>"
            for j, c in enumerate(cells)
        )
        body.append(f"<tr><th>{label}</th>{tds}</tr>")
    corner = _e(aggregate.corner_label(grid))
    return (
        f'<div class="scroll"><table><thead><tr><th>{corner}</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figures_section(page: Page) -> str:
    shared = [f for f in page.figures if f.run_id is None]
    if not shared:
        return ""
    out = ['<h2 id="figures">Figures</h2>']
    for section, figures in _by_section(shared).items():
        out.append(f"<h3>{_e(section[:1].upper() + section[1:])}</h3>")
        out.append(_figure_grid(figures))
    return "\n".join(out)


def _by_section(figures: Sequence[FigureLike]) -> dict[str, list[FigureLike]]:
    groups: dict[str, list[FigureLike]] = {}
    for figure in figures:
        groups.setdefault(figure.section or "other", []).append(figure)
    return groups


def _figure_grid(figures: Sequence[FigureLike]) -> str:
    return '<div class="figures">' + "".join(_figure(f) for f in figures) + "</div>"


def _figure(figure: FigureLike) -> str:
    """One figure, its PNG embedded as a data URI (the page needs no file beside it)."""
    png = Path(figure.path).read_bytes()
    data = base64.b64encode(png).decode("ascii")
    caption = f"<b>{_e(figure.title)}</b>" + (f" {_e(figure.caption)}" if figure.caption else "")
    width = display_width(png)
    style = f' style="width: {width}px"' if width else ""
    return (
        f'<figure{style}><img alt="{_e(figure.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def display_width(png: bytes) -> int | None:
    """The CSS width (pixels at 96 per inch) of a PNG at the size it was drawn: a 6 in figure
    saved at 150 dpi (900 pixels) shows 576 pixels wide, as on paper, two to a row; None when
    the file records no resolution (then it fills its column)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width = int.from_bytes(png[16:20], "big")
    at = 8
    while at + 8 <= len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        kind = png[at + 4 : at + 8]
        if kind == b"pHYs" and png[at + 16] == 1:  # unit 1: pixels per metre
            per_metre = int.from_bytes(png[at + 8 : at + 12], "big")
            return round(width / (per_metre * 0.0254) * 96) if per_metre else None
        if kind == b"IDAT":
            return None
        at += 12 + length
    return None


def _runs(page: Page) -> str:
    keys = list(page.varying)
    out = ['<h2 id="runs">Runs</h2>']
    shown = [_SHORT.get(metric_title(m), metric_title(m)) for m in page.metrics]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["run", "status", *keys, "seed", "epochs", *shown])
    rows = []
    for record in page.records:
        metrics = aggregate.final_metrics(record)
        cells = [
            f'<td><a href="#{run_anchor(record.run_id)}">{_e(record.run_id)}</a></td>',
            f"<td>{_e(_status(record))}</td>",
            *(f"<td>{_e(_value(k, value_of(record, k)))}</td>" for k in keys),
            f"<td>{record.seed}</td>",
            f"<td>{len(page.epochs.get(record.run_id, []))}/{record.epochs}</td>",
            *(f"<td>{_e(_number(m, metrics.get(m)))}</td>" for m in page.metrics),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    out.append(
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    for index, record in enumerate(page.records):
        out.append(_run_section(page, index, record))
    return "\n".join(out)


def _run_section(page: Page, index: int, record: RunRecord) -> str:
    keys = list(page.varying)
    anchor = run_anchor(record.run_id)
    chips = "".join(
        f'<span class="chip">{_e(k)} = {_e(_value(k, value_of(record, k)))}</span>' for k in keys
    )
    chips += f'<span class="chip">seed = {record.seed}</span>'
    out = [
        f'<section class="run" id="{anchor}">',
        f"<h3>{_e(record.run_id)}</h3>",
        f'<div>{chips} <span class="muted">{_e(_status(record))}, '
        f"<code>{_e(record.run_dir)}</code></span></div>",
        _run_links(page, index, record),
        _selection_table(record),
        _epochs_table(page.epochs.get(record.run_id, [])),
    ]
    own = [f for f in page.figures if f.run_id == record.run_id]
    if own:
        out.append(_figure_grid(own))
    out.append("</section>")
    return "\n".join(p for p in out if p)


def _run_links(page: Page, index: int, record: RunRecord) -> str:
    """Links to the other seeds of the run's cell, to its neighbours and to the overview."""
    keys = list(page.varying)
    cell = [_value(k, value_of(record, k)) for k in keys]
    seeds = [
        r
        for r in page.records
        if r.run_id != record.run_id and [_value(k, value_of(r, k)) for k in keys] == cell
    ]
    parts = []
    if seeds:
        links = ", ".join(
            f'<a href="#{run_anchor(r.run_id)}">{_e(r.run_id)}</a> (seed {r.seed})' for r in seeds
        )
        parts.append(f"same setting: {links}")
    if index > 0:
        previous = page.records[index - 1].run_id
        parts.append(f'<a href="#{run_anchor(previous)}">&larr; {_e(previous)}</a>')
    if index + 1 < len(page.records):
        following = page.records[index + 1].run_id
        parts.append(f'<a href="#{run_anchor(following)}">{_e(following)} &rarr;</a>')
    parts.append('<a href="#runs">&uarr; all runs</a>')
    return f'<p class="links">{" · ".join(parts)}</p>'


def _selection_table(record: RunRecord) -> str:
    """The run's final evaluations (last, best, ensemble models) with what each measured."""
    selection = record.summary.get("selection") or {}
    if not selection:
        return ""
    head = "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in SELECTION_SHOWN)
    rows = []
    for which, entry in selection.items():
        cells = "".join(f"<td>{_e(_number(k, entry.get(k)))}</td>" for k in SELECTION_SHOWN)
        label = entry.get("label") or which
        rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    return (
        f"<table><thead><tr><th>final evaluation</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _epochs_table(epochs: Sequence[Mapping[str, Any]]) -> str:
    if not epochs:
        return '<p class="note">No epoch finished.</p>'
    columns = [c for c in EPOCH_COLUMNS if any(c in e for e in epochs)]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(_number(c, e.get(c)))}</td>" for c in columns) + "</tr>"
        for e in epochs
    )
    return (
        f"<details><summary>per-epoch metrics ({len(epochs)} epochs)</summary>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
        "</table></div></details>"
    )


def _status(record: RunRecord) -> str:
    return shown_status(record.status, record.pid, record.host)


def _number(key: str, value: Any) -> str:
    """Accuracies and stabilities in percent, other floats in 4 digits, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if any(w in key for w in ("acc", "stability")) and 0.0 <= value <= 1.0:
            return f"{100 * value:.1f}%"
        return f"{value:.4g}"
    return str(value)


def _value(key: str, value: Any) -> str:
    """A setting as a person reads it: ``8/255`` for budgets, ``0.05``, ``[1.0, 1.5]``."""
    if isinstance(value, float) and key.endswith((".eps", ".alpha", "eps_min", "eps_max")):
        return format_eps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "-"
    if value == "":
        return '""'
    return str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
