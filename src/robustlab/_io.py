"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import _faults
from .errors import DiskFullError

# The errors of a full disk or an exhausted quota: a run stops with one line naming the file.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full_named(path: str | Path) -> Iterator[None]:
    """Turn a full disk's ``OSError`` inside the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL or isinstance(exc, DiskFullError):
            raise
        raise DiskFullError(
            f"no space left on the device writing {str(path)!r} ({exc.strerror})"
        ) from None


def atomic_write_bytes(
    path: str | Path,
    data: bytes,
    *,
    fault_point: str | None = None,
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename, fsync dir.

    ``before_replace(tmp)`` runs once the temp file is complete and before it replaces ``path``
    (a checkpoint verifies its copy and keeps the previous file there). ``fault_point`` names
    the write for the test-only fault injection (:mod:`robustlab._faults`), which may kill the
    process with half of ``data`` in the temp file.

    Raises:
        DiskFullError: the device is full; ``path`` is left as it was, the temp file removed.
    """
    path = Path(path)
    with disk_full_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                if fault_point is not None and _faults.ACTIVE:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    _faults.trip(fault_point, path)
                    data = data[len(data) // 2 :]
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() makes it (mkstemp: 0600)
            if before_replace is not None:
                before_replace(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_directory(path.parent)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_directory(directory: Path) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_line(path: str | Path, line: str, *, fault_point: str | None = None) -> None:
    """Append one line and fsync (for JSON-lines logs).

    A full disk raises :class:`DiskFullError`; the line may then be partly written, and a
    resume rewrites the file from the last checkpoint's history.
    """
    with disk_full_named(path), open(path, "a", encoding="utf-8") as handle:
        if fault_point is not None and _faults.ACTIVE:
            _faults.trip(fault_point, path)
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())
