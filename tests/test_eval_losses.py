"""Natural and adversarial losses next to the accuracies: in every evaluation, every epoch and
`robustlab eval` (issue 9, point 1)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks import create_attack
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.evaluation import evaluate_robustness
from robustlab.evaluation.cascade import CascadeState
from robustlab.rundir import RunDirectory
from robustlab.store import ResultsStore
from robustlab.training.loop import split_metric_names
from robustlab.training.runner import METRIC_ORDER, fit, load_trained_model, prepare


def _ce(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("stability_labels", ["predicted", "true"])
def test_losses_are_the_cross_entropy_at_the_kept_adversarial_examples(
    robust_digits_mlp, one_thread, stability_labels
) -> None:
    """A cascade of two attacks: the robust loss is CE(f(x_adv), y) on the final examples it
    keeps per point (the first that changed the prediction, else the last attack's), against
    the true label whatever label the attacks pushed away from."""
    model, x, y = robust_digits_mlp
    x, y = x[:150], y[:150]
    attacks = {
        "fgsm": create_attack("fgsm", eps=0.1),
        "pgd": create_attack("pgd", eps=0.1, steps=5),
    }
    result = evaluate_robustness(
        model, x, y, attacks, batch_size=64, keep_adv=True, stability_labels=stability_labels
    )
    assert 0 < result.robust_accuracy < result.natural_accuracy  # both attacks had work
    assert result.per_attack["fgsm"] > result.per_attack["pgd"]  # pgd fooled some fgsm did not
    assert torch.allclose(result.nat_loss, _ce(model, x, y), atol=1e-5)
    assert torch.allclose(result.adv_loss, _ce(model, result.x_adv, y), atol=1e-5)
    assert result.natural_loss == pytest.approx(float(_ce(model, x, y).double().mean()), rel=1e-5)
    direct = F.cross_entropy(model(result.x_adv), y).item()
    assert result.robust_loss == pytest.approx(direct, rel=1e-5)
    assert result.robust_loss > result.natural_loss  # the attacks raised the loss on the whole
    summary = result.summary()
    assert summary["natural_loss"] == result.natural_loss
    assert summary["robust_loss"] == result.robust_loss
    assert "natural_loss" in repr(result)


def test_no_attack_budget_leaves_the_loss_unchanged(robust_digits_mlp, one_thread) -> None:
    model, x, y = robust_digits_mlp
    result = evaluate_robustness(model, x[:64], y[:64], create_attack("pgd", eps=0.0, steps=2))
    assert result.robust_loss == pytest.approx(result.natural_loss, rel=1e-6)


def test_per_epoch_losses_are_in_metrics_and_store(tmp_path, fast_run, one_thread) -> None:
    config = build_config(None, [*fast_run, "train.epochs=2", "eval.final=false"])
    experiment = prepare(config)
    run = RunDirectory.create(tmp_path / "run", config, "run-1")
    store = ResultsStore(tmp_path / "store.db")
    result = fit(experiment, run, "run-1", store=store, show_progress=False)
    keys = {f"{split}_{kind}_loss" for split in ("train", "val", "test") for kind in ("nat", "rob")}
    assert keys <= set(METRIC_ORDER)
    assert keys <= set(
        split_metric_names("train") + split_metric_names("val") + split_metric_names("test")
    )
    for metrics in (result.history, run.read_metrics(), store.epochs("run-1")):
        for epoch in metrics:
            assert keys <= set(epoch)
            assert all(epoch[key] > 0 for key in keys)
    assert store.epochs("run-1") == run.read_metrics() == result.history
    # The last epoch's natural losses are those of the last model, recomputed directly.
    model, _ = load_trained_model(run, "last")
    data = experiment.data
    last = result.history[-1]
    test_x = data.test_x.float().div(255)
    assert last["test_nat_loss"] == pytest.approx(
        float(_ce(model, test_x, data.test_y).mean()), rel=1e-5
    )
    train_x = data.train_x[: config.eval.n_train].float().div(255)
    expected = float(_ce(model, train_x, data.train_y[: config.eval.n_train]).mean())
    assert last["train_nat_loss"] == pytest.approx(expected, rel=1e-5)


def test_skipped_splits_have_null_losses(tmp_path, fast_run, one_thread) -> None:
    overrides = [
        *fast_run,
        "train.epochs=1",
        "eval.n_train=0",
        "data.val_size=0",
        "eval.final=false",
    ]
    config = build_config(None, overrides)
    run = RunDirectory.create(tmp_path / "run", config, "run-1")
    (epoch,) = fit(prepare(config), run, "run-1", show_progress=False).history
    for key in ("train_nat_loss", "train_rob_loss", "val_nat_loss", "val_rob_loss"):
        assert key in epoch and epoch[key] is None
    assert epoch["test_rob_loss"] > 0


def test_eval_json_and_table_report_losses(tmp_path, monkeypatch, capsys, fast_run) -> None:
    monkeypatch.chdir(tmp_path)
    sets = [part for item in [*fast_run, "train.epochs=1"] for part in ("--set", item)]
    assert main(["train", *sets, "--out", "run", "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", "run", "--attack", "fgsm,pgd", "--save-adv", "adv.pt", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    saved = torch.load(tmp_path / "adv.pt")
    model, _ = load_trained_model(RunDirectory.open(tmp_path / "run"), "last")
    adv = _ce(model, saved["x_adv"], saved["y"]).double().mean()
    assert summary["robust_loss"] == pytest.approx(float(adv), rel=1e-5)
    assert summary["natural_loss"] > 0
    stored = ResultsStore(tmp_path / "runs" / "robustlab.db").evaluations()[-1]
    assert stored["details"]["robust_loss"] == summary["robust_loss"]
    assert main(["eval", "run", "--attack", "fgsm,pgd", "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    column = table[0].split().index("CE") - 1  # "robust acc" is two words
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert float(rows["(natural)"][column]) == pytest.approx(summary["natural_loss"], rel=1e-3)
    assert float(rows["overall"][column]) == pytest.approx(summary["robust_loss"], rel=1e-3)


def test_losses_survive_a_saved_cascade_state(tmp_path, robust_digits_mlp, one_thread) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:64], y[:64]
    path = tmp_path / "state.pt"
    attack = create_attack("pgd", eps=0.1, steps=3)
    first = evaluate_robustness(model, x, y, attack, state_path=path)
    resumed = evaluate_robustness(model, x, y, attack, state_path=path)  # finished: no attack
    assert torch.equal(resumed.adv_loss, first.adv_loss) and resumed.robust_loss > 0
    # A state written before losses were recorded resumes with them unknown, not invented.
    state = CascadeState.load(path)
    state.nat_loss = state.adv_loss = None
    state.save(path)
    old = evaluate_robustness(model, x, y, attack, state_path=path)
    assert old.natural_loss is None and old.summary()["robust_loss"] is None
    assert old.robust_accuracy == first.robust_accuracy
