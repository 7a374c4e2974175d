"""``robustlab sweep SPEC.toml`` (run a grid), ``sweep status SPEC``, ``sweep table SPEC ...``.

A spec is a TOML file (:mod:`robustlab.sweep.spec`) or a preset of the seeds' experiments
(``--preset NAME [--scale tiny|paper]``, :mod:`robustlab.sweep.presets`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError
from ..report import render_table
from ..report.labels import format_eps
from ..rundir import check_can_create
from ..store import ResultsStore
from ..sweep import aggregate
from ..sweep.executors import EXECUTORS
from ..sweep.spec import SweepSpec, expand, in_grey_levels, load_spec
from ..sweep.state import count_states, sweep_states
from ._common import add_store_argument, checked_threads, emit_json, info, register_command

ACTIONS = ("status", "table")
DEFAULT_OUT = Path("runs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "words",
        nargs="*",
        metavar="[status|table] SPEC",
        help="the sweep spec (TOML); `status SPEC`: where its runs stand; `table SPEC`: its cell grid",
    )
    parser.add_argument(
        "--preset", metavar="NAME", help="a preset instead of SPEC (see --list-presets)"
    )
    parser.add_argument(
        "--scale",
        choices=("paper", "tiny"),
        default="paper",
        help="preset scale: paper (published settings) or tiny (digits/synthetic, minutes on a CPU)",
    )
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=f"runs go to DIR/<sweep>/<run> (default: where the store says the sweep ran, else {DEFAULT_OUT})",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--executor",
        default="local",
        help=f"where runs execute: {', '.join(EXECUTORS.names())} (default local)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="runs at the same time (default 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU cores per run (0 or unset: cores // workers); a run's threads key (auto) "
        "uses one of them for a small model, all of them for a large one",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state; run nothing"
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again (resumed)"
    )
    table = parser.add_argument_group("sweep table")
    table.add_argument(
        "--rows", metavar="KEY", help="table rows: a config key of the sweep (method.lam)"
    )
    table.add_argument("--cols", metavar="KEY", help="table columns (model.width)")
    table.add_argument(
        "--metric", metavar="NAME", help="a final metric (test_rob_acc, last_robust_accuracy, ...)"
    )
    table.add_argument(
        "--format", choices=tuple(aggregate.RENDERERS), default="md", help="table format (md)"
    )
    table.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with KEY=VALUE (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        return _list_presets(args)
    action, spec = _resolve(args)
    return ACTION_HANDLERS[action](args, spec)


def _resolve(args: argparse.Namespace) -> tuple[str, SweepSpec]:
    """The action (run, status, table) and the spec, from the words and ``--preset``."""
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ACTIONS else "run"
    if action != "table":
        for flag in ("rows", "cols", "metric"):
            if getattr(args, flag) is not None:
                raise ConfigError(
                    f"--{flag}", getattr(args, flag), "only `robustlab sweep table` takes it"
                )
    if args.preset is not None:
        if words:
            raise ConfigError("SPEC", words[0], "give a spec file or --preset, not both")
        from ..sweep.presets import preset_spec

        return action, preset_spec(args.preset, args.scale)
    if len(words) != 1:
        shown = " ".join(words) or "nothing"
        raise ConfigError("SPEC", shown, "expected one sweep spec file (or --preset NAME)")
    if args.scale != "paper":
        raise ConfigError("--scale", args.scale, "applies to --preset only")
    return action, load_spec(words[0])


def _list_presets(args: argparse.Namespace) -> int:
    from ..sweep.presets import PRESETS

    rows = [[name, PRESETS.meta(name).get("summary", "")] for name in PRESETS.names()]
    if args.json:
        emit_json({"presets": {name: summary for name, summary in rows}})
    else:
        print(render_table(["preset", "what"], rows))
    return 0


def _run(args: argparse.Namespace, spec: SweepSpec) -> int:
    if args.workers < 1:
        raise ConfigError("--workers", args.workers, "must be >= 1")
    checked_threads(args.threads)
    EXECUTORS.get(args.executor)  # an unknown executor fails before anything is written
    out = _out_dir(args, spec)
    if args.dry_run:
        return _dry_run(args, spec, out)
    from ..sweep.execute import run_sweep

    # Everything that can be refused is refused before the store or a run directory is made:
    # every run's config (expand validates them), then the output and store locations.
    runs = expand(spec, out)
    check_can_create(out, "--out")
    store = ResultsStore(args.store)  # checks its location before it writes anything
    outcome = run_sweep(
        spec,
        out=out,
        store=store,
        executor=args.executor,
        workers=args.workers,
        retry_failed=args.retry_failed,
        threads=args.threads or None,  # 0: auto
        log=info,  # progress on stderr, also with --json (stdout holds only the answer)
        runs=runs,
    )
    if args.json:
        emit_json(
            {
                "sweep": spec.name,
                "store": str(store.path.resolve()),
                "counts": outcome.counts,
                "started": outcome.started,
                "failed": [s.run.name for s in outcome.failed],
            }
        )
    return 0 if outcome.complete else 1


def _dry_run(args: argparse.Namespace, spec: SweepSpec, out: Path) -> int:
    runs = expand(spec, out)  # validates every run's config; writes nothing
    states = sweep_states(runs)
    if args.json:
        emit_json(
            {
                "sweep": spec.name,
                "runs": [
                    {
                        "name": s.run.name,
                        "state": s.state,
                        "run_dir": s.run.run_dir,
                        "values": s.run.values,
                    }
                    for s in states
                ],
                "counts": count_states(states),
            }
        )
        return 0
    keys = spec.naming_keys
    headers = ["run", "state", *keys]
    rows = [[s.run.name, s.state, *(_show(k, s.run.values.get(k)) for k in keys)] for s in states]
    print(render_table(headers, rows))
    cells = len({aggregate.cell_key(s.run.cell) for s in states})
    print(
        f"\n{len(runs)} runs ({cells} cells x {len(spec.seeds or [0])} seeds) -> "
        f"{(out.expanduser().resolve() / spec.name)}; dry run: nothing written"
    )
    return 0


def _show(key: str, value: Any) -> Any:
    """A value as the dry run lists it: budgets as ``8/255``, other floats compactly."""
    if isinstance(value, float) and key.endswith((".eps", ".alpha")):
        levels = in_grey_levels(value)
        return f"{levels:g}/255" if levels and value < 1 else format_eps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _out_dir(args: argparse.Namespace, spec: SweepSpec) -> Path:
    """``--out``; else where the store says this sweep ran (so ``robustlab sweep SPEC`` again
    continues it); else ``runs``. Reads the store only if it exists (a dry run writes nothing)."""
    if args.out:
        return Path(args.out)
    if Path(args.store).is_file():
        for sweep in ResultsStore(args.store, create=False).sweeps():
            if sweep["name"] == spec.name and sweep["spec"].get("out"):
                return Path(sweep["spec"]["out"])
    return DEFAULT_OUT


def _status(args: argparse.Namespace, spec: SweepSpec) -> int:
    from ..sweep.execute import ingest_planned

    store_path = Path(args.store)
    store = ResultsStore(store_path) if store_path.exists() else None
    out = _out_dir(args, spec)
    runs = expand(spec, out)
    if store is not None or any((r.path / "run.json").is_file() for r in runs):
        store = store or ResultsStore(store_path)
        ingest_planned(store, runs)  # the store follows the run directories
    states = sweep_states(runs)
    counts = count_states(states)
    if args.json:
        emit_json(
            {
                "sweep": spec.name,
                "out": str(out.expanduser().resolve() / spec.name),
                "counts": counts,
                "runs": [
                    {
                        "name": s.run.name,
                        "state": s.state,
                        "epochs_done": s.epochs_done,
                        "epochs": s.epochs,
                        "error": s.error,
                        "run_dir": s.run.run_dir,
                    }
                    for s in states
                ],
            }
        )
        return 0
    rows = [[s.run.name, s.state, f"{s.epochs_done}/{s.epochs}", s.error or ""] for s in states]
    print(render_table(["run", "state", "epochs", "error"], rows))
    print(f"\nsweep {spec.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _table(args: argparse.Namespace, spec: SweepSpec) -> int:
    missing = [f"--{flag}" for flag in ("rows", "cols", "metric") if getattr(args, flag) is None]
    if missing:
        raise RunError(
            f"`robustlab sweep table` needs --rows, --cols and --metric; missing: "
            f"{', '.join(missing)} (e.g. --rows method.lam --cols model.width "
            "--metric last_robust_accuracy; `robustlab report` chooses them itself)"
        )
    store = ResultsStore(args.store, create=False)
    records = store.sweep_runs(spec.name)
    if not records:
        raise RunError(
            f"sweep {spec.name!r}: no runs in {str(store.path)!r} (run `robustlab sweep` first)"
        )
    grid = aggregate.build_grid(
        records, args.rows, args.cols, args.metric, aggregate.parse_where(args.where)
    )
    fmt = "json" if args.json else args.format
    text = aggregate.RENDERERS[fmt](grid)
    sys.stdout.write(text + "\n")
    return 0


ACTION_HANDLERS = {"run": _run, "status": _status, "table": _table}

register_command(
    "sweep",
    "run a grid of runs (width x lambda x eps x seed) from a spec; `sweep status`, `sweep table`",
    add_arguments,
    run,
    description="robustlab sweep SPEC.toml [--workers N] | sweep status SPEC | "
    "sweep table SPEC --rows KEY --cols KEY --metric NAME. "
    "Runs done are skipped, interrupted ones resumed, failed ones retried with --retry-failed.",
)
