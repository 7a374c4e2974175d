"""The run directory: everything one training run leaves on disk.

```
<run_dir>/
  config.toml        the resolved configuration (every key explicit)
  run.json           run id, seed, versions (Python, torch, robustlab), git revision, host,
                     start time, status, wall time
  metrics.jsonl      one JSON object per finished epoch
  checkpoints/
    last.pt          after every epoch: model, optimizer, step, RNG states, history, config
    best.pt          the epoch with the best validation robust accuracy
```
"""

from __future__ import annotations

import json
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

    def snapshot_checkpoint(self, period: int) -> Path:
        """The model kept at the end of PAS period ``period`` (1-based)."""
        return self.path / "checkpoints" / f"snapshot_{period}.pt"

    def snapshot_checkpoints(self) -> list[Path]:
        """Every PAS snapshot, in period order."""
        found = self.path.glob("checkpoints/snapshot_*.pt")
        return sorted(found, key=lambda p: int(p.stem.split("_")[1]))

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, config: RunConfig, run_id: str) -> RunDirectory:
        """Create the directory with its resolved config and run information.

        Raises:
            RunError: ``path`` already holds a run (resume it with ``--resume`` instead).
        """
        cls.check_free(path)
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        run = cls(path)
        atomic_write_text(run.config_file, to_toml(config))
        run.write_info(
            {"run_id": run_id, "seed": config.seed, "status": "running", **environment_info()}
        )
        return run

    @staticmethod
    def check_free(path: Path) -> None:
        """Raise :class:`RunError` if ``path`` already holds a run."""
        if (path / "config.toml").exists() or (path / "run.json").exists():
            raise RunError(
                f"--out {str(path)!r} already holds a run; resume it with --resume {path} or pick another directory"
            )

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

    def remove_partial_writes(self) -> None:
        """Delete temp files a killed process left mid-write (the renamed files are intact)."""
        for directory in (self.path, self.path / "checkpoints"):
            for leftover in directory.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        append_line(self.metrics_file, json.dumps(metrics))

    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with exactly ``history`` (used on resume)."""
        atomic_write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in history))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [
            json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()
        ]


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
