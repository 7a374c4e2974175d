"""One run over several processes: ``torchrun --nproc-per-node K -m robustlab train`` (DDP).

Checked on the CPU with gloo and 2 processes: the global batch is sharded exactly, the final
metrics equal one process's with the same global batch (losses within 1e-4, accuracies within
one test point: the ranks' gradient sums differ from one process's only in float rounding), and
a run whose rank 0 is SIGKILLed after its first epoch resumes under torchrun to the same end.
NCCL on GPUs and SyncBatchNorm are not exercised here (no GPU in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conftest import sets
from robustlab.cli.main import main
from robustlab.data import DeviceLoader
from robustlab.data.loader import ShardedLoader
from robustlab.errors import ConfigError
from robustlab.training import distributed
from robustlab.training.checkpoint import load_checkpoint

EPOCHS = 3
# GAT with WAR's adaptive λ (its update needs the global batch's terms, not a shard's) on the
# digits; the training attack starts at x (no random start), so both runs draw the same numbers.
RUN = [
    "data.name=digits",
    "model.name=mlp",
    "model.width=32",
    "method.name=gat",
    "method.lam_schedule=war",
    "method.zeta=2",
    "attack.steps=3",
    "attack.random_start=false",
    "eval.steps=3",
    "eval.n=120",
    "eval.n_train=0",
    "eval.lipschitz_n=0",
    f"train.epochs={EPOCHS}",
    "train.batch_size=64",
    "train.lr=0.1",
    "device=cpu",
]
LOSS_TOLERANCE = 1e-4


def test_sharded_loader_splits_every_global_batch_exactly():
    """The ranks' shards of each step are the batch one process draws (same permutation and
    augmentation), and their weights K·n_r/N make the mean of weighted shard means the batch
    mean, whatever N mod K; a final batch smaller than K is skipped."""
    images = torch.randint(0, 256, (22, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(22)

    def loader() -> DeviceLoader:
        return DeviceLoader(images, labels, 10, shuffle=True, augment="crop_flip", seed=5)

    world = 3
    full = list(loader().epoch(4))
    shards = [list(ShardedLoader(loader(), rank, world).epoch(4)) for rank in range(world)]
    assert [len(s) for s in shards] == [2, 2, 2]  # batches of 10, 10; the last (2 < 3) skipped
    for step, (x, y) in enumerate(full[:2]):
        assert torch.equal(torch.cat([s[step][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), y)
    values = torch.randn(10)
    parts, weights = values.tensor_split(world), []
    sharded = [ShardedLoader(loader(), rank, world) for rank in range(world)]
    for s in sharded:
        next(iter(s.epoch(0)))
        weights.append(s.shard_weight)
    assert weights == pytest.approx([1.2, 0.9, 0.9])
    weighted = sum(w * float(p.mean()) for w, p in zip(weights, parts, strict=True)) / world
    assert weighted == pytest.approx(float(values.mean()), abs=1e-6)


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 3)  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_unused_parameters_are_found_and_ddp_is_told(tmp_path):
    """The probe finds the parameters the loss does not reach; DDP told about them trains,
    DDP not told fails on its second step (so the probe is what makes such a model work)."""
    model = _WithUnused()
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    unused = distributed.unused_parameters(model, x, y)
    assert unused == ["spare.weight", "spare.bias"]
    assert all(p.grad is None for p in model.parameters())  # the probe writes no .grad
    context = distributed.DistributedContext(0, 1, 0, "gloo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        told = distributed.wrap(model, context, torch.device("cpu"), unused)
        assert isinstance(told, DistributedDataParallel)
        for _ in range(2):
            nn.functional.cross_entropy(told(x), y).backward()
        not_told = distributed.wrap(_WithUnused(), context, torch.device("cpu"), [])
        with pytest.raises(RuntimeError, match="finished reduction"):
            for _ in range(2):
                nn.functional.cross_entropy(not_told(x), y).backward()
    finally:
        dist.destroy_process_group()


def test_sync_bn_needs_cuda():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert distributed.convert_batch_norm(model, False, torch.device("cpu")) is model
    with pytest.raises(ConfigError, match="train.sync_bn=True: SyncBatchNorm needs CUDA"):
        distributed.convert_batch_norm(model, True, torch.device("cpu"))


def test_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: a plain run
    assert distributed.init_from_env(torch.device("cpu")) is None
    assert distributed.current() is None


def _torchrun(
    args: list[str], cwd: Path, script: Path | None = None
) -> subprocess.CompletedProcess:
    target = [str(script)] if script else ["-m", "robustlab"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", *target, *args]  # standalone: a free port (tests in parallel)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


# Rank 0 SIGKILLs itself right after writing its first epoch (checkpoint and metrics line):
# a crash at a known point, so the resume below has something to continue.
CRASH_AFTER_FIRST_EPOCH = """
import os, signal, sys
import robustlab.training.runner as runner
from robustlab.cli.main import main

save_epoch = runner._save_epoch

def save_then_crash(exp, run, epoch, *args, **kwargs):
    best = save_epoch(exp, run, epoch, *args, **kwargs)
    if epoch == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return best

runner._save_epoch = save_then_crash
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_match_one_and_resume_after_a_crash(tmp_path, capsys, one_thread):
    """The acceptance test of multi-GPU runs, on the CPU with gloo: the same final metrics as
    one process with the same global batch, after a crash and ``train --resume`` under torchrun."""
    assert main(["train", *sets(RUN), "--out", str(tmp_path / "one"), "--json", "--store",
                 str(tmp_path / "one.db")]) == 0  # fmt: skip
    single = json.loads(capsys.readouterr().out)

    script = tmp_path / "crash.py"
    script.write_text(CRASH_AFTER_FIRST_EPOCH)
    run_dir = tmp_path / "ddp"
    crashed = _torchrun(
        ["train", *sets(RUN), "--out", str(run_dir), "--store", str(tmp_path / "ddp.db")],
        tmp_path,
        script,
    )
    assert crashed.returncode != 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1, crashed.stderr
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 1 and len(checkpoint["rng_ranks"]) == 2  # every rank's stream

    resumed = _torchrun(["train", "--resume", str(run_dir), "--json"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ddp = json.loads(resumed.stdout)  # rank 0 alone prints (one JSON object)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]
    assert epochs == list(range(1, EPOCHS + 1))

    one, two = single["final"], ddp["final"]
    assert two["lam_trace"] == pytest.approx(one["lam_trace"], abs=LOSS_TOLERANCE)  # WAR's λ
    for key in ("train_loss", "nat_risk", "rob_reg", "nat_rob_ratio", "val_rob_loss"):
        assert two[key] == pytest.approx(one[key], abs=LOSS_TOLERANCE), key
    points = 120
    for key in ("test_nat_acc", "test_rob_acc", "val_nat_acc", "val_rob_acc"):
        assert abs(two[key] - one[key]) <= 1 / points + 1e-9, key
    for which in ("last", "best"):
        a, b = single["selection"][which], ddp["selection"][which]
        assert b["robust_accuracy"] == pytest.approx(a["robust_accuracy"], abs=1 / 359 + 1e-9)
