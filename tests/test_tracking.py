"""Per-iteration tracking (train.track_every): what is recorded, that it changes nothing, reads
nothing back from the device inside the loop, and survives a resume exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import without_time
from robustlab.attacks import create_attack
from robustlab.config import build_config
from robustlab.data import DeviceLoader
from robustlab.rundir import RunDirectory
from robustlab.store import ResultsStore
from robustlab.training import create_method
from robustlab.training.loop import StepControls, train_one_epoch
from robustlab.training.runner import fit, prepare
from robustlab.training.schedules import ScheduleClock
from robustlab.training.tracking import IterationTracker, plot_iterations

FIELDS = {"iteration", "epoch", "lr", "eps", "loss", "rob_loss", "rob_error", "grad_norm",
          "distance", "lam"}  # fmt: skip


class Crash(Exception):
    pass


def test_which_iterations_are_recorded() -> None:
    tracker = IterationTracker(nn.Linear(2, 2), every=10, total=10_000, dense=2000)
    wanted = [i for i in range(10_000) if tracker.wants(i)]
    assert wanted[:2000] == list(range(2000))  # the first 2,000: all
    assert wanted[-2000:] == list(range(8000, 10_000))  # the last 2,000: all
    middle = [i for i in wanted if 2000 <= i < 8000]
    assert middle == list(range(2000, 8000, 10))


def test_a_tracked_run_records_iterations_in_the_run_directory_and_the_store(
    tmp_path: Path, fast_run: list[str], one_thread
) -> None:
    config = build_config(None, [*fast_run, "train.track_every=5", "eval.final=false"])
    run = RunDirectory.create(tmp_path / "run", config, "tracked")
    store = ResultsStore(tmp_path / "store.db")
    exp = prepare(config)
    per_epoch = len(exp.loader)
    result = fit(exp, run, "tracked", store=store, show_progress=False)
    records = run.read_iterations()
    # Fewer than 2,000 iterations: every one is at the start or the end, so all are kept.
    assert [r["iteration"] for r in records] == list(range(3 * per_epoch))
    assert [r["epoch"] for r in records] == [1 + i // per_epoch for i in range(3 * per_epoch)]
    assert all(set(r) == FIELDS for r in records)
    for r in records:
        assert r["grad_norm"] > 0 and r["distance"] > 0
        assert 0 <= r["rob_error"] <= 1 and r["lam"] == 1.0 and r["eps"] == pytest.approx(0.1)
        # PGD-AT at λ = 1 optimizes CE(f(x_adv), y) itself: the robust loss recorded is the
        # step's own forward pass on the crafted batch, not a second one.
        assert r["rob_loss"] == pytest.approx(r["loss"], rel=1e-6)
    assert records[-1]["lr"] == pytest.approx(result.history[-1]["lr"])
    assert records[-1]["distance"] > records[0]["distance"]
    assert store.iterations("tracked") == records
    lines = (run.path / "iterations.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    figure = plot_iterations({"eps 0.1": records}, tmp_path / "iterations.png")
    assert figure is not None and figure.read_bytes()[:4] == b"\x89PNG"


def test_tracking_changes_nothing_in_training(
    tmp_path: Path, fast_run: list[str], one_thread
) -> None:
    histories = []
    for every in (0, 2):
        config = build_config(None, [*fast_run, f"train.track_every={every}", "eval.final=false"])
        run = RunDirectory.create(tmp_path / f"run{every}", config, f"r{every}")
        histories.append(fit(prepare(config), run, f"r{every}", show_progress=False).history)
    assert without_time(histories[0]) == without_time(histories[1])
    assert not (tmp_path / "run0" / "iterations.jsonl").exists()


def test_resume_keeps_every_iteration_exactly_once(
    tmp_path: Path, fast_run: list[str], one_thread
) -> None:
    overrides = [*fast_run, "train.track_every=3", "eval.final=false"]
    config = build_config(None, overrides)
    reference = RunDirectory.create(tmp_path / "reference", config, "reference")
    fit(prepare(config), reference, "reference", show_progress=False)

    def crash_after_first(metrics: dict) -> None:
        if metrics["epoch"] == 1:
            raise Crash  # after the epoch's checkpoint and records

    run = RunDirectory.create(tmp_path / "victim", config, "victim")
    store = ResultsStore(tmp_path / "victim.db")
    with pytest.raises(Crash):
        fit(prepare(config), run, "victim", store=store, show_progress=False,
            on_epoch=crash_after_first)  # fmt: skip
    done = len(run.read_iterations())
    # A crash after the next epoch's records were appended but before its checkpoint: they
    # must not survive the resume (the resumed run records that epoch again).
    run.append_iterations([{**run.read_iterations()[-1], "iteration": done, "loss": -1.0}])
    store.record_iterations("victim", [{"iteration": done + 1, "loss": -1.0}])
    fit(prepare(config), run, "victim", store=store, resume=True, show_progress=False)
    expected = reference.read_iterations()
    assert run.read_iterations() == expected  # the same numbers, θ₀ restored from the checkpoint
    assert store.iterations("victim") == expected


def test_the_tracker_reads_nothing_back_inside_the_epoch(one_thread) -> None:
    """Reads of device values (float(t), .item(), .tolist(), bool(t): each a host-device sync on
    a GPU) inside a tracked epoch are those of an untracked one; flush reads once."""
    torch.manual_seed(0)
    x = (torch.rand(64, 1, 4, 4) * 255).to(torch.uint8)
    y = torch.randint(0, 3, (64,))
    loader = DeviceLoader(x, y, batch_size=16, shuffle=True, seed=0)
    attack = create_attack("pgd", eps=0.1, steps=2, check_inputs=False)
    counts = []
    for tracked in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
        method = create_method("pgd_at", attack=attack, track_terms=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        controls = StepControls(
            clock=ScheduleClock(1), lr_schedule=lambda t: 1.0, base_lr=0.1,
            eps_schedule=lambda t: 0.1, attack=attack, eps_target=0.1, alpha_target=None,
        )  # fmt: skip
        tracker = IterationTracker(model, every=1, total=4) if tracked else None
        calls: list[str] = []
        with pytest.MonkeyPatch.context() as patch:
            for attr in ("__float__", "item", "tolist", "__bool__"):
                original = getattr(torch.Tensor, attr)

                def counted(self, *args, _name=attr, _original=original, _calls=calls):
                    _calls.append(_name)
                    return _original(self, *args)

                patch.setattr(torch.Tensor, attr, counted)
            train_one_epoch(model, method, loader, optimizer, controls, 0, tracker=tracker)
            counts.append(len(calls))
            if tracker is not None:
                before = len(calls)
                records = tracker.flush()
                assert calls[before:] == ["tolist"]
                assert len(records) == 4 and records[0]["rob_error"] is not None
    assert counts[0] == counts[1]


def test_clean_training_without_an_attack_records_no_robust_numbers(
    tmp_path: Path, fast_run: list[str], one_thread
) -> None:
    overrides = [*fast_run, "method.name=clean", "method.track_terms=false",
                 "train.track_every=4", "train.epochs=1", "eval.final=false"]  # fmt: skip
    config = build_config(None, overrides)
    run = RunDirectory.create(tmp_path / "run", config, "clean")
    fit(prepare(config), run, "clean", show_progress=False)
    records = run.read_iterations()
    assert records and all(r["rob_error"] is None and r["rob_loss"] is None for r in records)
    assert all(r["grad_norm"] > 0 for r in records)
