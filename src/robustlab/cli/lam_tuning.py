"""``robustlab lam-tuning``: Wu et al.'s Table 3 from the store: per width, the λ chosen by a
manual grid, by WAR, or taken from the thin model, its robust accuracy and its device-hours.

    robustlab lam-tuning --sweep wu2021-table1 --sweep wu2021-war --calibration-width 0.5
    robustlab lam-tuning RUN RUN ... --select best_robust_accuracy --format csv
"""

from __future__ import annotations

import argparse
import sys

from .._fraction import parse_number
from ..errors import ConfigError, RunError
from ..store import ResultsStore
from ..store.sqlite import RunRecord
from ..sweep import lam_tuning as tuning
from ..sweep.aggregate import matches, parse_where
from ._common import add_store_argument, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="*", metavar="RUN", help="run ids, id prefixes or run directories"
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME",
        help="every run of this sweep in the store (repeatable; no RUN and no --sweep: all runs)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with KEY=VALUE (repeatable), e.g. method.name=trades",
    )
    parser.add_argument(
        "--select",
        default=tuning.DEFAULT_SELECT,
        metavar="METRIC",
        help=f"final metric the manual grid's λ is chosen by, highest mean (default {tuning.DEFAULT_SELECT})",
    )
    parser.add_argument(
        "--metric",
        default=tuning.DEFAULT_METRIC,
        metavar="METRIC",
        help=f"final metric reported (default {tuning.DEFAULT_METRIC})",
    )
    parser.add_argument(
        "--calibration-width",
        metavar="W",
        help="the thin model's width whose λ grid calibrated WAR (Wu et al.: 0.5): its cost is "
        "added to the WAR rows, its best λ gives the N/A rows",
    )
    parser.add_argument(
        "--format", choices=tuple(tuning.RENDERERS), default="md", help="table format (md)"
    )
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _records(store: ResultsStore, args: argparse.Namespace) -> list[RunRecord]:
    """The runs named, or of the sweeps named, or all; then ``--where``; each once."""
    chosen: list[RunRecord] = [store.run(ref) for ref in args.runs]
    for name in args.sweep:
        found = store.sweep_runs(name)
        if not found:
            raise RunError(f"--sweep {name!r}: no runs of that sweep in {str(store.path)!r}")
        chosen += found
    if not args.runs and not args.sweep:
        chosen = store.runs()
    where = parse_where(args.where)
    unique = {r.run_id: r for r in chosen if matches(r, where)}
    if not unique:
        raise RunError(f"no runs match in {str(store.path)!r}")
    return list(unique.values())


def run(args: argparse.Namespace) -> int:
    width = None
    if args.calibration_width is not None:
        try:
            width = parse_number(args.calibration_width)
        except ValueError:
            raise ConfigError("--calibration-width", args.calibration_width, "a width") from None
    store = ResultsStore(args.store, create=False)
    records = _records(store, args)
    table = tuning.lam_tuning(
        records,
        tuning.read_costs(records),
        select=args.select,
        metric=args.metric,
        calibration_width=width,
    )
    fmt = "json" if args.json else args.format
    sys.stdout.write(tuning.RENDERERS[fmt](table) + "\n")
    return 0


register_command(
    "lam-tuning",
    "λ-tuning accounting (Wu et al. Table 3): chosen λ, robust accuracy, GPU/CPU-hours per width",
    add_arguments,
    run,
)
