"""What every report figure shares: the registry, the selection's data, the colours, the grouping
of runs into series (one per setting, its seeds pooled) and the mean ± std bands.

A figure is a function ``draw(selection, out_dir) -> list[FigureFile]`` registered in
:data:`FIGURES`. It reads the runs' data through the :class:`Selection` (each table read once per
run, shared by every figure) and draws only when the runs have what it needs: a figure whose
data no run has returns ``[]``, so a report of clean runs simply has no robust-regularization
figure. Figures are drawn with matplotlib's object-oriented API off-screen, as the diagnostics'
figures are (:mod:`robustlab.diagnostics._plot`).

Colours: one tab10 colour per value of the series' colour key (the width when the widths
differ, else the first config key that differs), assigned in the sorted order of the values in
the selection, so the same width has the same colour in every figure of one report. The second
differing key (λ when width and λ both vary, as in Wu et al.'s Fig. 3) sets the line style.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ...registry import Registry
from ...store.sqlite import RunRecord
from ..labels import format_eps
from ..selection import NOT_AXES as SELECTION_NOT_AXES
from ..selection import flat_config

# matplotlib's tab10 by name (not "C0".."C9", which follow a user's rcParams colour cycle).
TAB10 = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")

# The tables' NOT_AXES, and the tag: a table may have a row per tag, a figure's lines do not.
NOT_AXES = SELECTION_NOT_AXES | {"tag"}
# Keys preferred as the colour, then the line style, of a series, in this order (Wu et al.
# Fig. 3: one colour per width, one line style per λ).
PREFERRED_AXES = ("model.width", "method.lam", "attack.eps", "method.name", "model.name")
SHORT_NAMES = {
    "model.width": "width",
    "model.depth": "depth",
    "model.name": "model",
    "method.lam": "λ",
    "method.name": "method",
    "method.zeta": "WAR ζ",
    "method.lam_schedule": "λ schedule",
    "attack.eps": "ε",
    "attack.eps_schedule": "ε schedule",
    "train.schedule": "LR schedule",
}


@dataclass
class FigureFile:
    """One figure written by :func:`render_figures`.

    Attributes:
        path: the PNG.
        title: what it shows, one line (the HTML page's heading).
        caption: how to read it (what is compared, over how many seeds, which paper figure).
        section: the group it belongs to (``"training curves"``, ``"diagnostics"``, ...).
        run_id: the run it is about, or ``None`` for a figure of the whole selection.
        legend: ``{series label: colour}`` (hex) of what the figure's legend shows; the same
            label has the same colour in every figure of one :func:`render_figures` call.
    """

    path: Path
    title: str
    caption: str
    section: str
    run_id: str | None = None
    legend: dict[str, str] = field(default_factory=dict)


class RunData(Protocol):
    """Where a selection's per-run tables come from: a :class:`~robustlab.store.ResultsStore`,
    or anything with the same three readers (a run directory, for ``show`` without a store)."""

    def epochs(self, run_id: str) -> list[dict[str, Any]]: ...

    def iterations(self, run_id: str) -> list[dict[str, Any]]: ...

    def diagnostics(
        self, run_id: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]: ...


FigureFunction = Callable[["Selection", Path], list[FigureFile]]
FIGURES: Registry[FigureFunction] = Registry("figure", "--figures")
# Names in the order they were registered: a section's figures are drawn in reading order.
ORDER: list[str] = []

# Sections of the report, in the order a reader goes through them.
SECTIONS = ("training curves", "schedules", "per-iteration tracking", "diagnostics", "phase")


def register_figure(name: str, section: str) -> Callable[[FigureFunction], FigureFunction]:
    """Register ``draw(selection, out_dir) -> list[FigureFile]`` as figure ``name``."""
    if section not in SECTIONS:
        raise ValueError(f"figure {name!r}: section {section!r} is not one of {SECTIONS}")
    ORDER.append(name)
    return FIGURES.register(name, section=section)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def sort_key(value: Any) -> tuple[int, Any]:
    """Orders values of one key: ``None`` first, numbers by size, anything else as text."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value))


def colour_map(values: Iterable[Any], offset: int = 0) -> dict[Any, str]:
    """One tab10 colour per distinct value, in sorted order from the ``offset``-th colour
    (wrapping after ten)."""
    distinct = sorted({_hashable(v) for v in values}, key=sort_key)
    return {value: TAB10[(offset + i) % len(TAB10)] for i, value in enumerate(distinct)}


def format_value(key: str, value: Any) -> str:
    """A config value as a legend shows it: budgets as they are written (8/255, 0.2)."""
    if isinstance(value, float):
        return format_eps(value) if key.endswith("eps") else f"{value:g}"
    return str(value)


def axis_label(key: str, value: Any) -> str:
    return f"{SHORT_NAMES.get(key, key)} {format_value(key, value)}"


@dataclass
class Series:
    """The runs of one setting (every varying key equal; seeds pooled) and how it is drawn."""

    values: dict[str, Any]
    records: list[RunRecord]
    colour: str
    linestyle: str
    label: str

    @property
    def seeds(self) -> int:
        return len(self.records)


@dataclass
class Band:
    """Mean and population std over seeds of one quantity against x (``n`` seeds at each x)."""

    x: list[float]
    mean: list[float]
    std: list[float]
    n: list[int] = field(default_factory=list)


class Selection:
    """The runs a set of figures is drawn from, with their data read once, their varying config
    keys, their series and their colours.

    Args:
        source: the store (or a :class:`RunData`) holding the runs' epochs, iterations and
            diagnostics.
        records: the runs, as the store lists them.
    """

    def __init__(self, source: RunData, records: Sequence[RunRecord]) -> None:
        self.source = source
        self.records = list(records)
        self._epochs: dict[str, list[dict[str, Any]]] = {}
        self._iterations: dict[str, list[dict[str, Any]]] = {}
        self._diagnostics: dict[str, list[dict[str, Any]]] = {}
        self.configs = {r.run_id: flat_config(r, open_options=False) for r in self.records}
        self.axes = self._varying_keys()
        self.colour_key = self.axes[0] if self.axes else None
        self.style_key = self.axes[1] if len(self.axes) > 1 else None
        self.colours = self._allocate_colours()

    # -- data, read once per run --------------------------------------------------------------

    def epochs(self, record: RunRecord) -> list[dict[str, Any]]:
        if record.run_id not in self._epochs:
            self._epochs[record.run_id] = self.source.epochs(record.run_id)
        return self._epochs[record.run_id]

    def iterations(self, record: RunRecord) -> list[dict[str, Any]]:
        if record.run_id not in self._iterations:
            self._iterations[record.run_id] = self.source.iterations(record.run_id)
        return self._iterations[record.run_id]

    def diagnostics(self, record: RunRecord) -> list[dict[str, Any]]:
        if record.run_id not in self._diagnostics:
            self._diagnostics[record.run_id] = self.source.diagnostics(record.run_id)
        return self._diagnostics[record.run_id]

    def has_epoch_metric(self, key: str) -> bool:
        """Whether some run has a non-null ``key`` in some epoch."""
        return any(m.get(key) is not None for r in self.records for m in self.epochs(r))

    # -- colours and series -------------------------------------------------------------------

    def colour(self, key: str, value: Any) -> str:
        """The colour of ``value`` of ``key`` (``"model.width"``, ``"method.lam"``, or any
        varying key) in every figure of this selection."""
        return self.colours.get(key, {}).get(_hashable(value), TAB10[0])

    def _allocate_colours(self) -> dict[str, dict[Any, str]]:
        """Colours for the values of each varying key, the keys taking tab10's colours in turn
        (widths first, then λ, ...), so a colour means one thing in the whole report: a width's
        blue is never also a λ's. A key that does not vary has one value, drawn in blue."""
        colours: dict[str, dict[Any, str]] = {}
        offset = 0
        for key in self.axes:
            colours[key] = colour_map((c.get(key) for c in self.configs.values()), offset)
            offset += len(colours[key])
        for key in ("model.width", "method.lam"):
            colours.setdefault(key, colour_map(c.get(key) for c in self.configs.values()))
        return colours

    def _varying_keys(self) -> list[str]:
        """Config keys with more than one value in the selection (seeds and where the runs ran
        excluded), the preferred axes first. A key some runs lack (recorded by an older
        robustlab) varies only if the runs that have it differ."""
        keys: set[str] = set()
        for config in self.configs.values():
            keys.update(config)
        varying = [
            k
            for k in keys
            if k not in NOT_AXES
            and len({_hashable(c[k]) for c in self.configs.values() if k in c}) > 1
        ]
        order = {k: i for i, k in enumerate(PREFERRED_AXES)}
        return sorted(varying, key=lambda k: (order.get(k, len(order)), k))

    def series(self, records: Iterable[RunRecord] | None = None) -> list[Series]:
        """The runs grouped by their values of the varying keys, in sorted order; each series
        coloured by its colour key's value and styled by its style key's value."""
        groups: dict[tuple[Any, ...], list[RunRecord]] = {}
        for record in self.records if records is None else records:
            config = self.configs[record.run_id]
            groups.setdefault(tuple(_hashable(config.get(k)) for k in self.axes), []).append(record)
        styles = (
            {v: LINESTYLES[i % len(LINESTYLES)] for i, v in enumerate(self.colours[self.style_key])}
            if self.style_key
            else {}
        )
        out = []
        for key in sorted(groups, key=lambda t: tuple(sort_key(v) for v in t)):
            members = groups[key]
            values = {k: self.configs[members[0].run_id].get(k) for k in self.axes}
            colour = (
                self.colour(self.colour_key, values[self.colour_key])
                if self.colour_key
                else TAB10[0]
            )
            style = styles.get(_hashable(values[self.style_key]), "-") if self.style_key else "-"
            label = ", ".join(axis_label(k, v) for k, v in values.items()) or _run_label(members)
            out.append(Series(values, members, colour, style, label))
        return out

    def seeds_text(self, series: Sequence[Series] | None = None) -> str:
        """``"mean ± std over 2 seeds"`` (or the range of seed counts), ``"one run"``."""
        counts = sorted({s.seeds for s in (self.series() if series is None else series)})
        if not counts or counts == [1]:
            return "one run per setting" if len(self.records) > 1 else "one run"
        shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        return f"mean ± std over {shown} seeds"

    def run_id(self) -> str | None:
        """The run every figure is about when the selection is one run; ``None`` otherwise."""
        return self.records[0].run_id if len(self.records) == 1 else None

    def title_suffix(self) -> str:
        """What the runs share, for titles: ``digits, mlp, trades`` (keys that do not vary)."""
        if len(self.records) == 1:
            record = self.records[0]
            lam = "" if record.lam is None else f" λ {format_value('method.lam', record.lam)}"
            return (
                f"{_run_label([record])}: {record.dataset}, {record.model} width {record.width}, "
                f"{record.method}{lam}"
            )
        parts = []
        for key in ("data.name", "model.name", "method.name"):
            if key not in self.axes and self.records:
                parts.append(str(self.configs[self.records[0].run_id].get(key)))
        return ", ".join(parts)


def _run_label(records: list[RunRecord]) -> str:
    record = records[0]
    return record.sweep_run or record.run_id


def band(rows_by_run: Iterable[Iterable[tuple[float, float | None]]]) -> Band:
    """Mean and population std over runs of ``(x, value)`` pairs, at each x some run has a
    finite value (runs of one setting share their epochs or tracked iterations)."""
    at: dict[float, list[float]] = {}
    for rows in rows_by_run:
        for x, value in rows:
            if value is not None and math.isfinite(value):
                at.setdefault(x, []).append(float(value))
    xs = sorted(at)
    means, stds, ns = [], [], []
    for x in xs:
        values = at[x]
        mean = sum(values) / len(values)
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)))
        ns.append(len(values))
    return Band(xs, means, stds, ns)


def draw_band(
    axis: Any, data: Band, series: Series, *, label: str | None = None, **kw: Any
) -> None:
    """The mean as a line (markers when there are few points) and ± std as a shaded band."""
    if not data.x:
        return
    marker = kw.pop("marker", "o" if len(data.x) <= 12 else None)
    axis.plot(
        data.x,
        data.mean,
        color=series.colour,
        linestyle=series.linestyle,
        marker=marker,
        markersize=3.5,
        linewidth=1.4,
        label=series.label if label is None else label,
        **kw,
    )
    if any(n > 1 for n in data.n):
        low = [m - s for m, s in zip(data.mean, data.std, strict=True)]
        high = [m + s for m, s in zip(data.mean, data.std, strict=True)]
        axis.fill_between(data.x, low, high, color=series.colour, alpha=0.15, linewidth=0)


def legend_below(figure: Any, axes: Sequence[Any], title: str | None = None) -> dict[str, str]:
    """One legend for the whole figure, under the panels, when there is more than one entry
    (a legend inside a panel hides curves; one per panel repeats itself), as many columns as
    the figure's width holds. Returns ``{label: colour}`` (hex) of its entries."""
    from matplotlib.colors import to_hex

    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels and not label.startswith("_"):
                handles.append(handle)
                labels.append(label)
    if len(labels) > 1 or (labels and title):
        longest = max(len(label) for label in labels)
        per_row = max(1, int(figure.get_figwidth() / (0.6 + 0.075 * longest)))
        figure.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=min(len(labels), per_row, 4),
            fontsize=8,
            title=title,
            title_fontsize=8,
            frameon=False,
        )
    colours = {}
    for handle, label in zip(handles, labels, strict=True):
        colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
        colours[label] = to_hex(colour)
    return colours
