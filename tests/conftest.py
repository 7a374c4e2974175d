"""Shared fixtures: tiny, fast configurations for end-to-end runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

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


# A run that trains in about a second with the fewest steps: the valid run directory that the
# bad-input tests of eval, show and --out need (tests import it: `from conftest import TINY_RUN`).
TINY_RUN = [
    "data.name=synthetic",
    "data.options.n_train=128",
    "data.options.n_test=64",
    "data.val_size=32",
    "model.width=16",
    "train.epochs=1",
    "train.batch_size=64",
    "attack.steps=1",
    "eval.steps=1",
    "eval.n_train=0",
    "device=cpu",
]


@pytest.fixture
def fast_run() -> list[str]:
    """``--set`` overrides of a tiny run (a fresh list per test)."""
    return list(FAST_RUN)


@pytest.fixture(autouse=True)
def _single_thread_determinism() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one intra-op thread (a second only adds synchronization, and
    on shared cores it makes every forward pass many times slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def robust_digits_mlp():
    """``(model, x, y)``: an MLP (one hidden layer of 64) PGD-adversarially trained on digits at
    Linf eps 0.1 for 6 epochs (~2 s), in eval mode, with the 359 test images in [0, 1].

    Its robust accuracy at eps 0.1 is far from 0 and from 1, so attack comparisons mean something.
    """
    from robustlab.attacks import create_attack
    from robustlab.data import DeviceLoader, create_dataset
    from robustlab.models import create_model
    from robustlab.training import create_method

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = create_dataset("digits")
    model = create_model("mlp", 10, 1, 8, width=64, depth=1, mean=data.mean, std=data.std)
    method = create_method("pgd_at", attack=create_attack("pgd", eps=0.1, alpha=0.025, steps=5))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=64, shuffle=True, seed=0)
    model.train()
    for epoch in range(6):
        for x, y in loader.epoch(epoch):
            loss = method(model, x, y)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.set_num_threads(previous)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, data.test_x.float() / 255, data.test_y


@pytest.fixture
def host_reads():
    """A context manager recording every host read of a tensor inside it: float(tensor),
    .item(), .tolist() and bool(tensor), each a host-device synchronization on a GPU."""

    @contextlib.contextmanager
    def record():
        calls: list[str] = []
        with pytest.MonkeyPatch.context() as patch:
            for attr in ("__float__", "item", "tolist", "__bool__"):
                original = getattr(torch.Tensor, attr)

                def counted(self, *args, _name=attr, _original=original):
                    calls.append(_name)
                    return _original(self, *args)

                patch.setattr(torch.Tensor, attr, counted)
            yield calls

    return record


def sets(overrides: Iterable[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (tests import it)."""
    if isinstance(overrides, str):  # one string would be split into characters
        raise TypeError("sets() takes a list of KEY=VALUE strings")
    return [arg for item in overrides for arg in ("--set", item)]


def without_time(history: list[dict]) -> list[dict]:
    """Per-epoch metrics without their wall time, the one number two equal runs differ in."""
    return [{k: v for k, v in m.items() if k != "time_s"} for m in history]


def train_cli(tmp_path: Path, overrides: list[str], *extra: str) -> int:
    """``robustlab train`` of ``overrides`` into ``tmp_path/run`` and its store ``s.db``."""
    from robustlab.cli.main import main

    out = ["--out", str(tmp_path / "run"), "--store", str(tmp_path / "s.db"), "--quiet"]
    return main(["train", *sets(overrides), *out, *extra])


@pytest.fixture
def fault():
    """Arm ``robustlab._faults`` for this test only (the ROBUSTLAB_FAULT syntax)."""
    from robustlab import _faults

    yield _faults.configure
    _faults.configure(None)
