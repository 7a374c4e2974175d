"""The ``local`` executor: runs as separate processes on this machine, ``workers`` at a time.

Each run is one ``python -m robustlab.sweep.job PLAN.json`` process (a fresh interpreter: no
state leaks between runs, and a crash or a kill ends one run, not the sweep). Two resources are
shared out so that workers do not fight over them:

* CPU threads: each worker gets ``max(1, cores // workers)`` cores (``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``, and the run's share for its ``threads`` rule, which uses one thread for a
  small model and all of the share for a large one: :mod:`robustlab._threads`); by default torch
  starts one thread per core in every process, and N processes x all cores threads
  oversubscribe the machine (on 2 cores, two workers with 2 threads each run slower than one
  after the other).
* GPUs: with several visible GPUs, worker slot ``i`` sees only GPU ``i mod count``
  (``CUDA_VISIBLE_DEVICES``), so runs are spread round-robin and never share a device while
  another is idle; ``settings.devices`` overrides the list.

A worker is started with a parent-death signal (Linux ``PR_SET_PDEATHSIG``: SIGTERM), so a sweep
killed with SIGKILL does not leave orphans training on: they mark their runs ``interrupted``
and the next ``robustlab sweep`` resumes them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..._threads import available_cores
from ..plan import PlannedRun
from . import EXECUTORS, Executor, ExecutorSettings, RunHandle

if TYPE_CHECKING:
    from ..spec import SweepSpec

# How long terminated workers get to mark their runs interrupted before they are killed.
TERMINATE_GRACE_S = 20.0


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """``max(1, cores // workers)``: the share of the cores each worker's torch may use."""
    return max(1, (cores or available_cores()) // max(1, workers))


def visible_gpus() -> list[str]:
    """Indices of the GPUs this process sees (``CUDA_VISIBLE_DEVICES`` respected)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no CUDA build, no driver
        count = 0
    return [str(i) for i in range(count)]


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the sweep process dies."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux / no glibc: orphans finish their run instead
        pass


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Separate processes on this machine (see the module docstring)."""

    def __init__(self, settings: ExecutorSettings) -> None:
        super().__init__(settings)
        self.workers = max(1, settings.workers)
        self.threads = settings.threads or threads_per_worker(self.workers)
        devices = settings.devices if settings.devices is not None else visible_gpus()
        self.gpus = [d.removeprefix("cuda:") for d in devices]

    def submit(self, runs: Sequence[PlannedRun], spec: SweepSpec) -> list[RunHandle]:
        plans = Path(self.settings.log_dir) / "plans"
        plans.mkdir(parents=True, exist_ok=True)
        handles = []
        for run in runs:
            plan = plans / f"{run.name}.json"
            plan.write_text(run.to_json())
            log = Path(self.settings.log_dir) / f"{run.name}.log"
            handles.append(RunHandle(run, log=log, native=None))
        return handles

    def _start(self, handle: RunHandle, slot: int) -> None:
        plan = Path(self.settings.log_dir) / "plans" / f"{handle.run.name}.json"
        env = dict(os.environ)
        threads = str(self.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        command = [sys.executable, "-m", "robustlab.sweep.job", str(plan), "--threads", threads]
        assert handle.log is not None
        with handle.log.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        handle.native = (process, slot)
        handle.job_id = str(process.pid)
        handle.state = "running"

    def wait(
        self,
        handles: Sequence[RunHandle],
        on_update: Callable[[list[RunHandle]], None] | None = None,
    ) -> None:
        queue = [h for h in handles if not h.finished]
        running: list[RunHandle] = []
        free = list(range(self.workers))
        try:
            while queue or running:
                changed: list[RunHandle] = []
                while queue and free:
                    handle = queue.pop(0)
                    self._start(handle, free.pop(0))
                    running.append(handle)
                    changed.append(handle)
                for handle in list(running):
                    process, slot = handle.native
                    code = process.poll()
                    if code is None:
                        continue
                    handle.returncode = code
                    handle.state = "done" if code == 0 else "failed"
                    if code != 0:
                        handle.error = f"exit status {code}; log: {handle.log}"
                    running.remove(handle)
                    free.append(slot)
                    changed.append(handle)
                if on_update is not None:
                    on_update(changed)
                if queue and free:
                    continue  # a slot just freed: start the next run now
                if running:
                    time.sleep(self.settings.poll_s)
        except BaseException:
            self.cancel(running)
            raise

    def cancel(self, handles: Sequence[RunHandle]) -> None:
        """SIGTERM the running workers (they mark their runs interrupted), then wait for them."""
        live = [h.native[0] for h in handles if h.native is not None and h.native[0].poll() is None]
        for process in live:
            process.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for process in live:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
