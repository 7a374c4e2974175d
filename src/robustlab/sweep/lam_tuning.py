"""λ-tuning accounting (Wu et al. 2021, section 5.4 and Table 3): what each way of choosing λ
for a wide model achieves and what it costs in device-hours.

Wu et al. compare, per width, three strategies (their Table 3):

* **manual**: an exhaustive λ grid at that width (their 6 trials, λ = 6 ... 21); the λ kept is
  the best by a selection metric, and the cost is every run of the grid;
* **war**: WAR (Algorithm 1) at that width, its λ the final one it reached; the cost is the WAR
  run plus the calibration: the λ grid on the thin model that gave ζ (their WRN-34-0.5, "18 GPU
  hours in total");
* **fixed** ("N/A"): the thin model's best λ used directly (no tuning at this width); the cost is
  that run plus the same calibration.

:func:`lam_tuning` computes these rows from run records (constant-λ runs form the grids,
``method.lam_schedule = "war"`` runs the WAR rows), the wall times their runs recorded (``run.json``
``wall_time_s``: training and the final evaluations, all resumed parts together) and the
device they trained on (GPU-hours for CUDA runs, CPU-hours otherwise). Seeds are cells of one λ:
the selection compares the means over seeds, the cost counts every run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError
from ..store.sqlite import RunRecord
from .aggregate import Stat, final_metrics, format_stat, same_value, value_of

WIDTH_KEY = "model.width"
DEFAULT_SELECT = "val_rob_acc"  # the last epoch's validation robust accuracy: no test peeking
DEFAULT_METRIC = "last_robust_accuracy"  # the last model on the whole test set
STRATEGIES = ("manual", "fixed", "war")


@dataclass(frozen=True)
class RunCost:
    """What one run cost: its wall time in seconds (None if unrecorded) and its device type."""

    seconds: float | None
    device: str  # "cuda", "cpu" or "unknown"


@dataclass(frozen=True)
class TuningRow:
    """One strategy at one width.

    Attributes:
        width: the width (``model.width``).
        strategy: ``manual``, ``fixed`` or ``war`` (see the module docstring).
        lam: the λ chosen (manual, fixed) or WAR's final λ, mean over seeds.
        lam_std: WAR's final λ's sample std over seeds (None otherwise or for one seed).
        metric: the reported metric of the chosen runs, mean ± std over seeds.
        seconds: device-seconds counted for the strategy (calibration included for war and
            fixed); None when a counted run has no recorded wall time.
        calibration_seconds: the part of ``seconds`` spent on the thin model's grid.
        runs: runs counted in ``seconds`` (calibration included).
        device: ``GPU``, ``CPU`` or ``mixed``/``unknown``: what the hours are hours of.
        tried: the λ values of the grid (manual), in increasing order.
    """

    width: Any
    strategy: str
    lam: float
    lam_std: float | None
    metric: Stat
    seconds: float | None
    calibration_seconds: float
    runs: int
    device: str
    tried: list[float] = field(default_factory=list)

    @property
    def hours(self) -> float | None:
        return None if self.seconds is None else self.seconds / 3600


@dataclass
class LamTuningTable:
    """The rows of every width, and what they were computed from."""

    rows: list[TuningRow]
    select: str
    metric: str
    calibration_width: Any = None
    calibration_lam: float | None = None

    def speedup(self, row: TuningRow) -> float | None:
        """Manual tuning's cost at the row's width divided by the row's cost (Wu et al.: WAR
        "~4 times speedup for WRN-34-10")."""
        manual = next(
            (r for r in self.rows if r.strategy == "manual" and same_value(r.width, row.width)),
            None,
        )
        if manual is None or manual.seconds is None or not row.seconds:
            return None
        return manual.seconds / row.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "select": self.select,
            "metric": self.metric,
            "calibration": {"width": self.calibration_width, "lam": self.calibration_lam},
            "rows": [
                {
                    "width": r.width,
                    "strategy": r.strategy,
                    "lam": r.lam,
                    "lam_std": r.lam_std,
                    "metric": vars(r.metric),
                    "seconds": r.seconds,
                    "hours": r.hours,
                    "calibration_seconds": r.calibration_seconds,
                    "runs": r.runs,
                    "device": r.device,
                    "speedup": self.speedup(r),
                    "tried": r.tried,
                }
                for r in self.rows
            ],
        }


def default_cost(record: RunRecord) -> RunCost:
    """The cost the record itself carries: ``wall_time_s`` of its summary (ingested runs) and
    the config's device (``auto`` is unknown)."""
    seconds = record.summary.get("wall_time_s")
    device = str(record.config.get("device", "unknown"))
    return RunCost(
        float(seconds) if isinstance(seconds, int | float) else None,
        device if device in ("cpu", "cuda") else "unknown",
    )


def read_costs(records: Sequence[RunRecord]) -> dict[str, RunCost]:
    """Each run's cost from its ``run.json`` (``wall_time_s`` and the ``device`` it trained on:
    ``cuda:0`` is a GPU), where the directory is still there; else what the record carries."""
    costs = {}
    for record in records:
        cost = default_cost(record)
        try:
            info = json.loads((Path(record.run_dir) / "run.json").read_text())
        except (OSError, ValueError):
            info = {}
        seconds = info.get("wall_time_s", cost.seconds)
        device = str(info.get("device", cost.device)).split(":", 1)[0]
        costs[record.run_id] = RunCost(
            float(seconds) if isinstance(seconds, int | float) else None,
            device if device in ("cpu", "cuda") else "unknown",
        )
    return costs


def _is_war(record: RunRecord) -> bool:
    return value_of(record, "method.lam_schedule") == "war"


def _by_width(records: Sequence[RunRecord]) -> dict[str, tuple[Any, list[RunRecord]]]:
    groups: dict[str, tuple[Any, list[RunRecord]]] = {}
    for record in records:
        width = value_of(record, WIDTH_KEY)
        key = json.dumps(float(width) if isinstance(width, int | float) else width)
        groups.setdefault(key, (width, []))[1].append(record)
    return groups


def _by_lam(records: Sequence[RunRecord]) -> list[tuple[float, list[RunRecord]]]:
    cells: list[tuple[float, list[RunRecord]]] = []
    for record in records:
        lam = float(value_of(record, "method.lam"))
        cell = next((c for c in cells if same_value(c[0], lam)), None)
        if cell is None:
            cells.append((lam, [record]))
        else:
            cell[1].append(record)
    return sorted(cells, key=lambda c: c[0])


def _stat(records: Sequence[RunRecord], metric: str) -> Stat:
    values = [final_metrics(r)[metric] for r in records if metric in final_metrics(r)]
    if not values:
        raise RunError(f"metric {metric!r}: none of runs {', '.join(r.run_id for r in records)}")
    return Stat.of(values)


def _cost(records: Sequence[RunRecord], costs: Mapping[str, RunCost]) -> tuple[float | None, str]:
    """The runs' total seconds (None if any is unrecorded) and what device they used."""
    entries = [costs.get(r.run_id, RunCost(None, "unknown")) for r in records]
    known = [e.seconds for e in entries if e.seconds is not None]
    seconds = sum(known) if len(known) == len(entries) else None
    devices = {e.device for e in entries}
    device = {"cuda": "GPU", "cpu": "CPU"}.get(next(iter(devices)), "unknown")
    return seconds, device if len(devices) == 1 else "mixed"


def _best_lam(
    cells: Sequence[tuple[float, list[RunRecord]]], select: str
) -> tuple[float, list[RunRecord]]:
    """The cell with the highest mean of ``select`` (ties: the smaller λ)."""
    scored = [(_stat(runs, select).mean, -lam, lam, runs) for lam, runs in cells]
    _, _, lam, runs = max(scored, key=lambda s: (s[0], s[1]))
    return lam, runs


def _check_metric(records: Sequence[RunRecord], name: str, flag: str) -> None:
    known = sorted({m for r in records for m in final_metrics(r)})
    if name not in known:
        raise ConfigError(
            flag, name, f"not a final metric of these runs; known: {', '.join(known) or 'none'}"
        )


def lam_tuning(
    records: Sequence[RunRecord],
    costs: Mapping[str, RunCost] | None = None,
    *,
    select: str = DEFAULT_SELECT,
    metric: str = DEFAULT_METRIC,
    calibration_width: Any = None,
) -> LamTuningTable:
    """Wu et al.'s Table 3 from run records (a pure function of its arguments).

    Args:
        records: the runs: constant-λ grids at one or more widths and WAR runs (only
            ``finished`` ones count; others are ignored).
        costs: each run's :class:`RunCost` by run id (default: what the records carry,
            :func:`default_cost`; :func:`read_costs` reads the run directories).
        select: the final metric the manual grid's λ is chosen by (mean over seeds, highest).
        metric: the final metric reported for each row.
        calibration_width: the thin model's width whose grid calibrated WAR's ζ (Wu et al.:
            0.5); its best λ gives the ``fixed`` rows and its grid's cost is added to the
            ``war`` and ``fixed`` rows. None: no calibration (no ``fixed`` rows, WAR rows count
            their own runs only).

    Raises:
        RunError: no finished run, or the calibration width has no constant-λ grid.
        ConfigError: ``select`` or ``metric`` is not a final metric of the runs.
    """
    finished = [r for r in records if r.status == "finished" and final_metrics(r)]
    if not finished:
        raise RunError(f"no finished runs among the {len(records)} given")
    _check_metric(finished, select, "--select")
    _check_metric(finished, metric, "--metric")
    costs = costs if costs is not None else {r.run_id: default_cost(r) for r in finished}
    groups = _by_width(finished)
    calibration = _Calibration()
    if calibration_width is not None:
        found = next(
            (runs for width, runs in groups.values() if same_value(width, calibration_width)),
            None,
        )
        grid = [r for r in found or [] if not _is_war(r)]
        if not grid:
            raise RunError(
                f"--calibration-width {calibration_width}: no finished constant-λ runs at "
                f"{WIDTH_KEY}={calibration_width} (the thin model's λ grid)"
            )
        lam, _ = _best_lam(_by_lam(grid), select)
        calibration = _Calibration(lam, _cost(grid, costs)[0], len(grid))
    rows: list[TuningRow] = []
    ordered = sorted(groups.values(), key=lambda g: _sort_key(g[0]))
    for width, runs in ordered:
        grid = [r for r in runs if not _is_war(r)]
        war = [r for r in runs if _is_war(r)]
        cells = _by_lam(grid)
        is_calibration = calibration_width is not None and same_value(width, calibration_width)
        if cells:
            lam, chosen = _best_lam(cells, select)
            seconds, device = _cost(grid, costs)
            rows.append(
                TuningRow(
                    width,
                    "manual",
                    lam,
                    None,
                    _stat(chosen, metric),
                    seconds,
                    0.0,
                    len(grid),
                    device,
                    [c[0] for c in cells],
                )
            )
        if calibration.lam is not None and not is_calibration:
            fixed = next((rs for lam, rs in cells if same_value(lam, calibration.lam)), None)
            if fixed:
                stat = _stat(fixed, metric)
                rows.append(
                    calibration.row(width, "fixed", calibration.lam, None, stat, fixed, costs)
                )
        if war:
            finals = [final_metrics(r).get("lam") for r in war]
            lams = [float(v) for v in finals if v is not None]
            if not lams:
                raise RunError(f"WAR runs at width {width} recorded no final λ ('lam')")
            spread = statistics.stdev(lams) if len(lams) > 1 else None
            stat = _stat(war, metric)
            rows.append(
                calibration.row(width, "war", statistics.fmean(lams), spread, stat, war, costs)
            )
    return LamTuningTable(rows, select, metric, calibration_width, calibration.lam)


@dataclass(frozen=True)
class _Calibration:
    """The thin model's λ grid: its best λ, its cost (None: unrecorded) and its run count."""

    lam: float | None = None
    seconds: float | None = 0.0
    runs: int = 0

    def row(
        self,
        width: Any,
        strategy: str,
        lam: float,
        lam_std: float | None,
        stat: Stat,
        runs: Sequence[RunRecord],
        costs: Mapping[str, RunCost],
    ) -> TuningRow:
        """A row whose cost is its own runs' plus the calibration's."""
        own, device = _cost(runs, costs)
        total = None if own is None or self.seconds is None else own + self.seconds
        return TuningRow(
            width,
            strategy,
            lam,
            lam_std,
            stat,
            total,
            self.seconds or 0.0,
            len(runs) + self.runs,
            device,
        )


def _sort_key(width: Any) -> tuple[int, Any]:
    return (0, float(width)) if isinstance(width, int | float) else (1, str(width))


# -- rendering -------------------------------------------------------------------------------


def _hours_unit(table: LamTuningTable) -> str:
    devices = {r.device for r in table.rows}
    return f"{devices.pop()}-hours" if len(devices) == 1 else "device-hours"


def _cells(table: LamTuningTable) -> tuple[list[str], list[list[str]]]:
    percent = all(0.0 <= r.metric.mean <= 1.0 for r in table.rows) and any(
        word in table.metric for word in ("acc", "stability")
    )
    unit = _hours_unit(table)
    headers = ["width", "tuning", "λ", f"{table.metric}{' (%)' if percent else ''}", unit]
    headers += ["runs", "speedup"]
    rows = []
    for r in table.rows:
        lam = f"{r.lam:.4g}" + (f" ± {r.lam_std:.2g}" if r.lam_std is not None else "")
        hours = "-" if r.hours is None else f"{r.hours:.3g}"
        if r.calibration_seconds and r.hours is not None:
            hours += f" (incl. {r.calibration_seconds / 3600:.3g} calibration)"
        speedup = table.speedup(r)
        rows.append(
            [
                _width_text(r.width),
                {"fixed": "N/A (thin λ)"}.get(r.strategy, r.strategy),
                lam,
                format_stat(r.metric, percent),
                hours,
                str(r.runs),
                "-" if speedup is None or r.strategy == "manual" else f"{speedup:.2g}x",
            ]
        )
    return headers, rows


def _width_text(width: Any) -> str:
    return f"{width:g}" if isinstance(width, float) else str(width)


def _footer(table: LamTuningTable) -> str:
    text = (
        f"manual: λ of the grid with the highest mean {table.select}; war: final λ (mean over "
        f"seeds); {table.metric}: mean ± std (runs) over seeds; hours: every run counted"
    )
    if table.calibration_lam is not None:
        text += (
            f"; calibration: the λ grid at width {_width_text(table.calibration_width)} "
            f"(best λ {table.calibration_lam:g}), added to war and N/A"
        )
    return text


def render_markdown(table: LamTuningTable) -> str:
    headers, rows = _cells(table)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, "", _footer(table)])


def render_csv(table: LamTuningTable) -> str:
    import csv
    import io

    headers, rows = _cells(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue().rstrip("\n")


RENDERERS: dict[str, Callable[[LamTuningTable], str]] = {
    "md": render_markdown,
    "csv": render_csv,
    "json": lambda table: json.dumps(table.to_dict(), indent=2),
}
