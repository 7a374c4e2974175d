"""Running a sweep: plan, skip what is done, resume what was interrupted, ingest as runs end.

:func:`run_sweep` is what ``robustlab sweep SPEC`` does:

1. expand the spec (every run's config validated before anything is written);
2. take the sweep's lock (``OUT/<sweep>/.sweep/lock``: two ``robustlab sweep`` of one sweep at
   once would train runs twice; the lock is released by the kernel when the process dies, even
   by SIGKILL);
3. record the sweep in the store and ingest the run directories already there;
4. hand the runs still to do to the executor: ``pending`` and ``interrupted`` ones (resumed
   from their last checkpoint), ``failed`` ones only with ``retry_failed``; ``done`` ones are
   skipped, and ``running`` ones (a job of an earlier sweep still alive) are waited for: on this
   host by watching their ``run.json``, elsewhere through the executor's ``adopt``;
5. ingest each run as it ends, and all of them at the end; report the failed ones.

A run is complete exactly once whatever kills what: a run's directory is the truth (its
``run.json`` status, its last checkpoint), every ingest is idempotent, and the next sweep
continues from what the directories say.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RobustlabError, RunError
from ..store import ResultsStore
from .executors import ExecutorSettings, RunHandle, create_executor
from .ingest import ingest_run
from .plan import PlannedRun
from .spec import SweepSpec, expand
from .state import RunState, count_states, run_state, sweep_states

# Seconds between progress lines while runs train (each names the runs and their epochs).
HEARTBEAT_S = 30.0


def sweep_root(spec: SweepSpec, out: str | Path) -> Path:
    """``OUT/<sweep name>``: the sweep's run directories, and ``.sweep/`` (logs, plans, lock)."""
    return Path(out).expanduser().resolve() / spec.name


@dataclass
class SweepOutcome:
    """What a sweep invocation did and where every run stands at its end."""

    runs: list[PlannedRun]
    started: list[str] = field(default_factory=list)
    states: list[RunState] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return count_states(self.states)

    @property
    def failed(self) -> list[RunState]:
        return [s for s in self.states if s.state == "failed"]

    @property
    def complete(self) -> bool:
        """Whether every run of the sweep is done."""
        return all(s.state == "done" for s in self.states)


def spec_argument(spec: SweepSpec) -> str:
    """How to name ``spec`` on the command line: its file, or ``--preset NAME --scale S``."""
    if spec.source.startswith("preset:"):
        name, _, scale = spec.source.removeprefix("preset:").partition("@")
        return f"--preset {name}" + (f" --scale {scale}" if scale and scale != "paper" else "")
    return spec.source or "SPEC"


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C or SIGTERM, after its jobs were stopped and its runs ingested;
    the message says where the runs stand and how to continue. Keeps the signal's number."""

    def __init__(self, spec: SweepSpec, states: Sequence[RunState], cause: BaseException) -> None:
        counts = count_states(states)
        where = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        super().__init__(
            f"sweep {spec.name} interrupted ({where}); continue it with: "
            f"robustlab sweep {spec_argument(spec)}"
        )
        self.signum = getattr(cause, "signum", 2)


@contextmanager
def sweep_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.sweep/lock`` (an advisory ``flock``) for the duration of the block.

    Raises:
        RunError: another process holds it (the same sweep is running).
    """
    lock_dir = root / ".sweep"
    lock_dir.mkdir(parents=True, exist_ok=True)
    handle = (lock_dir / "lock").open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunError(
                f"sweep {root.name!r} is already running ({holder}); wait for it, or see "
                f"`robustlab sweep status`"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def ingest_planned(store: ResultsStore, runs: Sequence[PlannedRun]) -> int:
    """Ingest every planned run that has a run directory; returns how many."""
    count = 0
    for run in runs:
        if (run.path / "run.json").is_file() and (run.path / "config.toml").is_file():
            ingest_run(store, run.path)
            count += 1
    return count


def config_drift(states: Sequence[RunState], shown: int = 5) -> list[str]:
    """Warnings for runs whose directory holds another config than the spec now gives them (the
    spec was edited): such a run is skipped or resumed with the config it was started with."""
    from ..config import build_config

    lines = []
    for state in states:
        if state.state == "pending":
            continue
        try:
            saved = build_config(state.run.path / "config.toml").to_dict()
        except RobustlabError:
            continue  # reported when it is ingested or resumed
        keys = _differing_keys(state.run.config, saved)
        if keys:
            lines.append(
                f"  warning: {state.run.full_name} was started with other values of "
                f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}; it keeps them "
                f"(delete {state.run.run_dir} to run it with the spec's)"
            )
    if len(lines) > shown:
        lines = [*lines[:shown], f"  warning: ... and {len(lines) - shown} more runs like these"]
    return lines


def _differing_keys(planned: Any, saved: Any, prefix: str = "") -> list[str]:
    if isinstance(planned, dict) and isinstance(saved, dict):
        keys = []
        for key in sorted(set(planned) | set(saved)):
            keys += _differing_keys(planned.get(key), saved.get(key), f"{prefix}{key}.")
        return keys
    return [] if planned == saved else [prefix.rstrip(".")]


def to_do(states: Sequence[RunState], retry_failed: bool) -> list[PlannedRun]:
    """The runs to hand to the executor (see the module docstring, step 4)."""
    wanted = {"pending", "interrupted", *(("failed",) if retry_failed else ())}
    return [s.run for s in states if s.state in wanted]


def run_sweep(
    spec: SweepSpec,
    *,
    out: str | Path,
    store: ResultsStore,
    executor: str = "local",
    workers: int = 1,
    retry_failed: bool = False,
    log: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
    threads: int | None = None,
    runs: list[PlannedRun] | None = None,
) -> SweepOutcome:
    """Run ``spec`` (see the module docstring); returns where every run stands at the end.
    ``runs``: ``expand(spec, out)`` when the caller has it already (it validates every run's
    config: the CLI expands before anything is written)."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    runs = runs if runs is not None else expand(spec, out)
    root = sweep_root(spec, out)
    outcome = SweepOutcome(runs)
    with sweep_lock(root):
        store.upsert_sweep(
            spec.name,
            {**spec.to_dict(), "out": str(Path(out).expanduser().resolve())},
            [r.name for r in runs],
            spec.source,
        )
        ingest_planned(store, runs)
        states = sweep_states(runs)
        for line in config_drift(states):
            say(line)
        counts = count_states(states)
        todo = to_do(states, retry_failed)
        say(
            f"sweep {spec.name}: {len(runs)} runs ("
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f"); {len(todo)} to run with the {executor} executor"
            + (f", {workers} workers" if executor == "local" else "")
        )
        if counts["failed"] and not retry_failed:
            say(f"  {counts['failed']} failed runs are not retried (pass --retry-failed)")
        settings = ExecutorSettings(
            workers=workers,
            log_dir=root / ".sweep" / "logs",
            options=spec.slurm if executor == "slurm" else {},
            poll_s=poll_s,
            threads=threads,
        )
        running = [s for s in states if s.state == "running"]
        here = [s.run for s in running if (s.info or {}).get("host") == socket.gethostname()]
        elsewhere = [s.run for s in running if s.run not in here]
        if todo or elsewhere:
            chosen = create_executor(executor, settings)
            handles = chosen.submit(todo, spec)
            outcome.started = [h.run.name for h in handles]
            handles += chosen.adopt(elsewhere, spec)
            try:
                chosen.wait(handles, _progress(store, handles, say))
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: the executor stopped its jobs
                ingest_planned(store, runs)
                raise SweepInterrupted(spec, sweep_states(runs), exc) from exc
        _wait_here(store, here, say, poll_s)
        ingest_planned(store, runs)
        outcome.states = sweep_states(runs)
    counts = outcome.counts
    say(f"sweep {spec.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for failed in outcome.failed:
        log_file = root / ".sweep" / "logs" / f"{failed.run.name}.log"
        where = f"; log {log_file}" if log_file.exists() else ""
        say(f"  failed {failed.run.full_name}: {failed.error or 'see its log'}{where}")
    if outcome.failed:
        say(f"  retry them with: robustlab sweep {spec_argument(spec)} --retry-failed")
    left = counts["interrupted"] + counts["pending"]
    if left:  # a job killed while the sweep went on (out of memory, a kill of the worker)
        say(
            f"  {left} runs not finished; continue them with: robustlab sweep {spec_argument(spec)}"
        )
    return outcome


def _progress(
    store: ResultsStore, handles: Sequence[RunHandle], say: Callable[[str], None]
) -> Callable[[list[RunHandle]], None]:
    """The executor's ``on_update``: a line per run started and ended (ingesting the ended
    ones at once), and every :data:`HEARTBEAT_S` the running runs with their epochs."""
    total = len(handles)
    last_beat = [time.monotonic()]
    ended = [0]

    def on_update(changed: list[RunHandle]) -> None:
        for handle in changed:
            run = handle.run
            if handle.state == "running":
                say(
                    f"  start {run.full_name}"
                    + (f" (job {handle.job_id})" if handle.job_id else "")
                )
                continue
            if not handle.finished:
                continue
            state = run_state(run)
            if (run.path / "run.json").is_file():
                try:
                    ingest_run(store, run.path)
                except RunError as exc:  # one unreadable run must not stop the others
                    say(f"  cannot ingest {run.full_name}: {exc}")
            ended[0] += 1
            detail = state.state
            if state.state != "done" and (handle.error or state.error):
                detail += f" ({state.error or handle.error})"
            say(f"  [{ended[0]}/{total}] {detail:<6} {run.full_name}")
        if time.monotonic() - last_beat[0] >= HEARTBEAT_S:
            last_beat[0] = time.monotonic()
            running = [h for h in handles if h.state == "running"]
            if running:
                parts = []
                for h in running:
                    s = run_state(h.run)
                    parts.append(f"{h.run.name} epoch {s.epochs_done}/{s.epochs}")
                say("  training: " + ", ".join(parts))

    return on_update


def _wait_here(
    store: ResultsStore, runs: Sequence[PlannedRun], say: Callable[[str], None], poll_s: float
) -> None:
    """Wait for runs of this host that were already training when the sweep started (a job of
    an earlier sweep still alive), ingesting them when they end."""
    waiting = [r for r in runs if run_state(r).state == "running"]
    if waiting:
        say(
            f"  waiting for {len(waiting)} runs already training: "
            + ", ".join(r.name for r in waiting)
        )
    while waiting:
        time.sleep(poll_s)
        for run in list(waiting):
            if run_state(run).state != "running":
                ingest_run(store, run.path)
                waiting.remove(run)
