"""``robustlab runs``: the runs in the store, one line each."""

from __future__ import annotations

import argparse

from ..report import render_table
from ..store import ResultsStore
from ._common import add_store_argument, emit_json, register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    store = ResultsStore(args.store, create=False)
    records = store.runs()
    rows = []
    for r in records:
        final = r.summary.get("final") or {}
        best = r.summary.get("best") or {}
        done = len(store.epochs(r.run_id))
        rows.append(
            {
                "run_id": r.run_id,
                "status": r.status,
                "dataset": r.dataset,
                "model": r.model,
                "width": r.width,
                "method": r.method,
                "lam": r.lam,
                "eps": r.eps,
                "epochs": f"{done}/{r.epochs}",
                "best_val_rob_acc": best.get("val_rob_acc"),
                "test_nat_acc": final.get("test_nat_acc"),
                "test_rob_acc": final.get("test_rob_acc"),
                "test_stability": final.get("test_stability"),
                "tag": r.tag,
            }
        )
    if args.json:
        emit_json({"store": str(store.path), "runs": rows})
        return 0
    if not rows:
        print(f"no runs in {store.path}")
        return 0
    columns = [
        "run_id",
        "status",
        "dataset",
        "model",
        "width",
        "method",
        "lam",
        "eps",
        "epochs",
        "test_nat_acc",
        "test_rob_acc",
        "test_stability",
    ]
    headers = [
        "run",
        "status",
        "data",
        "model",
        "width",
        "method",
        "λ",
        "ε",
        "epochs",
        "nat acc",
        "rob acc",
        "stability",
    ]
    kinds = ["auto"] * 9 + ["pct"] * 3
    print(render_table(headers, [[row[c] for c in columns] for row in rows], kinds))
    return 0


register_command("runs", "list the runs in the results store", add_arguments, run)
