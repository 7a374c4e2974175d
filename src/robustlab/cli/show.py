"""``robustlab show RUN [--plot]``: one run's per-epoch metrics and its evaluations; with
``--plot``, its figures (:mod:`robustlab.report.figures`) drawn into ``RUN/plots/``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..report import evaluation_label, render_table, stored_evaluation_label
from ..report.labels import epoch_split
from ..rundir import RunDirectory, check_can_create, shown_status
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


@dataclass
class ShownRun:
    run_id: str
    run_dir: str
    status: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", metavar="RUN", help="run id (or unique prefix) in the store, or a run directory"
    )
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also draw the run's figures (curves, trackers, diagnostics) into RUN/plots/ "
        "and print their paths",
    )


def run(args: argparse.Namespace) -> int:
    shown = _load(args.run, args.store)
    plots = _plot(shown, args.store) if args.plot else None
    for e in shown.evaluations:
        e["label"] = stored_evaluation_label(e)
    if args.json:
        emit_json(
            {
                "run_id": shown.run_id,
                "run_dir": shown.run_dir,
                "status": shown.status,
                "epoch_evaluation": epoch_evaluation_label(shown.config),
                "epochs": shown.history,
                "evaluations": shown.evaluations,
                **({} if plots is None else {"plots": [str(p) for p in plots]}),
            }
        )
        return 0
    print(f"{shown.run_id}  ({shown.run_dir})  {shown.status}")
    if shown.status == "interrupted":
        print(f"continue it with `robustlab train --resume {shown.run_dir}`")
    print(f"\nper epoch: {epoch_evaluation_label(shown.config)}")
    rows = [[m.get(key) for key, _, _ in COLUMNS] for m in shown.history]
    print(render_table([h for _, h, _ in COLUMNS], rows, [k for _, _, k in COLUMNS]))
    if shown.evaluations:
        print("\nevaluations (weights@epoch, attack-steps x restarts, threat model, points)")
        rows = [
            [
                e["eval_id"],
                e["label"],
                e["n"],
                e["details"].get("seed"),
                e["natural_accuracy"],
                e["robust_accuracy"],
                e["perturbation_stability"],
            ]
            for e in shown.evaluations
        ]
        print(
            render_table(
                ["id", "measured", "n", "seed", "nat acc", "rob acc", "stability"],
                rows,
                ["auto"] * 4 + ["pct"] * 3,
            )
        )
    if plots is not None:
        _print_plots(shown, plots)
    return 0


def _plot(shown: ShownRun, store_path: str) -> list[Path]:
    """Draw the run's figures into ``RUN/plots/`` (absolute paths returned), from the store
    when it has the run (its diagnostics included), else from the run directory's files."""
    import tempfile

    from ..report.figures import render_figures
    from ..sweep.ingest import ingest_run

    out = Path(shown.run_dir).resolve() / "plots"
    if not out.parent.is_dir():
        raise RunError(f"--plot: the run directory {str(out.parent)!r} does not exist (moved?)")
    if out.exists() and not out.is_dir():
        raise RunError(f"--plot: {str(out)!r} is a file; the figures go to RUN/plots/ (move it)")
    check_can_create(out, "--plot")
    if Path(store_path).exists():
        store = ResultsStore(store_path, create=False)
        if store.has_run(shown.run_id):
            files = render_figures(store, [store.run(shown.run_id)], out)
            return [f.path.resolve() for f in files]
    # A run directory the store does not know: its files in a throw-away store.
    with tempfile.TemporaryDirectory(prefix="robustlab-show-") as tmp:
        store = ResultsStore(Path(tmp) / "run.db")
        ingest_run(store, shown.run_dir)
        files = render_figures(store, [store.run(shown.run_id)], out)
    return [f.path.resolve() for f in files]


def _print_plots(shown: ShownRun, plots: list[Path]) -> None:
    if not plots:
        print(f"\nfigures: none (the run {shown.run_id} has no epochs recorded yet)")
        return
    print(f"\nfigures ({len(plots)}):")
    for path in plots:
        print(path)


def epoch_evaluation_label(config: dict[str, Any]) -> str:
    """What the per-epoch accuracies measured: ``pgd-20 Linf ε=0.2 on train[:1000], val,
    test`` (the run's ``eval.*``; robust accuracy under that attack, natural without)."""
    ev = config.get("eval") or {}
    if not ev:
        return "(the run's config is not available)"
    settings = [{"name": "pgd", "steps": ev.get("steps"), "restarts": ev.get("restarts")}]
    attack = evaluation_label(None, settings, ev["norm"], ev["eps"], split="")
    splits = [f"train[:{ev['n_train']}]"] if ev.get("n_train") else []
    if (config.get("data") or {}).get("val_size"):
        splits.append("val")
    splits.append(epoch_split(ev.get("n")))
    return f"{attack} on {', '.join(splits)}"


def _load(ref: str, store_path: str) -> ShownRun:
    """From the store when it knows the run; a run directory is read directly otherwise."""
    store = None
    if Path(store_path).exists():
        store = ResultsStore(store_path, create=False)
        try:
            record = store.run(ref)
            return ShownRun(
                record.run_id,
                record.run_dir,
                shown_status(record.status, record.pid, record.host),
                record.config,
                store.epochs(record.run_id),
                store.evaluations(record.run_id),
            )
        except RunError:
            if not Path(ref).is_dir():
                raise
    if Path(ref).is_dir():
        run_dir = RunDirectory.open(ref)
        info = run_dir.read_info()
        return ShownRun(
            run_dir.run_id,
            str(run_dir.path),
            shown_status(info.get("status", "unknown"), info.get("pid"), info.get("host")),
            run_dir.read_config().to_dict(),
            run_dir.read_metrics(),
            store.evaluations(run_dir.run_id) if store else [],
        )
    raise RunError(f"run {ref!r}: not a run directory, and the store {store_path!r} does not exist")


register_command("show", "print one run's per-epoch metrics and evaluations", add_arguments, run)
