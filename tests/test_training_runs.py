"""Whole runs with the issue-4 options: resume under every schedule, PAS snapshots and the
ensemble, final model selection, per-epoch terms, fast paths, calibrate-war."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import without_time
from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.rundir import RunDirectory
from robustlab.training.runner import fit, load_trained_model, prepare

# Each variant exercises state that must survive a resume: λ (WAR), ε and LR schedules restarted
# by PAS periods, snapshots, and AWP's epoch counter.
VARIANTS = {
    "war-pas": ["method.name=gat", "method.lam_schedule=war", "method.zeta=2", "train.periods=[2]",
                "attack.eps_schedule=cosine", "train.schedule=cyclic"],
    "linear-exp": ["method.name=pgd_at", "attack.eps_schedule=linear", "attack.eps_warmup=2",
                   "train.schedule=exp_decay", "train.milestones=[2]", "train.warmup_epochs=1"],
    "clean": ["method.name=clean", "train.schedule=piecewise", "train.milestones=[1, 3]"],
    "awp": ["method.name=awp", "method.awp_base=pgd_at", "method.awp_warmup=1"],
    "trades-war": ["method.name=trades", "method.lam_schedule=war", "method.zeta=3"],
    "fgsm_rs": ["method.name=fgsm_rs", "method.overfit_action=flag"],
}  # fmt: skip


class Crash(Exception):
    pass


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_crashed_run_resumes_to_the_same_metrics(tmp_path, fast_run, variant) -> None:
    overrides = [*fast_run, "train.epochs=4", "eval.final=false", *VARIANTS[variant]]
    config = build_config(None, overrides)
    # build_config validates method.name against the registry, so every variant's method (and
    # AWP's wrapped base) is registered here; a broken registration fails above, never skips.
    reference = fit(
        prepare(config),
        RunDirectory.create(tmp_path / "ref", config, "ref"),
        "ref",
        show_progress=False,
    )

    def crash_after_second(metrics: dict) -> None:
        if metrics["epoch"] == 2:
            raise Crash  # after the epoch's checkpoint, as a kill between epochs would be

    run = RunDirectory.create(tmp_path / "victim", config, "victim")
    with pytest.raises(Crash):
        fit(prepare(config), run, "victim", show_progress=False, on_epoch=crash_after_second)
    resumed = fit(prepare(config), run, "victim", resume=True, show_progress=False)
    assert without_time(resumed.history) == without_time(reference.history)
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3, 4]


def test_per_epoch_metrics_hold_eps_lam_terms_and_lipschitz(tmp_path, fast_run) -> None:
    overrides = [*fast_run, "train.epochs=3", "method.name=gat", "method.lam=2", "attack.eps_schedule=linear",
                 "attack.eps_warmup=2", "attack.eps_max=0.1", "eval.final=false"]  # fmt: skip
    config = build_config(None, overrides)
    history = fit(
        prepare(config), RunDirectory.create(tmp_path / "r", config, "r"), "r", show_progress=False
    ).history
    for m in history:
        for key in ("eps", "lam", "nat_risk", "rob_reg", "lipschitz", "nat_rob_ratio", "lam_trace"):
            assert m[key] is not None, key
        assert m["lam"] == 2.0 and m["rob_reg"] >= 0 and m["lipschitz"] > 0
    # ε rises linearly to eps_max = 0.1 at D = 2 epochs; 192 training points in batches of 64:
    # an epoch's last iteration starts at t = epoch + 2/3.
    assert history[0]["eps"] == pytest.approx(0.1 * (2 / 3) / 2)
    assert history[1]["eps"] == pytest.approx(0.1 * (5 / 3) / 2) and history[2][
        "eps"
    ] == pytest.approx(0.1)


def test_pas_keeps_a_snapshot_per_period_and_evaluates_the_ensemble(tmp_path, fast_run) -> None:
    overrides = [*fast_run, "train.epochs=4", "train.periods=[1, 3]"]
    config = build_config(None, overrides)
    run = RunDirectory.create(tmp_path / "r", config, "r")
    result = fit(prepare(config), run, "r", show_progress=False)
    assert [p.name for p in run.snapshot_checkpoints()] == [
        "snapshot_1.pt",
        "snapshot_2.pt",
        "snapshot_3.pt",
    ]
    assert set(result.selection) == {"last", "best", "ensemble"}
    for summary in result.selection.values():
        assert (
            summary["n"] == 128 and 0 <= summary["robust_accuracy"] <= summary["natural_accuracy"]
        )
    ensemble, state = load_trained_model(run, "ensemble")
    assert len(ensemble.members) == 3 and state["epoch"] == 4
    last, _ = load_trained_model(run, "last")
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(ensemble(x), last(x).log_softmax(1))  # really an average of three


def test_train_json_reports_the_selection(tmp_path, monkeypatch, capsys, fast_run) -> None:
    monkeypatch.chdir(tmp_path)
    sets = [part for item in fast_run for part in ("--set", item)]
    assert main(["train", *sets, "--out", "run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["selection"]) == {"last", "best"}
    assert result["selection"]["last"]["epoch"] == 3
    assert main(["calibrate-war", "run", "--json"]) == 0
    zeta = json.loads(capsys.readouterr().out)
    assert zeta["zeta"] == pytest.approx(result["final"]["nat_rob_ratio"])
    assert zeta["zeta"] == pytest.approx(
        result["final"]["nat_risk"] / result["final"]["rob_reg"], rel=0.5
    )


@pytest.mark.parametrize("option", ["train.precision=bf16", "train.channels_last=true"])
def test_fast_paths_match_fp32_within_tolerance(tmp_path, fast_run, option) -> None:
    base = [*fast_run, "model.name=lenet", "model.width=2", "train.epochs=1", "eval.final=false"]
    results = {}
    for name, extra in (("fp32", []), ("fast", [option])):
        config = build_config(None, [*base, *extra])
        run = RunDirectory.create(tmp_path / name, config, name)
        results[name] = fit(prepare(config), run, name, show_progress=False).final
    assert results["fast"]["train_loss"] == pytest.approx(results["fp32"]["train_loss"], rel=0.05)
    assert results["fast"]["test_nat_acc"] == pytest.approx(
        results["fp32"]["test_nat_acc"], abs=0.1
    )


@pytest.mark.slow
def test_torch_compile_matches_eager(tmp_path, fast_run) -> None:
    """Minutes on a CPU (inductor compiles the model and its attack's backward): run with -m slow."""
    base = [*fast_run, "train.epochs=1", "eval.final=false"]
    results = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        config = build_config(None, [*base, *extra])
        results[name] = fit(
            prepare(config),
            RunDirectory.create(tmp_path / name, config, name),
            name,
            show_progress=False,
        ).final
    assert results["compiled"]["train_loss"] == pytest.approx(
        results["eager"]["train_loss"], rel=1e-3
    )


def test_a_run_draws_the_same_numbers_whatever_ran_before_it(tmp_path, fast_run, one_thread):
    """Issue 8 point 17: the demo prepares two runs and trains them one after the other; the
    second must not inherit the random state the first left behind (PGD's random starts draw
    from the global generator), so it equals the same config trained alone."""
    first = build_config(None, [*fast_run, "train.epochs=2", "method.name=clean"])
    second = build_config(None, [*fast_run, "train.epochs=2", "method.name=pgd_at"])
    experiments = [prepare(first), prepare(second)]  # as the demo: every check before training
    results = [
        fit(exp, RunDirectory.create(tmp_path / name, exp.config, name), name, show_progress=False)
        for name, exp in zip(("first", "second"), experiments, strict=True)
    ]
    torch.manual_seed(12345)  # whatever the process did before must not matter either
    alone = fit(
        prepare(second),
        RunDirectory.create(tmp_path / "alone", second, "alone"),
        "alone",
        show_progress=False,
    )
    assert without_time(results[1].history) == without_time(alone.history)
    untimed = [
        {which: {k: v for k, v in s.items() if k != "seconds"} for which, s in r.selection.items()}
        for r in (results[1], alone)
    ]
    assert untimed[0] == untimed[1]
