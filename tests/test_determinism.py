"""Determinism (issue 14 point 8): the same seed gives the same metrics on the CPU, and
``train.deterministic`` applies PyTorch's reproducibility settings (checked on the CPU through
the settings a run applies; the CUDA-only environment variable through a CUDA device object)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import sets
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import ConfigError
from robustlab.training.determinism import CUBLAS_ENV, applied_settings, configure_backends

pytestmark = pytest.mark.usefixtures("one_thread")

# Per-epoch keys that measure the machine, not the run.
TIMING_KEYS = ("time_s",)


@pytest.fixture
def restore_backends(monkeypatch: pytest.MonkeyPatch):
    """torch's determinism flags are process-wide: put them back after the test."""
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])


def _train(out: Path, overrides: list[str]) -> list[dict[str, Any]]:
    code = main(
        [
            "train",
            *sets(overrides),
            "--out",
            str(out),
            "--store",
            str(out.parent / "s.db"),
            "--quiet",
        ]
    )
    assert code == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _numbers(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in epoch.items() if k not in TIMING_KEYS} for epoch in history]


def _assert_identical(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Bit-identical numbers (NaN equal to NaN), epoch by epoch and key by key."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            same = x[key] == y[key] or (
                isinstance(x[key], float) and math.isnan(x[key]) and math.isnan(y[key])
            )
            assert same, (x["epoch"], key, x[key], y[key])


def test_same_seed_same_metrics_on_cpu(
    tmp_path: Path, fast_run: list[str], restore_backends
) -> None:
    first = _numbers(_train(tmp_path / "a", fast_run))
    second = _numbers(_train(tmp_path / "b", fast_run))
    _assert_identical(first, second)
    assert len(first) == 3 and first[-1]["test_rob_acc"] is not None
    # The comparison can fail: another seed gives other numbers.
    other = _numbers(_train(tmp_path / "c", [*fast_run, "seed=1"]))
    assert [e["train_loss"] for e in other] != [e["train_loss"] for e in first]
    # train.deterministic changes nothing on the CPU (its runs are reproducible already).
    strict = _numbers(_train(tmp_path / "d", [*fast_run, "train.deterministic=true"]))
    _assert_identical(first, strict)
    assert torch.are_deterministic_algorithms_enabled()  # and that run did set the flags


def test_deterministic_key_sets_the_flags_in_the_run(fast_run: list[str], restore_backends) -> None:
    from robustlab.training.runner import prepare

    torch.backends.cudnn.benchmark = True
    torch.use_deterministic_algorithms(False)
    prepare(build_config(None, fast_run))  # the default leaves a CPU run's flags alone
    assert applied_settings()["deterministic_algorithms"] is False
    assert torch.backends.cudnn.benchmark is True

    prepare(build_config(None, [*fast_run, "train.deterministic=true"]))
    assert applied_settings() == {
        "cudnn.benchmark": False,
        "cudnn.deterministic": True,
        "deterministic_algorithms": True,
        CUBLAS_ENV: None,  # CPU run: cuBLAS is not used
    }


def test_deterministic_on_cuda_also_fixes_the_cublas_workspace(restore_backends) -> None:
    # A CUDA device object needs no GPU; only the settings are checked.
    cuda = torch.device("cuda")
    fast = configure_backends(cuda, deterministic=False)
    assert fast["cudnn.benchmark"] is True and fast[CUBLAS_ENV] is None
    strict = configure_backends(cuda, deterministic=True)
    assert strict == {
        "cudnn.benchmark": False,
        "cudnn.deterministic": True,
        "deterministic_algorithms": True,
        CUBLAS_ENV: ":4096:8",
    }
    assert os.environ[CUBLAS_ENV] == ":4096:8"


def test_a_cublas_setting_of_the_user_is_kept(
    monkeypatch: pytest.MonkeyPatch, restore_backends
) -> None:
    monkeypatch.setenv(CUBLAS_ENV, ":16:8")  # the other value cuBLAS accepts (less memory)
    assert configure_backends(torch.device("cuda"), deterministic=True)[CUBLAS_ENV] == ":16:8"


@pytest.mark.parametrize("value", ["maybe", "1", "yes"])
def test_the_key_is_validated(value: str) -> None:
    with pytest.raises(ConfigError, match=f"train.deterministic='{value}': expected true or false"):
        build_config(None, [f"train.deterministic={value}"])
    assert build_config(None, ["train.deterministic=true"]).train.deterministic is True
    assert build_config(None).train.deterministic is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deterministic_cuda_runs_repeat_bit_for_bit(
    tmp_path: Path, fast_run: list[str], restore_backends
) -> None:
    # Also checks that no op of a training run (attacks included) lacks a deterministic CUDA
    # kernel: use_deterministic_algorithms would make it raise.
    cuda = [o for o in fast_run if not o.startswith("device=")] + ["device=cuda"]
    strict = [*cuda, "train.deterministic=true", "model.name=lenet"]
    first = _numbers(_train(tmp_path / "a", strict))
    second = _numbers(_train(tmp_path / "b", strict))
    _assert_identical(first, second)
    assert os.environ[CUBLAS_ENV] == ":4096:8"
