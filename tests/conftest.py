"""Shared fixtures: tiny, fast configurations for end-to-end runs."""

from __future__ import annotations

import pytest
import torch

# A run that trains in about a second on 2 CPU cores: synthetic 8x8 data, a small MLP, short attacks.
FAST_RUN = [
    "data.name=synthetic",
    "data.options.n_train=256",
    "data.options.n_test=128",
    "data.val_size=64",
    "model.name=mlp",
    "model.width=32",
    "attack.eps=0.1",
    "attack.steps=3",
    "eval.steps=3",
    "eval.n_train=64",
    "train.epochs=3",
    "train.batch_size=64",
    "train.lr=0.05",
    "device=cpu",
]


@pytest.fixture
def fast_run() -> list[str]:
    """``--set`` overrides of a tiny run (a fresh list per test)."""
    return list(FAST_RUN)


@pytest.fixture(autouse=True)
def _single_thread_determinism() -> None:
    torch.manual_seed(0)
