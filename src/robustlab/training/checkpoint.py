"""Checkpoints written atomically with a SHA-256 checksum verified on load.

File layout: a header line ``ROBUSTLAB-CKPT 1 <sha256 of payload>\n`` followed by the payload,
a :func:`torch.save` archive of a dict. A truncated or corrupted file fails its checksum and
raises :class:`CheckpointError` instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_bytes
from ..errors import CheckpointError

MAGIC = b"ROBUSTLAB-CKPT"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialize ``state`` and write it atomically (temp file + fsync + rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = b"%s %d %s\n" % (MAGIC, VERSION, hashlib.sha256(payload).hexdigest().encode())
    atomic_write_bytes(path, header + payload)


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
    newline = data.find(b"\n")
    header = data[:newline].split(b" ") if newline > 0 else []
    if len(header) != 3 or header[0] != MAGIC:
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
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


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
