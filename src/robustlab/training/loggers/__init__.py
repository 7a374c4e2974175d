"""Live loggers (``train.loggers``): every per-epoch metric, and ``train.track_every``'s
per-iteration records, sent while a run trains to a dashboard that reads them as they come.

One logger per file, registered by name (:data:`LOGGERS`):

* ``tensorboard``: event files under ``RUN/tensorboard`` (``tensorboard --logdir runs``);
* ``wandb``: a Weights & Biases run under ``RUN/wandb`` (``WANDB_MODE=offline`` honoured).

They are optional extras (``pip install 'robustlab[tensorboard]'``); a missing package is a
one-line :class:`~robustlab.errors.ConfigError` when the config is validated, before anything
is written. The results store stays the record of a run: reports are drawn from it, never from
these logs (STYLE: results are data).

>>> loggers = open_loggers(["tensorboard"], LoggerContext(run_dir, run_id, config, 0, 0))
>>> loggers.log_epoch(metrics, iteration_records)   # after each epoch's checkpoint
>>> loggers.close()
"""

from __future__ import annotations

from . import tensorboard_logger, wandb_logger  # noqa: F401  (registration)
from ._base import (
    LOGGERS,
    LoggerContext,
    LoggerGroup,
    RunLogger,
    check_loggers,
    list_loggers,
    open_loggers,
)

__all__ = [
    "LOGGERS",
    "LoggerContext",
    "LoggerGroup",
    "RunLogger",
    "check_loggers",
    "list_loggers",
    "open_loggers",
]
