"""``robustlab runs``: the runs in the store, one line each."""

from __future__ import annotations

import argparse
from typing import Any

from ..report import evaluation_label, render_table
from ..report.labels import epoch_split
from ..rundir import shown_status
from ..store import ResultsStore
from ..store.sqlite import RunRecord
from ..sweep.aggregate import final_metrics, matches, parse_where
from ._common import add_store_argument, emit_json, register_command

COLUMNS = [
    # (row key, header, kind)
    ("run_id", "run", "auto"),
    ("status", "status", "auto"),
    ("dataset", "data", "auto"),
    ("model", "model", "auto"),
    ("width", "width", "auto"),
    ("method", "method", "auto"),
    ("lam", "λ", "auto"),
    ("eps", "train ε", "auto"),
    ("epochs", "epochs", "auto"),
    ("nat_acc", "nat acc", "pct"),
    ("rob_acc", "rob acc", "pct"),
    ("stability", "stability", "pct"),
    ("measured", "measured", "auto"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    parser.add_argument("--sweep", metavar="NAME", help="only the runs of this sweep")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with KEY=VALUE: a sweep axis or any config key, e.g. model.width=10 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def headline(record: RunRecord) -> dict[str, Any]:
    """The run's one robust accuracy and what it measured.

    The final evaluation of the last model on the whole test set when the run made one
    (``eval.final``), else the last epoch's evaluation on ``eval.n`` test points: both under
    the run's evaluation attack (``eval.*``), labelled so the two are never confused.
    """
    ev = record.config.get("eval", {})
    settings = [{"name": "pgd", "steps": ev.get("steps"), "restarts": ev.get("restarts")}]
    norm, eps = ev.get("norm", record.norm), ev.get("eps", record.eps)
    last = (record.summary.get("selection") or {}).get("last")
    if last:
        return {
            "nat_acc": last.get("natural_accuracy"),
            "rob_acc": last.get("robust_accuracy"),
            "stability": last.get("perturbation_stability"),
            "measured": evaluation_label(f"last@{last['epoch']}", settings, norm, eps, "test"),
        }
    final = record.summary.get("final") or {}
    if final.get("test_rob_acc") is None:
        return {"nat_acc": None, "rob_acc": None, "stability": None, "measured": "-"}
    return {
        "nat_acc": final.get("test_nat_acc"),
        "rob_acc": final.get("test_rob_acc"),
        "stability": final.get("test_stability"),
        "measured": evaluation_label(
            f"epoch {final['epoch']}", settings, norm, eps, epoch_split(ev.get("n"))
        ),
    }


def run(args: argparse.Namespace) -> int:
    store = ResultsStore(args.store, create=False)
    where = parse_where(args.where)
    records = store.sweep_runs(args.sweep) if args.sweep else store.runs()
    rows = []
    for r in (r for r in records if matches(r, where)):
        best = r.summary.get("best") or {}
        done = len(store.epochs(r.run_id))
        rows.append(
            {
                "run_id": r.run_id,
                "run_dir": r.run_dir,
                # A run recorded `running` whose process is gone was interrupted (SIGKILL, ...).
                "status": shown_status(r.status, r.pid, r.host),
                "dataset": r.dataset,
                "model": r.model,
                "width": r.width,
                "method": r.method,
                "lam": r.lam,
                "eps": r.eps,
                "epochs": f"{done}/{r.epochs}",
                **headline(r),
                "best_val_rob_acc": best.get("val_rob_acc"),
                "tag": r.tag,
                "sweep": r.sweep,
                "sweep_run": r.sweep_run,
                "sweep_values": r.sweep_values,
                "final_metrics": final_metrics(r),
            }
        )
    if args.json:
        emit_json({"store": str(store.path), "runs": rows})
        return 0
    if not rows:
        print(f"no runs in {store.path}")
        return 0
    print(
        render_table(
            [h for _, h, _ in COLUMNS],
            [[row[key] for key, _, _ in COLUMNS] for row in rows],
            [k for _, _, k in COLUMNS],
        )
    )
    if any(row["status"] == "interrupted" for row in rows):
        print("\ncontinue an interrupted run with `robustlab train --resume RUN_DIR`")
    return 0


register_command("runs", "list the runs in the store", add_arguments, run)
