"""``robustlab show RUN``: one run's per-epoch metrics and its evaluations."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RunError
from ..report import render_table
from ..rundir import RunDirectory
from ..store import ResultsStore
from ._common import add_store_argument, emit_json, register_command

COLUMNS = [
    ("epoch", "epoch", "auto"),
    ("lr", "lr", "auto"),
    ("eps", "ε", "auto"),
    ("lam", "λ", "auto"),
    ("nat_risk", "nat risk", "auto"),
    ("rob_reg", "rob reg", "auto"),
    ("train_nat_acc", "train nat", "pct"),
    ("train_rob_acc", "train rob", "pct"),
    ("val_nat_acc", "val nat", "pct"),
    ("val_rob_acc", "val rob", "pct"),
    ("test_nat_acc", "test nat", "pct"),
    ("test_rob_acc", "test rob", "pct"),
    ("test_stability", "stability", "pct"),
    ("lipschitz", "lipschitz", "auto"),
    ("time_s", "seconds", "auto"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN", help="run id (or unique prefix) in the store, or a run directory"
    )
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    run_id, run_dir, history, evaluations = _load(args.run, args.store)
    if args.json:
        emit_json(
            {"run_id": run_id, "run_dir": run_dir, "epochs": history, "evaluations": evaluations}
        )
        return 0
    print(f"{run_id}  ({run_dir})")
    rows = [[m.get(key) for key, _, _ in COLUMNS] for m in history]
    print(render_table([h for _, h, _ in COLUMNS], rows, [k for _, _, k in COLUMNS]))
    if evaluations:
        print("\nevaluations")
        rows = [
            [
                e["eval_id"],
                e["source"],
                e["attack"],
                e["norm"],
                e["eps"],
                e["n"],
                e["natural_accuracy"],
                e["robust_accuracy"],
                e["perturbation_stability"],
            ]
            for e in evaluations
        ]
        print(
            render_table(
                ["id", "checkpoint", "attack", "norm", "ε", "n", "nat acc", "rob acc", "stability"],
                rows,
                ["auto"] * 6 + ["pct"] * 3,
            )
        )
    return 0


def _load(ref: str, store_path: str) -> tuple[str, str, list[dict], list[dict]]:
    """From the store when it knows the run; a run directory is read directly otherwise."""
    store = None
    if Path(store_path).exists():
        store = ResultsStore(store_path, create=False)
        try:
            record = store.run(ref)
            return (
                record.run_id,
                record.run_dir,
                store.epochs(record.run_id),
                store.evaluations(record.run_id),
            )
        except RunError:
            if not Path(ref).is_dir():
                raise
    if Path(ref).is_dir():
        run_dir = RunDirectory.open(ref)
        evaluations = store.evaluations(run_dir.run_id) if store else []
        return run_dir.run_id, str(run_dir.path), run_dir.read_metrics(), evaluations
    raise RunError(f"run {ref!r}: not a run directory, and the store {store_path!r} does not exist")


register_command("show", "print one run's per-epoch metrics and evaluations", add_arguments, run)
