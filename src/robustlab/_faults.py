"""Fault injection for the reliability tests (test-only; costs one attribute read when unset).

``ROBUSTLAB_FAULT`` names where a run should fail, so that "killed while the checkpoint is
half-written" or "the disk filled up while the store was written" can be reproduced exactly
instead of hoping a randomly timed ``kill -9`` lands there::

    ROBUSTLAB_FAULT=checkpoint-write:3           SIGKILL itself half-way through the 3rd checkpoint file
    ROBUSTLAB_FAULT=store-write:5:enospc         the 5th store transaction fails with "no space left"
    ROBUSTLAB_FAULT=loss:20+:nan                 the 20th and every later training loss is NaN

A spec is ``POINT:N[+][:ACTION]``, several joined by commas. ``N`` counts the occurrences of
``POINT`` in this process (from 1); ``N+`` fires at the N-th and every later one. The points:

==================  ==========================================================================
``checkpoint-write``  writing a checkpoint file (last, best, snapshots), half of it in the temp file
``metrics-write``     appending an epoch's line to ``metrics.jsonl``
``store-write``       a store transaction that wrote something, before it commits
``train-step``        the start of a training step (inside an epoch)
``loss``              a training step's loss (actions ``nan`` and ``inf`` replace it)
==================  ==========================================================================

Actions: ``kill`` (the default: SIGKILL this process, which nothing can catch), ``enospc``
(raise ``OSError(ENOSPC)``, a full disk), ``nan`` and ``inf``. Nothing in robustlab sets the
variable; it exists for ``tests/test_faults*.py`` and for anyone reproducing a failure by hand.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from dataclasses import dataclass

ENV = "ROBUSTLAB_FAULT"
POINTS = ("checkpoint-write", "metrics-write", "store-write", "train-step", "loss")
ACTIONS = ("kill", "enospc", "nan", "inf")


@dataclass
class _Fault:
    point: str
    at: int
    repeat: bool
    action: str


# Read by every hook first: False unless a fault is configured (the hooks then cost nothing).
ACTIVE = False
_faults: list[_Fault] = []
_counts: dict[str, int] = {}


def configure(spec: str | None) -> None:
    """Arm the faults of ``spec`` (the ``ROBUSTLAB_FAULT`` syntax; empty or None: none) and
    reset the occurrence counts. Tests running in-process call this instead of the variable."""
    global ACTIVE
    _faults.clear()
    _counts.clear()
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        fields = part.split(":")
        if len(fields) not in (2, 3) or fields[0] not in POINTS:
            raise ValueError(
                f"{ENV}={spec!r}: {part!r} is not POINT:N[+][:ACTION]; points: {POINTS}"
            )
        count, action = fields[1], fields[2] if len(fields) == 3 else "kill"
        if action not in ACTIONS or not count.rstrip("+").isdigit():
            raise ValueError(f"{ENV}={spec!r}: {part!r}: N a count, ACTION one of {ACTIONS}")
        _faults.append(_Fault(fields[0], int(count.rstrip("+")), count.endswith("+"), action))
    ACTIVE = bool(_faults)


def fires(point: str) -> str | None:
    """Count one occurrence of ``point``; the action of a fault armed for it, if one fires."""
    _counts[point] = n = _counts.get(point, 0) + 1
    for fault in _faults:
        if fault.point == point and (n == fault.at or (fault.repeat and n > fault.at)):
            return fault.action
    return None


def trip(point: str, path: object = None) -> None:
    """At ``point``: SIGKILL this process, or raise a full disk's ``OSError`` naming ``path``,
    if a fault fires here (``nan``/``inf`` are for :func:`poisoned`)."""
    action = fires(point)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def poisoned(point: str) -> float | None:
    """NaN or inf when a ``nan``/``inf`` fault fires at ``point`` (the training loss), else None."""
    action = fires(point)
    return {"nan": float("nan"), "inf": float("inf")}.get(action or "")


try:
    configure(os.environ.get(ENV))
except ValueError as _exc:  # a typo in a test's variable: one line, not a traceback
    print(f"robustlab: error: {_exc}", file=sys.stderr)
    raise SystemExit(2) from None
