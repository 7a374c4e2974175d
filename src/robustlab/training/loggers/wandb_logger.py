"""Weights & Biases: one wandb run per robustlab run, its files under ``RUN/wandb``.

The wandb run's id is the robustlab run id (characters wandb refuses replaced by ``-``) with
``resume="allow"``, so a resumed robustlab run continues the same wandb run. Epoch metrics are
plotted against ``epoch``, ``train.track_every``'s records (``iteration/grad_norm``, ...)
against ``iteration``. ``WANDB_MODE=offline`` (read by wandb itself) keeps everything on disk,
for ``wandb sync RUN/wandb/offline-run-*`` later; ``WANDB_PROJECT`` names the project
(default ``robustlab``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ...errors import RunError
from ._base import LOGGERS, LoggerContext, RunLogger


def wandb_id(run_id: str) -> str:
    """``sweep/w8-s0`` -> ``sweep-w8-s0``: wandb ids may not hold ``/`` (and a few others)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)


@LOGGERS.register("wandb", module="wandb", extra="wandb")
class WandbLogger(RunLogger):
    """Scalars to a wandb run under ``RUN/wandb``."""

    def __init__(self, context: LoggerContext) -> None:
        import wandb

        run_id = wandb_id(context.run_id)
        try:
            self.run: Any = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "robustlab"),
                dir=str(context.run_dir),
                id=run_id,
                name=context.run_id,
                config=dict(context.config),
                resume="allow",
                # robustlab's own output (stdout JSON, progress on stderr) stays unwrapped.
                settings=wandb.Settings(console="off"),
            )
        except wandb.errors.Error as exc:  # no login, no network: one line, not a traceback
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(
                f"train.loggers: wandb could not start ({first}); run `wandb login`, "
                "or set WANDB_MODE=offline to log to the run directory only"
            ) from None
        self.run.define_metric("epoch")
        self.run.define_metric("iteration")
        self.run.define_metric("iteration/*", step_metric="iteration")
        self._epoch_keys: set[str] = set()

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        for key in scalars.keys() - self._epoch_keys:
            self.run.define_metric(key, step_metric="epoch")
            self._epoch_keys.add(key)
        self.run.log({"epoch": epoch, **scalars})

    def log_iteration(self, iteration: int, scalars: Mapping[str, float]) -> None:
        self.run.log({"iteration": iteration, **{f"iteration/{k}": v for k, v in scalars.items()}})

    def close(self) -> None:
        self.run.finish()
