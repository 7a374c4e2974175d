"""TensorBoard: ``torch.utils.tensorboard`` event files in the run directory.

``RUN/tensorboard`` holds the per-epoch metrics (step = epoch, tags = the ``metrics.jsonl``
names: ``test_rob_acc``, ``nat_risk``, ``lipschitz``, ...); ``RUN/tensorboard/iterations`` the
``train.track_every`` records (step = iteration, tags ``iteration/grad_norm``, ...), a second
writer because its steps count iterations, not epochs. ``tensorboard --logdir runs`` shows every
run while it trains.

A resumed run logs its history again, as its last checkpoint holds it (as ``metrics.jsonl`` and
the store are rewritten from it), through writers opened with ``purge_step`` at the first step:
TensorBoard drops what earlier processes logged, so each epoch (and iteration) appears once,
even one a killed process had checkpointed but not yet logged, or logged but not checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._base import LOGGERS, LoggerContext, RunLogger

SUBDIR = "tensorboard"


@LOGGERS.register("tensorboard", module="tensorboard", extra="tensorboard")
class TensorBoardLogger(RunLogger):
    """Scalars to ``RUN/tensorboard`` (epochs) and ``RUN/tensorboard/iterations``."""

    def __init__(self, context: LoggerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.context = context
        self.root = context.run_dir / SUBDIR
        # On a resume, from step 1 (epochs count from 1): every earlier event is replaced.
        self.epochs = SummaryWriter(str(self.root), purge_step=1 if context.resumed else None)
        if not context.resumed:
            self.epochs.add_text("config", _config_markdown(context.config), global_step=0)
        self._iterations: Any = None  # opened at the first record (most runs have none)

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.epochs.add_scalar(tag, value, global_step=epoch)

    def log_iteration(self, iteration: int, scalars: Mapping[str, float]) -> None:
        if self._iterations is None:
            self._iterations = self._writer_class(
                str(self.root / "iterations"), purge_step=0 if self.context.resumed else None
            )
        for tag, value in scalars.items():
            self._iterations.add_scalar(f"iteration/{tag}", value, global_step=iteration)

    def resume(
        self,
        epochs: Sequence[tuple[int, Mapping[str, float]]],
        iterations: Sequence[tuple[int, Mapping[str, float]]],
    ) -> None:
        for iteration, scalars in iterations:
            self.log_iteration(iteration, scalars)
        for epoch, scalars in epochs:
            self.log_epoch(epoch, scalars)

    def flush(self) -> None:
        for writer in (self.epochs, self._iterations):
            if writer is not None:
                writer.flush()

    def close(self) -> None:
        for writer in (self.epochs, self._iterations):
            if writer is not None:
                writer.close()


def _config_markdown(config: Mapping[str, Any]) -> str:
    """The resolved config as a Markdown table (TensorBoard's text tab renders Markdown)."""
    rows = ["| key | value |", "|---|---|"]

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping) and value:
                walk(value, f"{prefix}{key}.")
            else:
                rows.append(f"| {prefix}{key} | {value} |")

    walk(config, "")
    return "\n".join(rows)
