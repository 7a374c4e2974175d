"""Where each run of a sweep stands, read from its run directory (the truth; the store follows).

States: ``done`` (finished), ``running`` (its process is alive, or runs elsewhere: another host,
a Slurm node), ``interrupted`` (stopped, or recorded ``running`` by a process of this host that
is gone: a SIGKILL, a crash of the machine; resumed by the next ``robustlab sweep``), ``failed``
(the run raised; retried by ``--retry-failed``) and ``pending`` (no run directory yet).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..rundir import RunDirectory, process_alive
from .ingest import read_history
from .plan import PlannedRun

STATES = ("done", "running", "interrupted", "failed", "pending")


@dataclass(frozen=True)
class RunState:
    """A planned run and what its directory says."""

    run: PlannedRun
    state: str
    epochs_done: int = 0
    error: str | None = None
    info: dict[str, Any] | None = None

    @property
    def epochs(self) -> int:
        return int(self.run.config["train"]["epochs"])


def run_state(run: PlannedRun) -> RunState:
    """The state of ``run`` (see the module docstring)."""
    path = run.path
    if not (path / "run.json").is_file() or not (path / "config.toml").is_file():
        return RunState(run, "pending")
    directory = RunDirectory.open(path)
    try:
        info = directory.read_info()
        epochs = len(read_history(directory))
    except ValueError:  # unreadable files: interrupted (its resume rewrites them)
        return RunState(run, "interrupted")
    status = info.get("status", "running")
    if status == "running":
        alive = process_alive(info.get("pid"), info.get("host"))
        # No pid yet on this host: the job died between creating the directory and training.
        here = info.get("host") == socket.gethostname()
        if alive is False or (alive is None and here and info.get("pid") is None):
            status = "interrupted"
    state = {"finished": "done"}.get(status, status)
    if state not in STATES:
        state = "interrupted"
    return RunState(run, state, epochs, info.get("error"), info)


def sweep_states(runs: Sequence[PlannedRun]) -> list[RunState]:
    return [run_state(run) for run in runs]


def count_states(states: Sequence[RunState]) -> dict[str, int]:
    """``{"done": 3, "running": 1, ...}`` in :data:`STATES` order (zeros included)."""
    return {s: sum(1 for r in states if r.state == s) for s in STATES}
