"""train.save_epochs keeps chosen epochs' checkpoints; train.init_from starts a run from another
run's weights (only), and refuses a checkpoint of another architecture in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.errors import ConfigError
from robustlab.evaluation import evaluate_robustness
from robustlab.rundir import RunDirectory, with_absolute_paths
from robustlab.training.checkpoint import load_checkpoint, seed_everything
from robustlab.training.runner import fit, load_trained_model, prepare


@pytest.fixture
def source_run(tmp_path: Path, fast_run: list[str]) -> tuple[RunDirectory, object]:
    """A finished 3-epoch run keeping epochs 1 and 3, with its final evaluation."""
    torch.set_num_threads(1)
    config = build_config(None, [*fast_run, "train.save_epochs=[1, 3]"])
    run = RunDirectory.create(tmp_path / "source", config, "source")
    result = fit(prepare(config), run, "source", show_progress=False)
    return run, result


def test_save_epochs_keeps_those_epochs_checkpoints(source_run) -> None:
    run, _ = source_run
    kept = sorted(p.name for p in (run.path / "checkpoints").glob("epoch-*.pt"))
    assert kept == ["epoch-1.pt", "epoch-3.pt"]
    first, third = (
        load_checkpoint(run.epoch_checkpoint(1)),
        load_checkpoint(run.epoch_checkpoint(3)),
    )
    last = load_checkpoint(run.last_checkpoint)
    assert first["epoch"] == 1 and third["epoch"] == 3
    assert all(torch.equal(third["model"][k], v) for k, v in last["model"].items())
    assert not all(torch.equal(first["model"][k], v) for k, v in last["model"].items())


def test_init_from_reproduces_the_source_models_metrics(
    source_run, tmp_path: Path, fast_run: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights only: the new run's model is the source's last model (its evaluation, seeded as
    the source's final one, gives the same numbers), with a fresh optimizer and epoch count."""
    run, result = source_run
    monkeypatch.chdir(tmp_path)  # a relative path is recorded absolute, as `train` records it
    config = with_absolute_paths(
        build_config(None, [*fast_run, "train.init_from=source", "train.epochs=1"])
    )
    exp = prepare(config)
    source_model, _ = load_trained_model(run, "last")
    for (name, ours), theirs in zip(
        exp.model.state_dict().items(), source_model.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    assert exp.optimizer.state_dict()["state"] == {}
    seed_everything(config.seed)
    evaluated = evaluate_robustness(
        exp.model.eval(), exp.data.test_x, exp.data.test_y, exp.eval_attack,
        batch_size=config.eval.batch_size, stability_labels=config.eval.stability_labels,
    )  # fmt: skip
    last = result.selection["last"]
    assert evaluated.natural_accuracy == last["natural_accuracy"]
    assert evaluated.robust_accuracy == last["robust_accuracy"]
    new = RunDirectory.create(tmp_path / "finetune", config, "finetune")
    assert new.read_config().train.init_from == str(run.path)
    history = fit(exp, new, "finetune", show_progress=False).history
    assert [m["epoch"] for m in history] == [1]


def test_init_from_a_checkpoint_file(source_run, fast_run: list[str]) -> None:
    run, _ = source_run
    config = build_config(None, [*fast_run, f"train.init_from={run.epoch_checkpoint(1)}"])
    first = load_checkpoint(run.epoch_checkpoint(1))["model"]
    exp = prepare(config)
    assert all(torch.equal(v, first[k]) for k, v in exp.model.state_dict().items())


def test_init_from_another_architecture_is_refused_in_one_line(
    source_run, tmp_path: Path, fast_run: list[str], capsys: pytest.CaptureFixture
) -> None:
    run, _ = source_run
    config = build_config(None, [*fast_run, f"train.init_from={run.path}", "model.width=16"])
    with pytest.raises(ConfigError, match=r"train.init_from=.*width 32 there, 16 here"):
        prepare(config)
    missing = build_config(None, [*fast_run, f"train.init_from={tmp_path / 'nowhere.pt'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        prepare(missing)
    # From the command line: one line, exit 2, nothing written.
    sets = [part for o in [*fast_run, f"train.init_from={run.path}", "model.width=16"]
            for part in ("--set", o)]  # fmt: skip
    out, db = tmp_path / "new", tmp_path / "new.db"
    code = main(["train", *sets, "--out", str(out), "--store", str(db), "--quiet"])
    assert code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "robustlab train: error: train.init_from=" in stderr
    assert not out.exists() and not db.exists()


def test_save_epochs_beyond_the_run_are_refused(fast_run: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"train.save_epochs=\[2, 4\]: epochs in \[1, "):
        build_config(None, [*fast_run, "train.save_epochs=[2,4]"])
