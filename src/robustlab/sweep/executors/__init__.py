"""Executors: where and how the runs of a sweep are executed (a registry, as models are).

The interface, for every executor (``local`` here, ``slurm`` through submitit):

* construction: ``EXECUTORS.create(name, settings)`` with an :class:`ExecutorSettings` (worker
  count, devices, the spec's own table for that executor such as ``[slurm]``, a log directory).
* ``submit(runs, spec) -> list[RunHandle]``: hand the runs over and return at once, one handle
  per run, in the order given. The local executor only queues them (its workers start in
  ``wait``); the Slurm executor submits a job array.
* ``wait(handles, on_update)``: block until every handle is ``done`` or ``failed``, calling
  ``on_update(changed)`` with the handles whose state changed, at the latest every
  ``settings.poll_s`` seconds (with an empty list when nothing changed), so the sweep can ingest
  run directories as they progress. A ``KeyboardInterrupt`` inside ``wait`` stops the work the
  executor started here (the local executor terminates its workers, which mark their runs
  interrupted); the next ``robustlab sweep`` resumes them.
* ``adopt(runs, spec) -> list[RunHandle]``: handles for runs found ``running`` on another host
  when the sweep starts (jobs an earlier, killed or detached, sweep submitted), so ``wait``
  follows them (default: none; the sweep then reports them running without waiting). Runs found
  running on this host are watched by the sweep itself through their ``run.json``.
* ``cancel(handles)``: stop what is still pending or running (default: nothing to do).

What a job does is the same everywhere: :func:`robustlab.sweep.job.run_planned` (a picklable
function of a :class:`~robustlab.sweep.plan.PlannedRun`) creates or resumes the run directory and
trains with no store: **a job writes only its run directory**. The submitting process ingests run
directories into the store (:mod:`robustlab.sweep.ingest`), so one machine writes the SQLite file
(SQLite's locking is unreliable on network filesystems) and the store can be rebuilt from the
run directories. A job's state as the executor sees it (a process exit code, a Slurm job state) is
only advisory: what counts is ``run.json`` in the run directory, read by the sweep after ``wait``.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...registry import Registry
from ..plan import PlannedRun

if TYPE_CHECKING:
    from ..spec import SweepSpec

# States of a handle, in the order a run goes through them.
HANDLE_STATES = ("pending", "running", "done", "failed")


@dataclass
class RunHandle:
    """An executor's view of one submitted run.

    Attributes:
        run: the planned run.
        state: one of :data:`HANDLE_STATES` (``done``: the job ended with success; ``failed``:
            it ended otherwise: an exception, a signal, a Slurm failure or cancellation).
        job_id: the executor's id of the job (a process id, a Slurm job id), once known.
        returncode: the job's exit status (local), when known.
        error: one line saying why the job failed, when known.
        log: the job's log file (stdout and stderr), when there is one.
    """

    run: PlannedRun
    state: str = "pending"
    job_id: str | None = None
    returncode: int | None = None
    error: str | None = None
    log: Path | None = None
    native: Any = field(default=None, repr=False)  # the executor's own object (Popen, Job)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


@dataclass(frozen=True)
class ExecutorSettings:
    """What every executor is created with.

    Attributes:
        workers: runs at the same time (local: processes; Slurm: the array's parallelism, unless
            the ``[slurm]`` table sets ``array_parallelism``).
        log_dir: where job logs (and the Slurm executor's submitit folder) go.
        options: the spec's table for this executor (``[slurm]``: partition, gpus_per_run, ...);
            empty for ``local``.
        devices: devices to assign round-robin (``["cuda:0", "cuda:1"]``); ``None``: the runs'
            own ``device`` key decides.
        poll_s: how often ``wait`` looks at its jobs, in seconds.
        threads: CPU cores per run (a run's ``threads = 0`` uses one of them or all, by its
            model's size); ``None``: the executor divides the cores between workers.
    """

    workers: int = 1
    log_dir: Path = Path(".")
    options: Mapping[str, Any] = field(default_factory=dict)
    devices: Sequence[str] | None = None
    poll_s: float = 1.0
    threads: int | None = None


class Executor(ABC):
    """Executes the runs of a sweep (see the module docstring for the contract)."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    @abstractmethod
    def submit(self, runs: Sequence[PlannedRun], spec: SweepSpec) -> list[RunHandle]:
        """Hand ``runs`` over; one handle per run, in order; returns without waiting."""

    @abstractmethod
    def wait(
        self,
        handles: Sequence[RunHandle],
        on_update: Callable[[list[RunHandle]], None] | None = None,
    ) -> None:
        """Block until every handle is finished, calling ``on_update`` as they change."""

    def adopt(self, runs: Sequence[PlannedRun], spec: SweepSpec) -> list[RunHandle]:
        """Handles for runs that were already ``running`` on another host when the sweep started
        (jobs an earlier sweep submitted and that still run), so ``wait`` follows them too.
        Default: none (the sweep reports them as running and does not wait for them)."""
        return []

    def cancel(self, handles: Sequence[RunHandle]) -> None:  # noqa: B027  (optional hook)
        """Stop the handles' jobs that are still pending or running."""


EXECUTORS: Registry[Callable[[ExecutorSettings], Executor]] = Registry("executor", "--executor")


def create_executor(name: str, settings: ExecutorSettings) -> Executor:
    """The executor registered as ``name`` (``local``, ``slurm``), created with ``settings``."""
    return EXECUTORS.create(name, settings)


def _register_builtin() -> None:
    """Import the executor modules for their registration (each imports its engine, such as
    submitit, only when it is used)."""
    for module in ("local", "slurm"):
        if importlib.util.find_spec(f"{__name__}.{module}") is not None:
            importlib.import_module(f"{__name__}.{module}")


_register_builtin()

__all__ = [
    "EXECUTORS",
    "HANDLE_STATES",
    "Executor",
    "ExecutorSettings",
    "RunHandle",
    "create_executor",
]
