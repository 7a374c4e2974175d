"""``robustlab ingest DIR...``: record run directories in the store (idempotent).

The store can be rebuilt from the run directories: ``robustlab ingest runs/ --store new.db``.
Sweeps ingest their runs themselves; this is for run directories copied from another machine,
and for a store that was lost.
"""

from __future__ import annotations

import argparse

from ..report import render_table
from ..store import ResultsStore
from ..sweep.ingest import find_run_dirs, ingest_run
from ._common import add_store_argument, emit_json, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="run directories, or folders holding them"
    )
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    found = list(find_run_dirs(args.dirs))  # every path checked before the store is touched
    store = ResultsStore(args.store)
    results = [ingest_run(store, path) for path in found]
    if args.json:
        emit_json(
            {
                "store": str(store.path.resolve()),
                "runs": [
                    {
                        "run_id": r.run_id,
                        "run_dir": str(r.run_dir),
                        "status": r.status,
                        "epochs": r.epochs,
                        "evaluations": r.evaluations,
                    }
                    for r in results
                ],
            }
        )
        return 0
    if not results:
        print(f"no run directories under {' '.join(args.dirs)}")
        return 0
    rows = [[r.run_id, r.status, r.epochs, r.evaluations, str(r.run_dir)] for r in results]
    print(render_table(["run", "status", "epochs", "final evals", "run dir"], rows))
    print(f"\n{len(results)} runs ingested into {store.path}")
    return 0


register_command(
    "ingest",
    "record run directories in the results store (idempotent; rebuilds a store)",
    add_arguments,
    run,
)
