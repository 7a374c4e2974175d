"""``robustlab train [CONFIG.toml] [--set KEY=VALUE ...] [--out DIR] [--resume DIR] ...``"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import RunConfig, build_config
from ..errors import ConfigError
from ..report import evaluation_label, render_table
from ..report.labels import epoch_split
from ..rundir import RunDirectory, new_run_id, with_absolute_paths
from ..store import ResultsStore
from ..training import distributed
from ..training.runner import FitResult, check_resumable, fit, prepare, resolve_device
from ._common import (
    add_set_argument,
    add_store_argument,
    add_threads_argument,
    checked_threads,
    emit_json,
    info,
    register_command,
    store_for,
)

RUNS_ROOT = Path("runs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML config file (defaults <- file <- --set)")
    add_set_argument(parser)
    parser.add_argument("--out", metavar="DIR", help="run directory (default runs/<run id>)")
    parser.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint"
    )
    parser.add_argument(
        "--download", action="store_true", help="download missing dataset files (needs torchvision)"
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="where the dataset files are (= --set data.root=DIR; with --resume: where they "
        "are now, if not where the run recorded them)",
    )
    add_store_argument(parser, of_run=True)
    add_threads_argument(parser, " (= --set threads=N; also with --resume)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (run_dir, final, best) on stdout"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    quiet = args.quiet or args.json
    if args.resume:
        if args.config or args.overrides or args.out:
            raise ConfigError(
                "--resume",
                args.resume,
                "a resumed run keeps its saved config; drop CONFIG, --set and --out",
            )
        run_dir = RunDirectory.open(args.resume)
        config = run_dir.read_config()
        run_id = run_dir.run_id
    else:
        overrides = [*args.overrides, *(["data.download=true"] if args.download else [])]
        config = build_config(args.config, overrides)
        run_id = new_run_id(config)
        run_dir = None
    threads = checked_threads(args.threads)
    if threads is not None:  # where a run executes, not what it computes: --resume takes it too
        config = dataclasses.replace(config, threads=threads)
    if args.data_root is not None:  # with --resume: the data moved, the run records where to
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, root=args.data_root)
        )
    # A run records absolute paths: its results must not depend on where it is resumed or
    # evaluated from (a run made before this gets the root its data was just found under).
    config = with_absolute_paths(config)
    # Under torchrun (WORLD_SIZE > 1): one DDP run over the processes; ranks > 0 follow rank 0.
    dist = distributed.init_from_env(resolve_device(config.device))
    if dist is not None and not dist.is_main:
        return _follow_rank_0(config, bool(args.resume))
    experiment = prepare(config)  # every check that can fail happens before anything is written
    if run_dir is not None:
        check_resumable(experiment, run_dir)  # the checkpoint fits the model config.toml builds
    out = Path(args.out) if args.out else RUNS_ROOT / run_id
    if run_dir is None:
        RunDirectory.check_free(out)
    store_file = store_for(args.store, run_dir)  # a resumed run: the store it recorded
    store = ResultsStore(store_file)
    if run_dir is None:
        run_dir = RunDirectory.create(out, config, run_id, store=store_file)
    else:
        run_dir.record_paths(config, store_file)
    if dist is not None:  # the other ranks train the run rank 0 just created or reopened
        distributed.broadcast_object((run_id, str(run_dir.path)))
    info(f"run {run_id} -> {run_dir.path}", quiet)
    result = fit(
        experiment,
        run_dir,
        run_id,
        store,
        resume=bool(args.resume),
        show_progress=not quiet,
        on_epoch=None if quiet else _print_epoch,
    )
    distributed.shutdown()
    if args.json:
        emit_json(
            {
                "run_id": result.run_id,
                "run_dir": str(Path(result.run_dir).resolve()),
                "final": result.final,
                "best": result.best,
                "selection": result.selection,
            }
        )
    else:
        print(summary_table(config, result))
    return 0


def _follow_rank_0(config: RunConfig, resume: bool) -> int:
    """A rank > 0 of a torchrun run: train its shards of the run rank 0 set up, writing
    nothing and printing nothing (rank 0 writes the run directory and the store and reports)."""
    experiment = prepare(config)  # the same checks as rank 0's, and DDP's collective setup
    run_id, path = distributed.broadcast_object(None)
    fit(experiment, RunDirectory.open(path), run_id, None, resume=resume, show_progress=False)
    distributed.shutdown()
    return 0


def _print_epoch(m: dict[str, Any]) -> None:
    def pct(key: str) -> str:
        return "   -  " if m.get(key) is None else f"{100 * m[key]:5.1f}%"

    info(
        f"epoch {m['epoch']:>3}  lr {m['lr']:.4g}  loss {m['train_loss']:.4f}  "
        f"train {pct('train_nat_acc')}/{pct('train_rob_acc')}  val {pct('val_nat_acc')}/{pct('val_rob_acc')}  "
        f"test {pct('test_nat_acc')}/{pct('test_rob_acc')}  stab {pct('test_stability')}  {m['time_s']:.1f}s"
    )


def summary_table(config: RunConfig, result: FitResult) -> str:
    """The final model selection (last, best by validation, PAS ensemble) on the whole test set;
    the last epoch's per-epoch numbers when the final evaluation is off. Each robust accuracy
    is labelled with what it measured (``last@30 pgd-20 Linf ε=0.2 test``)."""
    ev = config.eval
    settings = [{"name": "pgd", "steps": ev.steps, "restarts": ev.restarts}]
    if result.selection:
        rows = [
            [
                which,
                s["natural_accuracy"],
                s["robust_accuracy"],
                s["perturbation_stability"],
                s.get("label")
                or evaluation_label(f"{which}@{s['epoch']}", settings, ev.norm, ev.eps),
            ]
            for which, s in result.selection.items()
        ]
    else:
        rows = [
            [
                label,
                m.get("test_nat_acc"),
                m.get("test_rob_acc"),
                m.get("test_stability"),
                evaluation_label(
                    f"epoch {m['epoch']}", settings, ev.norm, ev.eps, epoch_split(ev.n)
                ),
            ]
            for label, m in (("last", result.final), ("best (val)", result.best))
            if m
        ]
    table = render_table(
        ["model", "natural acc", "robust acc", "stability", "measured"],
        rows,
        ["auto", "pct", "pct", "pct", "auto"],
    )
    title = f"{result.run_id}  ({config.method.name}, {config.model.name})"
    return f"{title}\n{table}"


register_command("train", "train a model with an (adversarial) training method", add_arguments, run)
