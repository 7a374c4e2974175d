"""Backend settings for speed or bit-reproducibility: what ``train.deterministic`` changes.

PyTorch's reproducibility notes (https://pytorch.org/docs/stable/notes/randomness.html) list
what a run on CUDA needs beyond seeding: cuDNN must not benchmark convolution algorithms (the
fastest one is picked per run by timing, and may differ between runs), cuDNN must use its
deterministic algorithms, ``torch.use_deterministic_algorithms(True)`` makes every other op
with a nondeterministic CUDA kernel use a deterministic one or raise ``RuntimeError``, and
cuBLAS needs a fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, set before its first
matrix product). The cost: slower convolutions (no benchmarking, deterministic cuDNN kernels),
and ops without a deterministic CUDA kernel raise instead of running.

On the CPU robustlab's runs are already reproducible from the seed (the data is shuffled and
augmented from seeded generators, every attack draws from the seeded global RNG); the same
flags are set there too, so a config behaves the same on either device.
"""

from __future__ import annotations

import os
from typing import Any

import torch

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"  # PyTorch's notes: one of the two values cuBLAS accepts


def configure_backends(device: torch.device, deterministic: bool = False) -> dict[str, Any]:
    """Set torch's backend flags for a run on ``device`` and return what was applied.

    Without ``deterministic``, CUDA runs let cuDNN benchmark the convolution algorithms for each
    new input shape once and keep the fastest (a training run's shapes repeat every step), so
    they are fast but not bit-reproducible; nothing is changed for CPU runs. With it, every run
    gets cuDNN's deterministic algorithms, no benchmarking, and
    ``torch.use_deterministic_algorithms(True)``, and CUDA runs also get
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless the environment already sets it. The flags are
    process-wide and stay set after the run (torch has no per-run scope for them).

    Returns:
        The settings in force afterwards: ``cudnn.benchmark``, ``cudnn.deterministic``,
        ``deterministic_algorithms`` and ``CUBLAS_WORKSPACE_CONFIG`` (``None`` when unset).
    """
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            os.environ.setdefault(CUBLAS_ENV, CUBLAS_DETERMINISTIC)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return applied_settings()


def applied_settings() -> dict[str, Any]:
    """torch's determinism-related settings as they are now."""
    return {
        "cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        CUBLAS_ENV: os.environ.get(CUBLAS_ENV),
    }
