"""``robustlab calibrate-war``: ζ robust to a batch with l_rob ≈ 0, its spread, and warnings."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from robustlab.cli.main import main
from robustlab.config import build_config
from robustlab.data import DeviceLoader
from robustlab.rundir import RunDirectory
from robustlab.training.loop import StepControls, train_one_epoch
from robustlab.training.methods import Terms, TrainingMethod
from robustlab.training.schedules import ScheduleClock


class _FixedTerms(TrainingMethod):
    """Reports a fixed natural risk and, batch after batch, the given robust regularizations."""

    needs_attack = False

    def __init__(self, nat: float, robs: list[float]) -> None:
        super().__init__(attack=None, lam=0.0)
        self.nat, self.robs, self.calls = nat, robs, 0

    def objective(self, model: nn.Module, x, x_adv, y) -> Terms:
        rob = self.robs[self.calls % len(self.robs)]
        self.calls += 1
        base = model(x).sum() * 0 + self.nat  # a loss with a graph, worth self.nat
        return Terms(base, torch.tensor(rob), torch.tensor(self.nat), optimize_rob_reg=False)


def test_the_epoch_ratio_is_not_blown_up_by_one_batch_with_no_regularization() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    loader = DeviceLoader(torch.zeros(256, 1, 2, 2, dtype=torch.uint8), torch.zeros(256).long(), 64)
    method = _FixedTerms(nat=1.0, robs=[0.5, 0.5, 0.0, 0.5])  # the third batch: l_rob = 0
    controls = StepControls(
        clock=ScheduleClock(1),
        lr_schedule=lambda t: 1.0,
        base_lr=0.0,
        eps_schedule=lambda t: 0.0,
        attack=None,
        eps_target=0.0,
        alpha_target=None,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    metrics = train_one_epoch(model, method, loader, optimizer, controls, 0)
    # Four batches of 64: Σ l_nat / Σ l_rob = 4 / 1.5. The mean of per-batch ratios would be
    # (2 + 2 + 1e12 + 2) / 4, about 2.5e11.
    assert metrics["nat_rob_ratio"] == pytest.approx(4 / 1.5)
    assert metrics["nat_rob_ratio_median"] == pytest.approx(2.0)
    assert metrics["nat_rob_ratio_p10"] == pytest.approx(2.0)
    assert metrics["nat_rob_ratio_p90"] > 1e11  # the spread shows the outlier


def _epoch(epoch: int, nat: float, rob: float, acc: float = 0.8) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "lam": 6.0,
        "nat_risk": nat,
        "rob_reg": rob,
        # What a run recorded before the fix: the mean of per-batch ratios, blown up by one batch.
        "nat_rob_ratio": 1e11,
        "nat_rob_ratio_p10": 1.8,
        "nat_rob_ratio_median": 2.0,
        "nat_rob_ratio_p90": 2.3,
        "train_nat_acc": acc,
    }


def _run(tmp_path, history, status="finished", num_classes=10) -> str:
    run = RunDirectory.create(tmp_path / "thin", build_config(None), "thin")
    run.rewrite_metrics(history)
    run.update_info(status=status, num_classes=num_classes)
    return str(run.path)


def test_zeta_is_the_ratio_of_the_epoch_losses_with_its_spread(tmp_path, capsys) -> None:
    path = _run(tmp_path, [_epoch(1, 1.0, 0.5), _epoch(2, 1.0, 0.5), _epoch(3, 0.99, 0.5)])
    assert main(["calibrate-war", path, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["zeta"] == pytest.approx(0.99 / 0.5)
    assert result["batch_spread"] == {"p10": 1.8, "median": 2.0, "p90": 2.3}
    assert result["warnings"] == [] and captured.err == ""
    assert main(["calibrate-war", path]) == 0
    text = capsys.readouterr().out
    assert "zeta = 1.98" in text and "10% 1.8, median 2, 90% 2.3" in text
    assert "method.zeta=1.98" in text


@pytest.mark.parametrize(
    ("history", "status", "fragment"),
    [
        ([_epoch(1, 2.0, 0.5), _epoch(2, 1.5, 0.5), _epoch(3, 1.0, 0.5)], "finished",
         "not converged"),
        ([_epoch(1, 1.0, 0.5)], "finished", "cannot tell whether zeta converged"),
        ([_epoch(e, 2.3, 1.0, acc=0.11) for e in (1, 2, 3)], "finished", "chance level"),
        ([_epoch(e, 1.0, 0.5) for e in (1, 2, 3)], "running", "not finished"),
    ],
)  # fmt: skip
def test_warns_when_the_calibration_run_is_not_usable(
    tmp_path, capsys, history, status, fragment
) -> None:
    path = _run(tmp_path, history, status=status)
    assert main(["calibrate-war", path]) == 0
    err = capsys.readouterr().err
    assert "robustlab calibrate-war: warning:" in err and fragment in err


def test_no_regularization_at_all_is_an_error(tmp_path, capsys) -> None:
    path = _run(tmp_path, [_epoch(1, 1.0, 0.0)])
    assert main(["calibrate-war", path]) == 2
    err = capsys.readouterr().err
    assert "undefined" in err and len(err.strip().splitlines()) == 1
