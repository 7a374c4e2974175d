"""The run directory: everything one training run leaves on disk.

```
<run_dir>/
  config.toml        the resolved configuration (every key explicit)
  run.json           run id, seed, versions (Python, torch, robustlab), git revision, host,
                     start time, status, wall time, absolute paths of the run directory,
                     the results store and the data root
  metrics.jsonl      one JSON object per finished epoch
  iterations.jsonl   with train.track_every: one JSON object per recorded iteration
  checkpoints/
    last.pt          after every epoch: model, optimizer, step, RNG states, history, config
    last.prev.pt     the last checkpoint before (a damaged last.pt falls back to it)
    best.pt          the epoch with the best validation robust accuracy
    epoch-N.pt       with train.save_epochs: the model at the end of epoch N
```
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from ._io import append_line, atomic_write_text
from .config import RunConfig, build_config, to_toml
from .errors import RunError


@dataclass(frozen=True)
class RunDirectory:
    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def info_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The model kept at the end of epoch ``epoch`` (1-based; ``train.save_epochs``)."""
        return self.path / "checkpoints" / f"epoch-{epoch}.pt"

    @property
    def iterations_file(self) -> Path:
        return self.path / "iterations.jsonl"

    def snapshot_checkpoint(self, period: int) -> Path:
        """The model kept at the end of PAS period ``period`` (1-based)."""
        return self.path / "checkpoints" / f"snapshot_{period}.pt"

    def snapshot_checkpoints(self) -> list[Path]:
        """Every PAS snapshot, in period order."""
        found = self.path.glob("checkpoints/snapshot_*.pt")
        return sorted(found, key=lambda p: int(p.stem.split("_")[1]))

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: Path, config: RunConfig, run_id: str, store: str | Path | None = None
    ) -> RunDirectory:
        """Create the directory with its resolved config and run information.

        ``run.json`` records the absolute paths of the run directory, the results store and
        the data root, so ``eval RUN`` and ``train --resume RUN`` find them from any working
        directory (pass ``config`` through :func:`with_absolute_paths` first, so the saved
        ``config.toml`` and the checkpoints agree with it).

        Raises:
            RunError: ``path`` already holds a run (resume it with ``--resume`` instead).
        """
        cls.check_free(path)
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. a read-only file system (root passes the access check)
            raise RunError(f"--out {str(path)!r}: cannot create it ({exc.strerror})") from None
        run = cls(path)
        atomic_write_text(run.config_file, to_toml(config))
        paths = {
            "run_dir": str(path.resolve()),
            "store": str(Path(store).resolve()) if store is not None else None,
            "data_root": str(absolute_path(config.data.root)),
        }
        run.write_info(
            {
                "run_id": run_id,
                "seed": config.seed,
                "status": "running",
                **paths,
                **environment_info(),
            }
        )
        return run

    @staticmethod
    def check_free(path: Path) -> None:
        """Raise :class:`RunError` if ``path`` already holds a run, or cannot be a directory
        (a file is there or in the way, or its parent is not writable); writes nothing.

        A run killed while :meth:`create` wrote it (an empty ``checkpoints/`` and
        ``config.toml``, no ``run.json`` yet) holds nothing to resume: the same command
        creates it again."""
        half_made = (
            not (path / "run.json").exists()
            and (path / "checkpoints").is_dir()
            and not any((path / "checkpoints").iterdir())
        )
        if not half_made and ((path / "config.toml").exists() or (path / "run.json").exists()):
            raise RunError(
                f"--out {str(path)!r} already holds a run; resume it with --resume {path} or pick another directory"
            )
        check_can_create(path, "--out")

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """An existing run directory. Raises :class:`RunError` if it holds no run."""
        run = cls(Path(path))
        if not run.config_file.is_file() or not run.info_file.is_file():
            raise RunError(f"{str(path)!r} is not a run directory (no config.toml / run.json)")
        return run

    # -- contents ---------------------------------------------------------------------------

    def read_config(self) -> RunConfig:
        return build_config(self.config_file)

    def read_info(self) -> dict[str, Any]:
        return json.loads(self.info_file.read_text())

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.info_file, json.dumps(info, indent=2) + "\n")

    def update_info(self, **changes: Any) -> dict[str, Any]:
        info = {**self.read_info(), **changes}
        self.write_info(info)
        return info

    @property
    def run_id(self) -> str:
        return str(self.read_info()["run_id"])

    def record_paths(self, config: RunConfig, store: str | Path) -> None:
        """On resume: record the store and data root the run continues with (``--store`` or
        ``--data-root`` may have moved them), in ``run.json`` and ``config.toml``.

        ``config`` is the run's config with the data root it continues with (absolute:
        :func:`with_absolute_paths`)."""
        if self.read_config().data.root != config.data.root:
            atomic_write_text(self.config_file, to_toml(config))
        self.update_info(store=str(Path(store).resolve()), data_root=config.data.root)

    def recorded_store(self) -> Path | None:
        """The results store this run was trained with: the absolute path in ``run.json``;
        for runs made before it was recorded, a ``robustlab.db`` beside the run directory
        (the default layout ``runs/<run id>``); else None."""
        store = self.read_info().get("store")
        if store:
            return Path(store)
        beside = self.path.resolve().parent / "robustlab.db"
        return beside if beside.is_file() else None

    def remove_partial_writes(self) -> None:
        """Delete temp files a killed process left mid-write (the renamed files are intact)."""
        for directory in (self.path, self.path / "checkpoints"):
            for leftover in directory.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        append_line(self.metrics_file, json.dumps(metrics), fault_point="metrics-write")

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with exactly ``history`` (used on resume)."""
        atomic_write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in history))

    def append_iterations(self, records: list[dict[str, Any]]) -> None:
        """Add one epoch's per-iteration records (``train.track_every``) to ``iterations.jsonl``."""
        if records:
            append_line(self.iterations_file, "\n".join(json.dumps(r) for r in records))

    def truncate_iterations(self, before: int) -> None:
        """Keep the records of iterations ``< before`` only: a resumed run records the later
        ones again, from its last checkpoint (which has done ``before`` iterations)."""
        if not self.iterations_file.exists():
            return
        kept = [r for r in self.read_iterations() if r["iteration"] < before]
        atomic_write_text(self.iterations_file, "".join(json.dumps(r) + "\n" for r in kept))

    def read_iterations(self) -> list[dict[str, Any]]:
        if not self.iterations_file.exists():
            return []
        text = self.iterations_file.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [
            json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()
        ]


def absolute_path(path: str | Path) -> Path:
    """``path`` made absolute against the working directory (``~`` expanded)."""
    return Path(path).expanduser().resolve()


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with ``data.root`` (and ``data.extra`` and ``train.init_from``, when set)
    absolute, as a run records it: a run's results must not depend on the directory a later
    ``eval`` or ``--resume`` is started from."""
    extra = str(absolute_path(config.data.extra)) if config.data.extra else ""
    data = dataclasses.replace(config.data, root=str(absolute_path(config.data.root)), extra=extra)
    init_from = str(absolute_path(config.train.init_from)) if config.train.init_from else ""
    train = dataclasses.replace(config.train, init_from=init_from)
    return dataclasses.replace(config, data=data, train=train)


def check_can_create(path: str | Path, flag: str) -> None:
    """Raise :class:`RunError` unless ``path`` is a writable directory or can be made one.

    The nearest existing ancestor decides: a file there means no directory can be made under
    it, and a directory that is not writable refuses new entries. Writes nothing, so a command
    can check every output location before it writes any.
    """
    path = Path(path)
    for existing in (path, *path.absolute().parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            where = (
                "is a file"
                if existing == path
                else f"cannot be created: {str(existing)!r} is a file"
            )
            raise RunError(f"{flag} {str(path)!r} {where}; give a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable")
        return


def process_alive(pid: int | None, host: str | None) -> bool | None:
    """Whether process ``pid`` of ``host`` still runs; ``None`` when this machine cannot tell
    (another host, or nothing recorded)."""
    if pid is None or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it only checks that the process exists
    except OSError as exc:
        return exc.errno == errno.EPERM  # it exists, but belongs to another user
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but was not reaped yet (Linux state ``Z``): a SIGKILLed run's
    process whose parent died too stays a zombie until init reaps it, and in some containers
    init never does; ``kill(pid, 0)`` still succeeds on it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # not Linux, or it vanished meanwhile
        return False
    # "pid (command) S ...": the command may hold spaces or parentheses; the state follows the last ")"
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def shown_status(status: str, pid: int | None, host: str | None) -> str:
    """The status to show for a run recorded with ``status`` by process ``pid`` on ``host``.

    A run recorded ``running`` whose process on this host is gone (SIGKILL, out of memory, a
    reboot) was ``interrupted``: it resumes with ``robustlab train --resume RUN_DIR``. A later
    process may reuse the id, so a dead run can still read ``running``, never the reverse.
    """
    if status == "running" and process_alive(pid, host) is False:
        return "interrupted"
    return status


def new_run_id(config: RunConfig) -> str:
    """``20261125-143000-pgd_at-mlp-a1b2``: sortable by time, readable, unique."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.method.name}-{config.model.name}-{secrets.token_hex(2)}"


def environment_info() -> dict[str, Any]:
    """Versions, host and git revision, saved beside the config for reproducibility."""
    import numpy
    import torch

    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "robustlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "git_revision": git_revision(),
    }


def git_revision() -> str | None:
    """The commit of the working directory's repository, if any (``+dirty`` when modified)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


# Column order of metrics.jsonl, the README's schema table and `robustlab show`.
METRIC_ORDER = (
    "epoch",
    "lr",
    "eps",
    "lam",
    "train_loss",
    "nat_risk",
    "rob_reg",
    "lipschitz",
    "max_spectral_norm",
    "train_nat_acc",
    "train_rob_acc",
    "train_stability",
    "train_nat_loss",
    "train_rob_loss",
    "val_nat_acc",
    "val_rob_acc",
    "val_stability",
    "val_nat_loss",
    "val_rob_loss",
    "test_nat_acc",
    "test_rob_acc",
    "test_stability",
    "test_nat_loss",
    "test_rob_loss",
    "time_s",
)
