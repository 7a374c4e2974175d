"""What a sweep hands to an executor: one :class:`PlannedRun` per run of the grid.

A planned run is plain data (names, the axis values, the resolved config as a dict, the absolute
run directory), so it pickles (submitit) and round-trips through JSON (the local executor's
subprocesses read it from a file). It is executed by :func:`robustlab.sweep.job.run_planned`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEED_KEY = "seed"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep.

    Attributes:
        sweep: the sweep's name (``wu-table1``).
        name: the run's name inside the sweep (``trades-w10-lam12-s0``): stable, readable, unique.
        values: the axis keys this run sets and their values (seed included as ``seed``).
        config: the run's resolved, validated config (:meth:`RunConfig.to_dict`).
        run_dir: absolute path of the run directory (``--out/<sweep>/<name>``); the only place
            a job writes (the submitting process ingests it into the store).
    """

    sweep: str
    name: str
    values: dict[str, Any]
    config: dict[str, Any]
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        """``<sweep>/<name>``: the run's name in the store and in progress lines."""
        return f"{self.sweep}/{self.name}"

    @property
    def cell(self) -> dict[str, Any]:
        """The run's grid cell: every axis value except the seed (runs of one cell aggregate)."""
        return {k: v for k, v in self.values.items() if k != SEED_KEY}

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PlannedRun:
        return cls(**json.loads(text))
