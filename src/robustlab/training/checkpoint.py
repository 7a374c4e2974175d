"""Checkpoints written atomically with a SHA-256 checksum verified on load.

File layout: a header line ``ROBUSTLAB-CKPT 1 <sha256 of payload>\n`` followed by the payload,
a :func:`torch.save` archive of a dict. A truncated or corrupted file fails its checksum and
raises :class:`CheckpointError` instead of loading garbage.

The last checkpoint (the one a resume starts from) keeps its predecessor: the new file is
written to a temp file, read back and verified against its checksum, and only then does the
old ``last.pt`` become ``last.prev.pt`` and the temp file ``last.pt`` (two renames). A resume
whose ``last.pt`` is damaged falls back to ``last.prev.pt`` (see ``training.runner``); a kill
between the renames leaves ``last.prev.pt`` alone, which is the same state ``last.pt`` held.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_bytes
from ..errors import CheckpointError

MAGIC = b"ROBUSTLAB-CKPT"
VERSION = 1


def save_checkpoint(
    path: str | Path, state: dict[str, Any], *, keep_previous: bool = False
) -> None:
    """Serialize ``state`` and write it atomically (temp file + fsync + rename).

    With ``keep_previous`` (the last checkpoint), the written temp file is read back and its
    checksum verified before anything is replaced, and the file it replaces is kept as
    :func:`previous_checkpoint` (one generation).

    Raises:
        CheckpointError: the temp file read back does not match (the old files are untouched).
        DiskFullError: the device is full (the old files are untouched).
    """
    payload = torch_bytes(state)
    header = b"%s %d %s\n" % (MAGIC, VERSION, hashlib.sha256(payload).hexdigest().encode())
    path = Path(path)

    def verify_then_keep_previous(tmp: Path) -> None:
        _verified_payload(tmp.read_bytes(), path)  # what is on the disk, not what was meant
        if path.exists():
            os.replace(path, previous_checkpoint(path))

    atomic_write_bytes(
        path,
        header + payload,
        fault_point="checkpoint-write",
        before_replace=verify_then_keep_previous if keep_previous else None,
    )


def torch_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch_file(path: str | Path, obj: Any) -> None:
    """``torch.save(obj, path)``, written atomically (no checksum header: ``torch.load`` reads
    it, for files meant for other programs)."""
    atomic_write_bytes(path, torch_bytes(obj))


def previous_checkpoint(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the file ``path`` replaced: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def set_aside(path: str | Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.corrupt-<UTC time>`` (kept as evidence, never
    deleted, and never read again as a checkpoint); returns the new path."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    return aside


def is_robustlab_checkpoint(path: str | Path) -> bool:
    """Whether the file starts with a robustlab checkpoint header."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Raises:
        CheckpointError: the file is missing, not a robustlab checkpoint, or corrupted.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    payload = _verified_payload(data, path)
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


def _verified_payload(data: bytes, path: Path) -> bytes:
    """The payload of a checkpoint file's bytes ``data``, after its header and checksum checks."""
    newline = data.find(b"\n")
    header = data[:newline].split(b" ") if newline > 0 else []
    if len(header) != 3 or header[0] != MAGIC or not header[1].isdigit():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a robustlab checkpoint (bad header)"
        )
    if int(header[1]) > VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {int(header[1])}; this robustlab reads <= {VERSION}"
        )
    payload = data[newline + 1 :]
    if hashlib.sha256(payload).hexdigest().encode() != header[2]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} fails its checksum (truncated or corrupted)"
        )
    return payload


def capture_rng_state(device: str | torch.device | None = None) -> dict[str, Any]:
    """Every RNG a training step on ``device`` draws from: torch's CPU generator, numpy, Python,
    and, when ``device`` is a GPU, that GPU's generator.

    Only the training device's CUDA generator is saved, not every visible GPU's
    (``get_rng_state_all``): the others are never drawn from, and a resume that sees fewer GPUs
    (``CUDA_VISIBLE_DEVICES``, another machine) must not index a device that is not there.
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def restore_rng_state(state: dict[str, Any], device: str | torch.device | None = None) -> None:
    """Restore a :func:`capture_rng_state` state; its CUDA generator goes to ``device`` (the
    training device of the resumed run), and only when that is a GPU.

    Generator states are moved to the CPU first: the setters take CPU ByteTensors, and a state
    loaded with ``map_location="cuda"`` holds CUDA tensors.
    """
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    # A CPU run draws nothing from a GPU generator, and a CPU-saved state has none to restore.
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), torch.device(device))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
