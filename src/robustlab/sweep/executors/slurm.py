"""The ``slurm`` executor: every run one Slurm job of a job array, submitted through submitit.

``robustlab sweep SPEC --executor slurm`` on a Slurm submit host (a login node) submits the runs
still to do as one job array (``submitit``, the standard Python client of Slurm), then follows the
jobs with ``squeue`` and ingests their run directories into the store as they end. The spec's
``[slurm]`` table says what each job asks for (:data:`SLURM_OPTIONS`)::

    [slurm]
    partition = "gpu"
    gpus_per_run = 1
    cpus_per_run = 8          # also the run's torch threads
    mem_gb = 32
    time_min = 720
    array_parallelism = 16    # runs at the same time (default: --workers)
    account = "my-lab"
    sbatch = { exclusive = false, "mail-type" = "END" }   # any other sbatch option
    setup = ["module load cuda/12.4"]

What a job does: :class:`SlurmRun`, a checkpointable callable in submitit's protocol, calls
:func:`robustlab.sweep.job.run_planned` (create or resume the run directory, train, write only
there: the submitting process ingests it, so the SQLite store is never written from the nodes).

**Preemption and time limits.** submitit asks Slurm to send SIGUSR2 ``signal_delay_s`` seconds
before a job is stopped (``--signal=USR2@90``: its time limit) and handles the signal in the job by
calling :meth:`SlurmRun.checkpoint`, which returns the same run to submit again; submitit requeues
the job (``scontrol requeue``, same job id) and the requeued job resumes the run from its last
checkpoint (written at the end of every epoch, as ``robustlab train --resume`` continues). A job
preempted by Slurm itself (``PreemptMode=REQUEUE``) or killed (node failure, SIGKILL) also resumes
from the last checkpoint when it runs again: requeued by Slurm, or submitted again by the next
``robustlab sweep``, which finds the run ``interrupted``.

**Following jobs.** Job states come from ``squeue`` (``sacct`` needs an accounting database that
small clusters lack); a job that left ``squeue`` is judged by its run directory. The job ids are
recorded in ``.sweep/logs/slurm/jobs.json``, so a later ``robustlab sweep`` does not submit a run
twice while its job is still queued or running: it follows that job instead. Ctrl-C stops the
*submitting* process only: the jobs keep running on the cluster (``robustlab sweep SPEC`` follows
them again, ``robustlab sweep status SPEC`` ingests what they wrote; ``scancel --name=SWEEP``
cancels them).

A run takes one process (one GPU at most): a multi-GPU run is ``torchrun ... robustlab train``
(see the README's "Multi-GPU"), not a sweep job.
"""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._io import atomic_write_text
from ...errors import ConfigError, RunError, did_you_mean
from ..plan import PlannedRun
from . import EXECUTORS, Executor, ExecutorSettings, RunHandle

if TYPE_CHECKING:
    from ..spec import SweepSpec


@dataclass(frozen=True)
class SlurmOption:
    """One key of the spec's ``[slurm]`` table.

    Attributes:
        parameter: the :class:`submitit.SlurmExecutor` parameter it sets.
        kinds: the TOML types it accepts.
        meaning: what it does (for the README and error messages).
    """

    parameter: str
    kinds: tuple[type, ...]
    meaning: str


SLURM_OPTIONS: dict[str, SlurmOption] = {
    "partition": SlurmOption("partition", (str,), "partition (unset: the cluster's default)"),
    "account": SlurmOption("account", (str,), "account the jobs are charged to"),
    "qos": SlurmOption("qos", (str,), "quality of service"),
    "constraint": SlurmOption("constraint", (str,), "node features required (--constraint)"),
    "gpus_per_run": SlurmOption("gpus_per_node", (int,), "GPUs of one run: 0 or 1 (default 0)"),
    "cpus_per_run": SlurmOption(
        "cpus_per_task", (int,), "CPU cores of one run, also its torch threads (default 1)"
    ),
    "mem_gb": SlurmOption("mem", (int, float), "memory of one run in GB (unset: the default)"),
    "time_min": SlurmOption(
        "time", (int,), "time limit of one job in minutes (unset: the partition's limit)"
    ),
    "array_parallelism": SlurmOption(
        "array_parallelism", (int,), "runs at the same time (default: --workers)"
    ),
    "sbatch": SlurmOption(
        "additional_parameters", (dict,), 'other sbatch options, as { "mail-type" = "END" }'
    ),
    "setup": SlurmOption("setup", (list,), "shell lines run before each job (module load ...)"),
    "max_requeue": SlurmOption(
        "max_num_timeout", (int,), "times a job reaching its time limit is requeued (default 3)"
    ),
    "signal_delay_s": SlurmOption(
        "signal_delay_s", (int,), "seconds before the time limit the job is signalled (90)"
    ),
    "python": SlurmOption("python", (str,), "the Python on the nodes (default: this one)"),
}

# squeue's states of a job that is not over (it may still start or run again).
WAITING_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        "SUSPENDED",
        "STOPPED",
        "RESIZING",
    }
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"})
# Seconds a squeue call may take before the cluster is reported unresponsive.
SQUEUE_TIMEOUT_S = 60


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[slurm]`` table, checked: known keys with values of the right type.

    Raises:
        ConfigError: an unknown key (with a "did you mean") or a value of the wrong type.
    """
    checked: dict[str, Any] = {}
    for key, value in options.items():
        option = SLURM_OPTIONS.get(key)
        if option is None:
            guess = did_you_mean(key, SLURM_OPTIONS)
            hint = f"did you mean 'slurm.{guess}'?" if guess else ""
            raise ConfigError(
                f"slurm.{key}",
                value,
                f"unknown key; {hint or 'valid: ' + ', '.join(SLURM_OPTIONS)}",
            )
        if isinstance(value, bool) or not isinstance(value, option.kinds):
            kinds = " or ".join(k.__name__ for k in option.kinds)
            raise ConfigError(f"slurm.{key}", value, f"must be a {kinds}: {option.meaning}")
        if option.kinds == (int,) and value < 0:
            raise ConfigError(f"slurm.{key}", value, "must be >= 0")
        checked[key] = value
    if checked.get("gpus_per_run", 0) > 1:
        raise ConfigError(
            "slurm.gpus_per_run",
            checked["gpus_per_run"],
            "a sweep job runs one process with at most one GPU; train a multi-GPU run with "
            "`torchrun --nproc-per-node K -m robustlab train` instead",
        )
    if "setup" in checked and not all(isinstance(line, str) for line in checked["setup"]):
        raise ConfigError("slurm.setup", checked["setup"], "must be a list of shell lines")
    return checked


class SlurmRun:
    """One sweep run as a Slurm job: a callable submitit pickles and runs on a node, and
    checkpointable in submitit's protocol (:meth:`checkpoint`)."""

    def __init__(self, run: PlannedRun, threads: int) -> None:
        self.run, self.threads = run, threads

    def __call__(self) -> str:
        from ..job import run_planned

        print(f"job {self.run.full_name} -> {self.run.run_dir}", file=sys.stderr, flush=True)
        status = run_planned(self.run, threads=self.threads)
        print(f"job {self.run.full_name}: {status}", file=sys.stderr, flush=True)
        return status

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called in the job by submitit on SIGUSR2 (preemption or the time limit near): the
        same run, to be requeued. Nothing to save here: the run's last checkpoint (the end of
        its last complete epoch) is where the requeued job resumes it."""
        import submitit

        print(f"job {self.run.full_name}: requeued", file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(SlurmRun(self.run, self.threads))


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """Runs as the tasks of a Slurm job array (see the module docstring)."""

    needs_cluster = True  # sbatch and squeue on this machine

    def __init__(self, settings: ExecutorSettings) -> None:
        super().__init__(settings)
        self.options = check_options(settings.options)
        try:
            import submitit  # noqa: F401  (checked here: the error names the fix)
        except ImportError:
            raise ConfigError(
                "--executor", "slurm", "needs submitit: pip install 'robustlab[slurm]'"
            ) from None
        if self.needs_cluster and (
            shutil.which("sbatch") is None or shutil.which("squeue") is None
        ):
            raise ConfigError(
                "--executor",
                "slurm",
                "sbatch/squeue not found: run the sweep on a Slurm submit host (a login node)",
            )
        self.folder = Path(settings.log_dir) / "slurm"
        self.threads = int(self.options.get("cpus_per_run", settings.threads or 1))

    # -- submission -------------------------------------------------------------------------

    def _submitit_executor(self, spec: SweepSpec) -> Any:
        import submitit

        o = self.options
        executor = submitit.SlurmExecutor(
            folder=self.folder / "%j",
            max_num_timeout=o.get("max_requeue", 3),
            python=o.get("python"),
        )
        threads = str(self.threads)
        setup = [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}", *o.get("setup", [])]
        parameters: dict[str, Any] = {
            "job_name": spec.name,
            "cpus_per_task": self.threads,
            "array_parallelism": o.get("array_parallelism", max(1, self.settings.workers)),
            "setup": setup,
            # submitit's default limit is 5 minutes, and it needs one (to tell a time limit
            # from a preemption): unset, the partition's own limit.
            "time": o.get("time_min") or partition_time_limit(o.get("partition")),
        }
        for key in ("partition", "account", "qos", "constraint", "signal_delay_s"):
            if key in o:
                parameters[SLURM_OPTIONS[key].parameter] = o[key]
        if o.get("gpus_per_run"):
            parameters["gpus_per_node"] = o["gpus_per_run"]
        if "mem_gb" in o:
            parameters["mem"] = f"{round(o['mem_gb'] * 1024)}M"
        if "sbatch" in o:
            parameters["additional_parameters"] = dict(o["sbatch"])
        executor.update_parameters(**parameters)
        return executor

    def submit(self, runs: Sequence[PlannedRun], spec: SweepSpec) -> list[RunHandle]:
        """Submit ``runs`` as one job array; a run whose recorded job is still queued or
        running is followed instead of submitted again."""
        recorded = self._recorded()
        states = self._job_states([]) if recorded else {}
        handles: dict[str, RunHandle] = {}
        fresh = []
        for run in runs:
            job = recorded.get(run.name)
            # The id must still be this sweep's job (ids restart with a fresh slurmctld state).
            if job is not None and states.get(job["job_id"]) in {
                (state, spec.name) for state in WAITING_STATES | RUNNING_STATES
            }:
                handles[run.name] = self._handle(run, job["job_id"], job.get("log"))
            else:
                fresh.append(run)
        if fresh:
            executor = self._submitit_executor(spec)
            try:
                with executor.batch():
                    jobs = [executor.submit(SlurmRun(run, self.threads)) for run in fresh]
            except (subprocess.CalledProcessError, OSError) as exc:
                detail = getattr(exc, "output", b"") or getattr(exc, "stderr", b"") or exc
                if isinstance(detail, bytes):
                    detail = detail.decode(errors="replace")
                raise RunError(f"sbatch refused the job array: {str(detail).strip()}") from None
            for run, job in zip(fresh, jobs, strict=True):
                handles[run.name] = self._handle(run, str(job.job_id), str(job.paths.stdout))
                handles[run.name].native = job
                recorded[run.name] = {"job_id": str(job.job_id), "log": str(job.paths.stdout)}
            self._record(recorded)
        return [handles[run.name] for run in runs]

    def adopt(self, runs: Sequence[PlannedRun], spec: SweepSpec) -> list[RunHandle]:
        """Runs recorded ``running`` on another node: follow their job while it is queued or
        running; submit the run again (it resumes) when its recorded job is over (a SIGKILL or
        a node failure leaves ``running`` in its ``run.json``). Runs without a recorded job are
        not this executor's and are left alone."""
        recorded = self._recorded()
        mine = [run for run in runs if run.name in recorded]
        return self.submit(mine, spec) if mine else []

    def _handle(self, run: PlannedRun, job_id: str, log: str | None) -> RunHandle:
        return RunHandle(run, state="pending", job_id=job_id, log=Path(log) if log else None)

    # -- following ----------------------------------------------------------------------------

    def wait(
        self,
        handles: Sequence[RunHandle],
        on_update: Callable[[list[RunHandle]], None] | None = None,
    ) -> None:
        """Poll ``squeue`` every ``poll_s`` until every job is over. Ctrl-C leaves the jobs
        running (see the module docstring)."""
        live = [h for h in handles if not h.finished]
        while live:
            states = self._job_states(live)
            changed = [h for h in live if self._update(h, states.get(str(h.job_id), (None, ""))[0])]
            if on_update is not None:
                on_update(changed)
            live = [h for h in live if not h.finished]
            if live:
                time.sleep(self.settings.poll_s)

    def _update(self, handle: RunHandle, slurm_state: str | None) -> bool:
        """Set ``handle.state`` from the job's squeue state; whether it changed."""
        before = handle.state
        if slurm_state in WAITING_STATES:
            handle.state = "pending"
        elif slurm_state in RUNNING_STATES:
            handle.state = "running"
        elif slurm_state == "COMPLETED" or (slurm_state is None and _finished(handle.run)):
            handle.state = "done"
        else:  # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, ... or gone
            handle.state = "failed"
            what = f"Slurm state {slurm_state}" if slurm_state else "job gone from squeue"
            handle.error = f"job {handle.job_id}: {what}" + (
                f"; log: {handle.log}" if handle.log else ""
            )
        return handle.state != before

    def cancel(self, handles: Sequence[RunHandle]) -> None:
        """``scancel`` the handles' jobs (a requeued run's job included)."""
        ids = [str(h.job_id) for h in handles if h.job_id and not h.finished]
        if ids:
            subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=60)

    def _job_states(self, handles: Sequence[RunHandle]) -> dict[str, tuple[str, str]]:
        """``{job id: (Slurm state, job name)}`` of the jobs known (``handles``: those followed)."""
        return self._squeue()

    def _squeue(self) -> dict[str, tuple[str, str]]:
        """``{job id: (state, job name)}`` of this user's jobs that slurmctld still knows (array
        tasks one by one; ended jobs for ``MinJobAge`` seconds)."""
        command = [
            "squeue",
            "--array",
            "--noheader",
            "--states=all",
            "--format=%i|%T|%j",
            f"--user={getpass.getuser()}",
        ]
        try:
            out = subprocess.run(
                command, check=True, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S
            ).stdout
        except subprocess.TimeoutExpired:
            raise RunError(f"squeue did not answer in {SQUEUE_TIMEOUT_S} s") from None
        except subprocess.CalledProcessError as exc:
            raise RunError(f"squeue failed: {exc.stderr.strip() or exc}") from None
        states = {}
        for line in out.splitlines():
            job_id, _, rest = line.strip().partition("|")
            state, _, name = rest.partition("|")
            if job_id:
                states[job_id] = (state.split()[0] if state else "", name)
        return states

    # -- the record of submitted jobs -----------------------------------------------------------

    @property
    def _record_file(self) -> Path:
        return self.folder / "jobs.json"

    def _recorded(self) -> dict[str, dict[str, Any]]:
        """``{run name: {"job_id", "log"}}`` of the jobs this sweep submitted."""
        try:
            return json.loads(self._record_file.read_text())
        except (OSError, ValueError):
            return {}

    def _record(self, jobs: Mapping[str, Mapping[str, Any]]) -> None:
        self._record_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._record_file, json.dumps(jobs, indent=1, sort_keys=True))


# submitit's local job states as the Slurm states the executor understands: a process that
# ended by a signal failed; one that exited (0 or not) is judged by its run directory.
_LOCAL_STATES = {"RUNNING": "RUNNING", "INTERRUPTED": "FAILED"}


@EXECUTORS.register("submitit-local")
class SubmititLocalExecutor(SlurmExecutor):
    """The Slurm executor's jobs run by submitit's ``LocalExecutor`` on this machine, without a
    cluster: the same callable (:class:`SlurmRun`), pickling, ``[slurm]`` checks and run-directory
    ingest, for trying a spec and for testing where no Slurm can start. Every run starts at once
    (submitit's local executor has no array parallelism); a later sweep cannot follow the jobs of
    an earlier one (they are this process's children), so it submits unfinished runs again.
    """

    needs_cluster = False

    def _submitit_executor(self, spec: SweepSpec) -> Any:
        import submitit

        o = self.options
        executor = submitit.LocalExecutor(
            folder=self.folder, max_num_timeout=o.get("max_requeue", 3)
        )
        threads = str(self.threads)
        executor.update_parameters(
            timeout_min=o.get("time_min") or UNLIMITED_TIME_MIN,
            setup=[f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"],
        )
        return executor

    def _job_states(self, handles: Sequence[RunHandle]) -> dict[str, tuple[str, str]]:
        return {
            str(h.job_id): (_LOCAL_STATES.get(h.native.state, ""), "")
            for h in handles
            if h.native is not None and h.native.state in _LOCAL_STATES
        }

    def cancel(self, handles: Sequence[RunHandle]) -> None:
        for handle in handles:
            if handle.native is not None and not handle.finished:
                handle.native.cancel(check=False)


# A job's limit when neither the spec nor the partition sets one (minutes): a week.
UNLIMITED_TIME_MIN = 7 * 24 * 60


def partition_time_limit(partition: str | None) -> int:
    """The time limit of ``partition`` (the default partition when ``None``), in minutes, from
    ``sinfo``; :data:`UNLIMITED_TIME_MIN` when it has none or cannot be read."""
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--format=%P|%l"],
            check=True,
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT_S,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return UNLIMITED_TIME_MIN
    for line in out.splitlines():
        name, _, limit = line.strip().partition("|")
        if (partition is None and name.endswith("*")) or name.rstrip("*") == partition:
            return slurm_minutes(limit) or UNLIMITED_TIME_MIN
    return UNLIMITED_TIME_MIN


def slurm_minutes(text: str) -> int | None:
    """A Slurm duration (``30``, ``2:00:00``, ``1-12``, ``1-12:30:00``) in whole minutes;
    ``None`` for ``infinite``, ``n/a`` or anything else unreadable."""
    days, _, clock = text.strip().rpartition("-")
    try:
        parts = [int(part) for part in clock.split(":")]
        day_count = int(days) if days else 0
    except ValueError:
        return None
    if len(parts) > 3:
        return None
    if days:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = [*parts, 0, 0][:3]
    else:  # minutes, minutes:seconds, hours:minutes:seconds
        hours, minutes, seconds = {1: [0, *parts, 0], 2: [0, *parts], 3: parts}[len(parts)]
    return day_count * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def _finished(run: PlannedRun) -> bool:
    """Whether the run's directory says it finished (the truth once its job left squeue)."""
    try:
        info = json.loads((run.path / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("status") == "finished"
