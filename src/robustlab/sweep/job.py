"""One job of a sweep: create or resume one run directory and train it, writing nothing else.

:func:`run_planned` is what every executor executes (the local executor in a subprocess,
``python -m robustlab.sweep.job PLAN.json``; the Slurm executor through submitit, which pickles
the function and its :class:`~robustlab.sweep.plan.PlannedRun`). A job never opens the results
store: the submitting process ingests the run directory (:mod:`robustlab.sweep.ingest`).

What a job does with the run directory it is given:

* none there: create it (``config.toml``, ``run.json``) and train from scratch;
* a run there, ``finished``: nothing (a complete run is never trained twice);
* a run there, otherwise (``running`` whose process is gone, ``interrupted``, ``failed``):
  resume from its last checkpoint, as ``robustlab train --resume`` does (from scratch if it died
  before its first checkpoint). The saved config is kept.

A run that raises is marked ``failed`` in ``run.json`` with a one-line ``error``; Ctrl-C and
SIGTERM mark it ``interrupted`` (:func:`robustlab.training.runner.fit`).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..config import build_config
from ..rundir import RunDirectory, with_absolute_paths
from .plan import PlannedRun

# Exit status of the job's process: finished (or already finished), failed.
EXIT_FINISHED, EXIT_FAILED = 0, 1


def run_id_of(run: PlannedRun) -> str:
    """The run's id in the store: its full sweep name (``wu-table1/trades-w10-lam12-s0``),
    so a run keeps one row however often it is resumed or ingested."""
    return run.full_name


def run_planned(run: PlannedRun, *, threads: int | None = None, device: str | None = None) -> str:
    """Execute ``run`` here; returns its final status (``finished``).

    Args:
        run: the planned run.
        threads: the CPU cores this run may use (the executor divides the cores between its
            workers so they do not oversubscribe them): the run's ``threads = 0`` (auto) picks
            one thread or all of these by its model's size (:mod:`robustlab._threads`);
            ``None``: every core of this process.
        device: the device to train on (round-robin assignment of GPUs); ``None`` keeps the
            config's ``device``.

    Raises:
        Exception: whatever training raised, after marking the run ``failed`` in ``run.json``.
        KeyboardInterrupt: Ctrl-C / SIGTERM (the run is marked ``interrupted``).
    """
    from ..training.runner import fit, prepare

    path = run.path
    existing = (path / "run.json").is_file() and (path / "config.toml").is_file()
    if existing:
        run_dir = RunDirectory.open(path)
        if run_dir.read_info().get("status") == "finished":
            return "finished"
        config = run_dir.read_config()
    else:
        config = with_absolute_paths(build_config(base=run.config))
        # A job killed inside RunDirectory.create may have left config.toml without run.json:
        # nothing of the run exists yet, so start it again.
        (path / "config.toml").unlink(missing_ok=True)
    if device is not None:
        config = dataclasses.replace(config, device=device)
    run_id = run_id_of(run)
    try:
        experiment = prepare(config, cores=threads)
        if existing:
            run_dir.update_info(error=None)  # a retried run no longer shows its old failure
        else:
            run_dir = RunDirectory.create(path, config, run_id)
            run_dir.update_info(sweep=run.sweep, sweep_run=run.name, values=run.values)
        fit(experiment, run_dir, run_id, None, resume=existing, show_progress=False)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if not (path / "run.json").is_file():
            # It failed before its directory existed (a missing dataset): record it anyway, so
            # the sweep reports it failed (and retries it with --retry-failed), not pending.
            RunDirectory.create(path, config, run_id).update_info(
                sweep=run.sweep, sweep_run=run.name, values=run.values
            )
        RunDirectory.open(path).update_info(status="failed", error=error)
        raise
    return "finished"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m robustlab.sweep.job PLAN.json [--threads N] [--device DEV]``."""
    parser = argparse.ArgumentParser(prog="robustlab.sweep.job", description=main.__doc__)
    parser.add_argument("plan", help="a PlannedRun as JSON")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    run = PlannedRun.from_json(Path(args.plan).read_text())
    from ..cli.main import _sigterm_raises

    print(f"job {run.full_name} -> {run.run_dir}", file=sys.stderr, flush=True)
    try:
        with _sigterm_raises():
            status = run_planned(run, threads=args.threads, device=args.device)
    except KeyboardInterrupt as exc:
        print(f"job {run.full_name}: {exc or 'interrupted'}", file=sys.stderr, flush=True)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
    print(f"job {run.full_name}: {status}", file=sys.stderr, flush=True)
    return EXIT_FINISHED


if __name__ == "__main__":
    raise SystemExit(main())
