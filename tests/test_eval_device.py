"""The device boundary of evaluation, simulated on the CPU with PyTorch's ``meta`` device.

On a GPU machine, a cascade state or a training checkpoint read with ``map_location=cuda`` puts
everything (optimizer state included) on the GPU, and a state read onto the CPU cannot be indexed
with CUDA indices. ``meta`` stands in for the accelerator here: tensors moved to it keep their
shape and dtype but no data, so each test checks *what* is moved where and with which
``map_location`` it is read. The ``gpu`` test does the real round trip where a GPU is lent.
"""

from __future__ import annotations

import json

import pytest
import torch

import robustlab.cli._sources as sources
import robustlab.training.runner as runner
from robustlab.attacks import create_attack
from robustlab.cli.eval import load_test_points
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.data import ImageDataset
from robustlab.evaluation import CascadeState, evaluate_robustness, run_cascade
from robustlab.rundir import RunDirectory

META = torch.device("meta")


@pytest.fixture
def run(tmp_path, monkeypatch, capsys, fast_run) -> RunDirectory:
    monkeypatch.chdir(tmp_path)
    sets = [part for item in [*fast_run, "eval.final=false"] for part in ("--set", item)]
    assert main(["train", *sets, "--out", "run", "--json"]) == 0
    capsys.readouterr()
    return RunDirectory.open(tmp_path / "run")


def _record_map_location(monkeypatch, module) -> list[object]:
    seen: list[object] = []
    original = module.load_checkpoint

    def recording(path, map_location="cpu"):
        seen.append(map_location)
        return original(path, map_location=map_location)

    monkeypatch.setattr(module, "load_checkpoint", recording)
    return seen


def _tensors(tree: object) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in _tensors(value)]
    if isinstance(tree, list | tuple):
        return [t for value in tree for t in _tensors(value)]
    return []


@pytest.mark.parametrize("which", ["last", "best"])
def test_trained_models_are_read_on_the_cpu_and_only_the_weights_moved(
    run, monkeypatch, which
) -> None:
    seen = _record_map_location(monkeypatch, runner)
    model, state = runner.load_trained_model(run, which, META)
    assert seen == ["cpu"]
    assert {p.device for p in model.parameters()} | {b.device for b in model.buffers()} == {META}
    # The checkpoint itself (for `last` also the optimizer's momentum and the RNG states) stays
    # on the CPU: only the model's copy of the weights went to the device.
    assert {t.device.type for t in _tensors(state)} == {"cpu"}
    assert (which == "last") == bool(_tensors(state.get("optimizer")))


def test_eval_reads_a_checkpoint_file_on_the_cpu(run, monkeypatch) -> None:
    seen = _record_map_location(monkeypatch, sources)
    loaded = sources.load_model(str(run.last_checkpoint), "last", META)
    assert seen == ["cpu"] and {p.device for p in loaded.model.parameters()} == {META}


def test_eval_moves_only_the_evaluated_test_points(tmp_path, monkeypatch, fast_run) -> None:
    moved: list[torch.device] = []
    original = ImageDataset.to

    def recording(self, device):
        moved.append(torch.device(device))
        return original(self, device)

    monkeypatch.setattr(ImageDataset, "to", recording)
    config = build_config(None, fast_run)
    images, labels, classes = load_test_points(config, 40, META)
    assert images.device == labels.device == META and images.shape[0] == labels.shape[0] == 40
    assert classes == 10
    assert META not in moved  # the training and validation splits never go to the device


def test_a_state_loads_with_every_tensor_on_the_evaluations_device(
    tmp_path, robust_digits_mlp
) -> None:
    model, x, y = robust_digits_mlp
    path = tmp_path / "state.pt"
    attack = create_attack("fgsm", eps=0.1)
    evaluate_robustness(model, x[:30], y[:30], attack, keep_adv=True, state_path=path)
    state = CascadeState.load(path, device=META)
    tensors = {k: v for k, v in vars(state).items() if isinstance(v, torch.Tensor)}
    assert {"prediction", "stable", "x_adv", "queries"} <= set(tensors)
    assert {t.device for t in tensors.values()} == {META}
    assert CascadeState.load(path).prediction.device.type == "cpu"  # the default


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (marker gpu)")
def test_a_state_saved_on_the_cpu_resumes_on_cuda(tmp_path, robust_digits_mlp) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:60], y[:60]
    attacks = {"fgsm": create_attack("fgsm", eps=0.1), "pgd": create_attack("pgd", eps=0.1)}
    path = tmp_path / "state.pt"
    cpu = run_cascade(model, x, y, {"fgsm": attacks["fgsm"]}, batch_size=25, state_path=path)
    saved = CascadeState.load(path)
    saved.attacks, saved.signature["attacks"] = (
        list(attacks),
        {name: repr(a) for name, a in attacks.items()},
    )
    cuda = torch.device("cuda")
    try:
        resumed = run_cascade(
            model.to(cuda), x.to(cuda), y.to(cuda), attacks, batch_size=25, state=saved
        )
    finally:
        model.cpu()  # the fixture's model is shared
    assert resumed.stable.device.type == "cuda" and resumed.done == ["fgsm", "pgd"]
    assert resumed.per_attack["fgsm"] == cpu.per_attack["fgsm"]


def test_eval_json_on_a_run_is_unchanged_by_reading_on_the_cpu(run, capsys) -> None:
    assert main(["eval", "run", "--n", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
