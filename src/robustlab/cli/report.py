"""``robustlab report TARGET...``: tables, figures and one HTML page of runs, from the store.

TARGET is a sweep name, a sweep spec file, run ids or run directories (several may be given);
``--where KEY=VALUE`` filters them (or, without a TARGET, every run of the store). The report is
written into ``--out`` (default ``reports/<sweep>``): ``index.html`` beside the figures' PNGs,
and every table as Markdown, CSV and LaTeX. See :mod:`robustlab.report.build`.
"""

from __future__ import annotations

import argparse

from ..errors import RunError
from ..report.build import DEFAULT_ROOT, FORMATS, plan_report, printed, write_report
from ..store import ResultsStore
from ..sweep.aggregate import parse_where
from ._common import add_store_argument, info, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="a sweep name, a sweep spec file, run ids or run directories",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"where the report goes (default {DEFAULT_ROOT}/<sweep>, or {DEFAULT_ROOT}/report)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="html",
        help="what is written and printed: html (index.html with the figures; prints its path), "
        "md, csv, latex (print the tables) or json (one object); the tables' .md, .csv and .tex "
        "files are written whatever the format (default html)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with KEY=VALUE: a sweep axis, any config key or tag (repeatable)",
    )
    parser.add_argument(
        "--rows",
        metavar="KEY",
        help="table rows: a key that varies (default: chosen, e.g. method.lam)",
    )
    parser.add_argument(
        "--cols", metavar="KEY", help="table columns: a key that varies (default: e.g. model.width)"
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="also tabulate this final metric (repeatable), e.g. train_loss, best_robust_accuracy",
    )
    add_store_argument(parser)


def run(args: argparse.Namespace) -> int:
    if not args.targets and not args.where:
        raise RunError(
            "nothing to report: name a sweep, a spec file, run ids or run directories, "
            "or give --where KEY=VALUE"
        )
    store = ResultsStore(args.store, create=False)
    plan = plan_report(
        store,
        args.targets,
        parse_where(args.where),
        rows=args.rows,
        cols=args.cols,
        metrics=args.metric,
        out=args.out,
        fmt=args.format,
    )
    result = write_report(plan, log=lambda line: info(f"robustlab report: {line}"))
    print(printed(plan, result))
    figures = f" and {len(result.figures) or 'no'} figures" if plan.fmt == "html" else ""
    tables = f"{len(plan.tables)} table" + ("s" if len(plan.tables) != 1 else "")
    info(
        f"robustlab report: {len(plan.selection.records)} runs, {tables} "
        f"(.md, .csv, .tex){figures} in {result.out}"
    )
    return 0


register_command(
    "report",
    "tables, figures and an HTML page of a sweep or of runs, from the store",
    add_arguments,
    run,
    description="robustlab report TARGET... [--out DIR] [--format html|md|csv|latex|json] "
    "[--where KEY=VALUE] [--rows KEY --cols KEY] [--metric NAME]: tables (mean ± std over "
    "seeds, best per column in bold) as Markdown, CSV and LaTeX, and one self-contained HTML "
    "page with the figures, written into --out.",
)
