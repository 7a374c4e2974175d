"""Resuming a run across the device boundary (issue 8, point 22).

A checkpoint is read onto the CPU whatever the training device, and ``load_state_dict`` places
each tensor: the RNG setters take CPU ByteTensors, and loading with ``map_location="cuda"``
would hand them CUDA tensors. Only the training GPU's generator is saved, so a resume that sees
fewer GPUs never indexes a missing one. On a CPU-only machine the GPU side is simulated (a
training device that says ``cuda``, a fake ``torch.cuda`` with two or one visible GPUs); the
tests marked ``gpu`` run the real thing where a GPU is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import without_time
from robustlab.config import build_config
from robustlab.rundir import RunDirectory
from robustlab.training import runner
from robustlab.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from robustlab.training.runner import fit, prepare

NEEDS_GPU = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run `pytest -m gpu` on a GPU)"
)


class Crash(Exception):
    pass


def _crash_after(epoch: int):
    def on_epoch(metrics: dict) -> None:
        if metrics["epoch"] == epoch:
            raise Crash  # after the epoch's checkpoint, as a kill between epochs would be

    return on_epoch


def _crashed_run(tmp_path: Path, overrides: list[str]) -> tuple[RunDirectory, object]:
    config = build_config(None, overrides)
    run = RunDirectory.create(tmp_path / "victim", config, "victim")
    with pytest.raises(Crash):
        fit(prepare(config), run, "victim", show_progress=False, on_epoch=_crash_after(1))
    return run, config


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_restore_reads_the_checkpoint_onto_the_cpu_whatever_the_device(
    tmp_path: Path, fast_run: list[str], monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    overrides = [*fast_run, "train.epochs=2", "eval.final=false", f"train.optimizer={optimizer}"]
    run, config = _crashed_run(tmp_path, overrides)
    saved = load_checkpoint(run.last_checkpoint)
    exp = prepare(config)
    # A run that trains on a GPU: before the fix its checkpoint was loaded with
    # map_location=cuda (here: no CUDA, so torch.load fails; on a GPU, set_rng_state did).
    exp.device = torch.device("cuda")
    locations = []

    def spy(path: Path, map_location: str | torch.device = "cpu") -> dict:
        locations.append(map_location)
        return load_checkpoint(path, map_location=map_location)

    monkeypatch.setattr(runner, "load_checkpoint", spy)

    epoch, _, history, _ = runner._restore(exp, run)

    assert locations == ["cpu"]
    assert epoch == 1 and [m["epoch"] for m in history] == [1]
    for name, value in exp.model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    # load_state_dict put the optimizer's state beside its parameters; Adam's step counter stays
    # on the CPU (torch keeps it there unless fused/capturable), so reading it never syncs a GPU.
    parameters = {id(p): p for p in exp.model.parameters()}
    states = list(exp.optimizer.state.items())
    assert states
    for parameter, state in states:
        for key, value in state.items():
            if key == "step":
                assert value.device.type == "cpu"
            elif isinstance(value, torch.Tensor):
                assert value.device == parameters[id(parameter)].device, key
    steps = [float(s["step"]) for _, s in states if "step" in s]
    assert optimizer == "sgd" or steps == [len(exp.loader)] * len(states)


class _FakeCuda:
    """``torch.cuda``'s RNG functions on ``visible`` pretend GPUs, strict as the real ones: an
    index beyond the visible devices is an error, and a state must be a CPU ByteTensor."""

    def __init__(self, visible: int) -> None:
        self.visible = visible
        self.states = {i: torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(visible)}
        self.set_calls: list[int] = []

    def _index(self, device: int | str | torch.device = "cuda") -> int:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        index = 0 if device.index is None else device.index
        if device.type != "cuda" or index >= self.visible:
            raise RuntimeError(f"CUDA error: invalid device ordinal {device}")
        return index

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.states[i].clone() for i in range(self.visible)]

    def set_rng_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        if state.device.type != "cpu" or state.dtype != torch.uint8:
            raise TypeError("RNG state must be a torch.ByteTensor")
        index = self._index(device)
        self.set_calls.append(index)
        self.states[index] = state.clone()

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for index, state in enumerate(states):
            self.set_rng_state(state, index)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.visible)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))


def test_a_run_saved_with_two_gpus_resumes_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two = _FakeCuda(visible=2)
    two.install(monkeypatch)
    state = {"rng": capture_rng_state(torch.device("cuda", 1))}  # trained on the second GPU
    save_checkpoint(tmp_path / "last.pt", state)
    expected_cpu = torch.rand(4)

    one = _FakeCuda(visible=1)
    one.install(monkeypatch)
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"], torch.device("cuda"))

    assert one.set_calls == [0]  # the training device only
    assert torch.equal(one.states[0], two.states[1])  # it continues the saved GPU's stream
    assert torch.equal(torch.rand(4), expected_cpu)


def test_the_gpu_rng_is_left_alone_by_a_cpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCuda(visible=2)
    fake.install(monkeypatch)
    cpu_state = capture_rng_state(torch.device("cpu"))
    assert "cuda" not in cpu_state  # a CPU run never draws from a GPU generator
    gpu_state = capture_rng_state(torch.device("cuda", 0))
    restore_rng_state(gpu_state, torch.device("cpu"))  # a GPU run resumed on the CPU
    restore_rng_state(cpu_state, torch.device("cuda", 0))  # a CPU run resumed on a GPU
    assert fake.set_calls == []


# ---------------------------------------------------------------------------------------------
# On a GPU.


@pytest.mark.gpu
@NEEDS_GPU
def test_rng_state_loaded_onto_the_gpu_is_still_restorable(tmp_path: Path) -> None:
    state = capture_rng_state(torch.device("cuda"))
    save_checkpoint(tmp_path / "last.pt", {"rng": state})
    expected = torch.rand(4), torch.rand(4, device="cuda")
    loaded = load_checkpoint(tmp_path / "last.pt", map_location="cuda")["rng"]
    assert loaded["torch"].is_cuda and loaded["cuda"].is_cuda  # what set_rng_state refused

    restore_rng_state(loaded, torch.device("cuda"))

    assert torch.equal(torch.rand(4), expected[0])
    assert torch.equal(torch.rand(4, device="cuda"), expected[1])


@pytest.mark.gpu
@NEEDS_GPU
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_crashed_cuda_run_resumes_to_the_same_metrics(
    tmp_path: Path, fast_run: list[str], optimizer: str
) -> None:
    overrides = [*fast_run, "device=cuda", "train.epochs=3", "eval.final=false",
                 f"train.optimizer={optimizer}"]  # fmt: skip
    config = build_config(None, overrides)
    reference = fit(
        prepare(config),
        RunDirectory.create(tmp_path / "ref", config, "ref"),
        "ref",
        show_progress=False,
    )
    run, _ = _crashed_run(tmp_path, overrides)
    exp = prepare(config)
    resumed = fit(exp, run, "victim", resume=True, show_progress=False)

    assert without_time(resumed.history) == without_time(reference.history)
    for parameter, state in exp.optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == ("cpu" if key == "step" else "cuda"), key
        assert parameter.is_cuda
