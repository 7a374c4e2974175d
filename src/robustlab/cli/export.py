"""``robustlab export TARGET... [--where KEY=VALUE] [--format csv|json] [--out FILE]``.

The per-epoch metrics of many runs as one long table for pandas users: one row per run x
epoch, with the columns ``run_id``, ``sweep``, ``status``, ``epoch``, every config key (dotted:
``model.width``, ``method.lam``, ``attack.eps``, ``seed``, ...) and every per-epoch metric under
its ``metrics.jsonl`` name (``test_rob_acc``, ``nat_risk``, ``lipschitz``, ...)::

    robustlab export wu2021-table1-tiny > epochs.csv
    pandas.read_csv("epochs.csv").groupby(["model.width", "method.lam", "epoch"]).test_rob_acc.mean()

TARGET selects runs as ``robustlab report`` does (:mod:`robustlab.report.selection`). The table
goes to stdout unless ``--out FILE``; a file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from .._io import atomic_write_bytes
from ..errors import ConfigError, DiskFullError, RunError
from ..report.selection import flat_config, select_runs
from ..rundir import RunDirectory, shown_status
from ..store import DEFAULT_STORE, ResultsStore
from ..store.sqlite import RunRecord
from ..sweep.aggregate import parse_where
from ._common import _clean, register_command

RUN_COLUMNS = ("run_id", "sweep", "status", "epoch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="a sweep name, a sweep spec file, run ids (or unique prefixes) or run directories "
        "(none: every run of the store, filtered by --where)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose config has KEY=VALUE, e.g. model.width=16 or tag=lenet (repeatable)",
    )
    parser.add_argument(
        "--store",
        metavar="DB",
        help=f"results store (default: the one a run-directory TARGET recorded, else {DEFAULT_STORE})",
    )
    parser.add_argument(
        "--format",
        choices=tuple(WRITERS),
        help="csv (default; json if --out ends in .json): one row per run x epoch; "
        "json: a list of row objects",
    )
    parser.add_argument("--out", metavar="FILE", help="write to FILE (default: stdout)")


def run(args: argparse.Namespace) -> int:
    where = parse_where(args.where)
    out = Path(args.out) if args.out is not None else None
    fmt = args.format or ("json" if out is not None and out.suffix == ".json" else "csv")
    if out is not None:
        check_out_file(out)
    store = open_store(args.store, args.targets)
    records = select_runs(store, args.targets, where).records
    columns, rows = epoch_table(store, records)
    if not rows:
        raise RunError(f"the {len(records)} runs selected have no epochs recorded yet")
    write = WRITERS[fmt]
    if out is None:
        write(sys.stdout, columns, rows)
    else:
        _write_atomically(out, lambda handle: write(handle, columns, rows))
    return 0


def open_store(given: str | None, targets: Iterable[str]) -> ResultsStore:
    """The store to read: ``--store``, else the one a run-directory TARGET recorded (so the
    command works from any directory), else ``runs/robustlab.db``; never created."""
    path = Path(given) if given is not None else _recorded_store(targets) or DEFAULT_STORE
    if not path.exists():
        raise RunError(f"--store {str(path)!r}: no such results store (pass --store DB)")
    return ResultsStore(path, create=False)


def _recorded_store(targets: Iterable[str]) -> Path | None:
    for target in targets:
        if (Path(target) / "run.json").is_file():
            recorded = RunDirectory(Path(target)).recorded_store()
            if recorded is not None:
                return recorded
    return None


# -- the table ---------------------------------------------------------------------------------


def epoch_table(
    store: ResultsStore, records: Iterable[RunRecord]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns (in order) and the rows, one per run x epoch, of ``records``.

    Config and metric columns are the union over the runs, in the order they first appear
    (a run lacking one, e.g. ``lipschitz`` with ``eval.lipschitz_n = 0``, leaves it empty).
    """
    config_columns: dict[str, None] = {}
    metric_columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for record in records:
        config = flat_config(record)
        config_columns.update(dict.fromkeys(config))
        status = shown_status(record.status, record.pid, record.host)
        for metrics in store.epochs(record.run_id):
            epoch_metrics = {k: v for k, v in metrics.items() if k != "epoch"}
            metric_columns.update(dict.fromkeys(epoch_metrics))
            row = {
                "run_id": record.run_id,
                "sweep": record.sweep,
                "status": status,
                "epoch": metrics.get("epoch"),
                **config,
                **epoch_metrics,
            }
            rows.append(row)
    # A metric never shadows a config key, nor the run columns (their names differ by design:
    # config keys are dotted, except seed, device and tag).
    metric_order = [m for m in metric_columns if m not in config_columns and m not in RUN_COLUMNS]
    return [*RUN_COLUMNS, *config_columns, *metric_order], rows


# -- writers ---------------------------------------------------------------------------------


def write_csv(handle: TextIO, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """CSV with a header: a missing value is an empty field, a list (``train.milestones``)
    its JSON text, so ``pandas.read_csv`` reads numbers as numbers."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_json(handle: TextIO, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A JSON list of row objects, one per line, every column in every row (missing: null;
    NaN: null, as JSON has no NaN)."""
    handle.write("[\n")
    for i, row in enumerate(rows):
        line = json.dumps(_clean({c: row.get(c) for c in columns}))
        handle.write(line + (",\n" if i < len(rows) - 1 else "\n"))
    handle.write("]\n")


WRITERS: dict[str, Callable[[TextIO, list[str], list[dict[str, Any]]], None]] = {
    "csv": write_csv,
    "json": write_json,
}


# -- the output file ---------------------------------------------------------------------------


def check_out_file(out: Path) -> None:
    """Refuse, before anything is read or written, an ``--out`` that cannot be a file: a
    directory, a path under a file, or a place the user may not write."""
    if out.is_dir():
        raise ConfigError("--out", str(out), "is a directory; expected a file name")
    parent = out.parent
    while not parent.exists():  # the first existing ancestor: the directories are created
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError("--out", str(out), f"{str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError("--out", str(out), "not writable (permission denied)")


def _write_atomically(out: Path, write: Callable[[TextIO], None]) -> None:
    """Write through a temporary file renamed into place (:func:`atomic_write_bytes`): a
    failure leaves no partial file, and no folder made for it."""
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    text = io.StringIO(newline="")
    write(text)
    try:
        atomic_write_bytes(out, text.getvalue().encode("utf-8"))
    except BaseException as exc:
        for directory in created:  # nothing left behind: the folders made for it go too
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(exc, OSError) and not isinstance(exc, DiskFullError):
            # The checks pass as root on a read-only or virtual file system.
            raise RunError(f"--out {str(out)!r}: cannot write there ({exc.strerror})") from None
        raise


register_command(
    "export",
    "per-epoch metrics of many runs as one long table (CSV or JSON), for pandas",
    add_arguments,
    run,
    description="Write the per-epoch metrics of the selected runs as one long table: one row "
    "per run x epoch, columns run_id, sweep, status, epoch, every config key (dotted, e.g. "
    "model.width) and every per-epoch metric. TARGET: a sweep name, a sweep spec file, run ids "
    "or run directories; --where KEY=VALUE filters (any config key, e.g. tag=lenet).",
)
