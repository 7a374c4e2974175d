"""Sweeps: a grid of runs in one TOML file, executed locally or on Slurm, aggregated in the store.

* :mod:`.spec`: the spec file and its expansion into named runs (:class:`~.plan.PlannedRun`).
* :mod:`.executors`: where runs execute (registry: ``local``, ``slurm``) and the interface.
* :mod:`.job`: what one job does (create or resume one run directory; no store writes).
* :mod:`.ingest`: run directories into the store (idempotent; the store can be rebuilt).
* :mod:`.state`: which runs are done, running, interrupted, failed or pending.
* :mod:`.aggregate`: per-cell mean, std and count of every final metric; tables.
* :mod:`.lam_tuning`: λ-tuning accounting (Wu et al. Table 3): chosen λ, accuracy, device-hours.
* :mod:`.presets`: the seeds' experiments as specs, at published and tiny scale.
"""

from .plan import PlannedRun
from .spec import SweepSpec, expand, load_spec, parse_spec

__all__ = ["PlannedRun", "SweepSpec", "expand", "load_spec", "parse_spec"]
