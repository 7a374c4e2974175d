"""The logger interface, its registry, and the group the training loop calls."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...registry import Registry


@dataclass(frozen=True)
class LoggerContext:
    """What a logger is opened with.

    Attributes:
        run_dir: the run directory (loggers write under it).
        run_id: the run's id (a resumed run keeps it: the logger continues the same log).
        config: the resolved config, as a dict.
        start_epoch: epochs already done (0 for a fresh run; the checkpoint's on a resume).
        start_iteration: iterations already done (likewise).
    """

    run_dir: Path
    run_id: str
    config: Mapping[str, Any]
    start_epoch: int = 0
    start_iteration: int = 0

    @property
    def resumed(self) -> bool:
        return self.start_epoch > 0 or self.start_iteration > 0


class RunLogger:
    """One live logger: told each epoch's metrics and iteration records, in order."""

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        """The numbers of epoch ``epoch`` (1-based, as in ``metrics.jsonl``)."""
        raise NotImplementedError

    def log_iteration(self, iteration: int, scalars: Mapping[str, float]) -> None:
        """The numbers of one tracked iteration (0-based over the run, ``iterations.jsonl``)."""
        raise NotImplementedError

    def resume(
        self,
        epochs: Sequence[tuple[int, Mapping[str, float]]],
        iterations: Sequence[tuple[int, Mapping[str, float]]],
    ) -> None:
        """A resumed run's history so far, as its last checkpoint holds it: a logger that can
        replace what an earlier process logged (TensorBoard's ``purge_step``) logs it again, so
        its log equals the run's record even if that process died before logging an epoch it
        had checkpointed; the default keeps the earlier log as it is."""

    def flush(self) -> None:
        """Make what was logged visible to a dashboard reading now."""

    def close(self) -> None:
        """Flush and release the logger's files and processes."""


# Factories ``(LoggerContext) -> RunLogger``; meta: the package it needs and the extra naming it.
LOGGERS: Registry[Callable[[LoggerContext], RunLogger]] = Registry("logger", "train.loggers")


def list_loggers(pattern: str | None = None) -> list[str]:
    """Names of the registered loggers."""
    return LOGGERS.names(pattern)


def check_loggers(names: Iterable[str]) -> None:
    """Every name is a logger whose package is installed.

    Raises:
        UnknownNameError: a name is not registered (the valid ones are listed).
        ConfigError: its package is missing; the message names the extra that installs it.
    """
    for name in names:
        LOGGERS.get(name)
        meta = LOGGERS.meta(name)
        if importlib.util.find_spec(meta["module"]) is None:
            raise ConfigError(
                "train.loggers",
                name,
                f"needs the {meta['module']} package: pip install 'robustlab[{meta['extra']}]'",
            )


def scalars(record: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, float]:
    """The finite numbers of a metrics or iteration record (booleans as 0/1), minus ``skip``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in skip or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class LoggerGroup:
    """The run's loggers, called by the training loop after each epoch is recorded."""

    def __init__(self, loggers: Sequence[RunLogger]) -> None:
        self.loggers = list(loggers)
        self._closed = False

    def log_epoch(
        self, metrics: Mapping[str, Any], iterations: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """One epoch's metrics (a ``metrics.jsonl`` line) and its per-iteration records."""
        epoch = int(metrics["epoch"])
        for record in iterations:
            numbers = scalars(record, skip=("iteration", "epoch"))
            for logger in self.loggers:
                logger.log_iteration(int(record["iteration"]), numbers)
        numbers = scalars(metrics, skip=("epoch",))
        for logger in self.loggers:
            logger.log_epoch(epoch, numbers)
            logger.flush()  # visible at once, not at the writer's next timed flush

    def resume(
        self, history: Sequence[Mapping[str, Any]], iterations: Sequence[Mapping[str, Any]]
    ) -> None:
        """A resumed run's ``metrics.jsonl`` and ``iterations.jsonl`` (see
        :meth:`RunLogger.resume`)."""
        epochs = [(int(m["epoch"]), scalars(m, skip=("epoch",))) for m in history]
        tracked = [(int(r["iteration"]), scalars(r, ("iteration", "epoch"))) for r in iterations]
        for logger in self.loggers:
            logger.resume(epochs, tracked)
            logger.flush()

    def close(self) -> None:
        """Close every logger (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        for logger in self.loggers:
            logger.close()


def open_loggers(names: Sequence[str], context: LoggerContext) -> LoggerGroup:
    """The loggers ``names`` (``train.loggers``), opened for the run of ``context``."""
    check_loggers(names)
    return LoggerGroup([LOGGERS.create(name, context) for name in dict.fromkeys(names)])
