"""glibc allocator settings for CPU training, applied by the ``robustlab`` command itself.

glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with
fresh ``mmap`` calls and gives freed heap memory back to the system above its trim threshold, so
a CPU training step that allocates and frees the same activation buffers every step pays for
page faults and zeroing each time: 1.5–2× slower steps (issue 14; ``make bench``'s
``allocator`` case). Three environment variables fix that; glibc reads them once, when the
process starts, so the command re-executes itself once with them set (:func:`reexec_tuned`)
before it imports anything heavy. ``os.execv`` replaces the process in place: the same pid,
arguments, open stdin/stdout/stderr and signal dispositions, no parent left in between, so
Ctrl-C, ``kill`` (SIGTERM: the run is marked interrupted) and exit codes work as before.

Settings a user exported are kept (only the absent ones are filled in), and
``ROBUSTLAB_NO_MALLOC_TUNING=1`` turns the whole thing off. Outside Linux with glibc nothing
happens (musl and macOS do not read these variables).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence

# The Makefile exports the same values (``make test``, ``make bench``).
TUNED: dict[str, str] = {
    # Blocks up to 32 MiB come from the heap, which keeps them for reuse, instead of mmap.
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    # Free heap memory is given back to the system only above 4 GiB ...
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    # ... and the heap grows 256 MiB at a time (fewer brk calls while a run warms up).
    "MALLOC_TOP_PAD_": "268435456",
}
OPT_OUT = "ROBUSTLAB_NO_MALLOC_TUNING"
# Set in the re-executed process: it never re-executes again, whatever happens to the others.
MARKER = "ROBUSTLAB_MALLOC_TUNED"


def is_glibc() -> bool:
    """Whether this process runs on Linux with glibc (the allocator that reads ``MALLOC_*_``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no such name: not glibc
        return False


def missing(environ: Mapping[str, str]) -> dict[str, str]:
    """The tuned settings ``environ`` lacks (a value the user exported is never replaced)."""
    return {name: value for name, value in TUNED.items() if name not in environ}


def applied(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``MALLOC_*`` settings this process runs with (recorded in a run's ``run.json``)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items()) if k.startswith("MALLOC_")}


def should_reexec(environ: Mapping[str, str], orig_argv: Sequence[str]) -> bool:
    """Whether to re-execute: glibc, settings missing, not opted out, not done already, and a
    command line that can be replayed (not an interactive session or a script read from stdin)."""
    if environ.get(OPT_OUT, "") not in ("", "0") or environ.get(MARKER):
        return False
    if not missing(environ) or not is_glibc():
        return False
    replayable = len(orig_argv) >= 2 and orig_argv[1] != "-" and not sys.flags.interactive
    return replayable and bool(sys.executable)


def reexec_tuned(
    environ: MutableMapping[str, str] | None = None,
    orig_argv: Sequence[str] | None = None,
    execv: Callable[[str, list[str]], object] = os.execv,
) -> bool:
    """Re-execute this process with the tuned allocator settings, when :func:`should_reexec`.

    ``sys.orig_argv`` replays the interpreter's own options too (``python -X importtime -m
    robustlab ...`` stays that). Returns ``False`` when nothing was done; ``execv`` does not
    return when it succeeds (tests pass a recorder instead). If the exec fails (a deleted
    interpreter), the command runs on with glibc's defaults.
    """
    environ = os.environ if environ is None else environ
    orig_argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    if not should_reexec(environ, orig_argv):
        return False
    for name, value in missing(environ).items():
        environ[name] = value  # os.environ: also putenv, so the new process inherits it
    environ[MARKER] = "1"
    for stream in (sys.stdout, sys.stderr):  # nothing buffered may be lost by the exec
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    try:
        execv(sys.executable, [sys.executable, *orig_argv[1:]])
    except OSError:
        return False
    return True
