"""One run on several processes: ``torchrun --nproc-per-node K -m robustlab train ...``.

torchrun starts K copies of ``robustlab train`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. When ``WORLD_SIZE`` > 1 each process
joins one process group (NCCL on CUDA, gloo on the CPU) and the run is trained with
:class:`~torch.nn.parallel.DistributedDataParallel` (DDP):

* **batches**: ``train.batch_size`` is the *global* batch. Every rank draws the same global batch
  (the loader's permutation and augmentation depend on ``(seed, epoch)`` only) and keeps its
  contiguous 1/K share (:class:`~robustlab.data.loader.ShardedLoader`), so the union of the
  ranks' shards is the batch one process would train on;
* **adversarial examples**: each rank crafts its shard's on the underlying module, never through
  the DDP wrapper (:func:`unwrap`): a wrapper's forward would broadcast buffers and prepare a
  gradient reduction for a backward pass that never comes, and an attack whose number of forward
  passes depends on the data would leave the ranks waiting on each other's collectives;
* **gradients**: DDP averages them over the ranks; a shard's loss is weighted by K·n_r/N
  (``shard_weight``) so the average is the global batch's mean even when N is not a multiple
  of K. Parameters the loss does not reach are found once by a probe pass
  (:func:`unused_parameters`) and DDP is told only then (``find_unused_parameters`` makes it
  search the graph every step);
* **batch norm**: per-rank batch statistics with rank 0's running averages (DDP's buffer
  broadcast), or ``train.sync_bn = true``: :class:`~torch.nn.SyncBatchNorm`, statistics of the
  global batch (CUDA only: torch implements it for GPUs);
* **metrics**: the epoch's training sums are all-reduced (the same numbers as one process);
  WAR's λ is stepped with the global batch's terms (:class:`GlobalBatchMean`);
* **writes**: only rank 0 writes checkpoints, metrics, ``run.json`` and the store, and only
  rank 0 evaluates (with its own random stream, the one a single process would have); at each
  epoch's end rank 0's weights, buffers and method state are broadcast (removing any drift,
  such as AWP's per-rank weight perturbation leaves in the last bits), and every rank's random
  state is gathered into the checkpoint, so a resumed run continues every rank's stream.

Verified on the CPU with gloo and 2 processes (``tests/test_distributed.py``); NCCL on GPUs and
``SyncBatchNorm`` are not exercised by the test suite.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError

# Rank 0 evaluates alone at the end of every epoch (and runs the final evaluation) while the
# other ranks wait in a collective: a full-test-set PGD evaluation of a wide model takes tens of
# minutes, beyond torch's default timeout of the collectives (10 minutes for NCCL).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
# Seeds of ranks > 0: rank 0 keeps the run's own random stream (a single process's).
_RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a multi-process run.

    Attributes:
        rank: the process's rank, 0 .. world_size - 1 (rank 0 writes and evaluates).
        world_size: the number of processes K.
        local_rank: the rank on this node (the GPU index).
        backend: ``"nccl"`` (CUDA) or ``"gloo"`` (CPU).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The training device of this rank: its own GPU (``cuda:LOCAL_RANK``), or the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device


_CONTEXT: DistributedContext | None = None


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("WORLD_SIZE", os.environ["WORLD_SIZE"], "must be an integer") from None


def init_from_env(device: torch.device) -> DistributedContext | None:
    """Join the process group torchrun describes, when ``WORLD_SIZE`` > 1; ``None`` otherwise
    (a single process, torchrun with one process included, trains as ``robustlab train`` does).

    Args:
        device: the resolved training device (``cuda`` selects NCCL and this rank's GPU).
    """
    global _CONTEXT
    world = launched_world_size()
    if world <= 1:
        return None
    if _CONTEXT is not None and dist.is_initialized():
        return _CONTEXT
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        # Before the process group: NCCL and the object collectives use the current device.
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    _CONTEXT = DistributedContext(rank, world, local_rank, backend)
    return _CONTEXT


def current() -> DistributedContext | None:
    """The context :func:`init_from_env` set up, while its process group exists."""
    return _CONTEXT if _CONTEXT is not None and dist.is_initialized() else None


def shutdown() -> None:
    """Leave the process group (at the end of ``robustlab train``)."""
    global _CONTEXT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def unwrap(model: nn.Module) -> nn.Module:
    """The module a DDP wrapper holds (the model itself otherwise). Attacks craft on it."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def unused_parameters(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Names of the trainable parameters a cross-entropy loss on ``model(x)`` does not reach.

    A probe pass, in eval mode (no batch-norm statistics updated, no dropout drawn), with
    :func:`torch.autograd.grad` (no ``.grad`` written): DDP must be told about such parameters
    (``find_unused_parameters``), or its reduction waits for their gradients forever.
    """
    from ..attacks.base import model_mode

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    with model_mode(model, "eval"), torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return [name for (name, _), g in zip(named, grads, strict=True) if g is None]


def convert_batch_norm(model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
    """``train.sync_bn``: replace every batch-norm layer by :class:`~torch.nn.SyncBatchNorm`
    (statistics over the global batch). The layers keep their parameters and buffers, so the
    optimizer built on them and the checkpoints (same state-dict keys) are unchanged.

    Raises:
        ConfigError: ``sync_bn`` on the CPU (torch implements SyncBatchNorm for GPUs only).
    """
    if not sync_bn:
        return model
    if device.type != "cuda":
        raise ConfigError(
            "train.sync_bn",
            True,
            "SyncBatchNorm needs CUDA devices (torch has no CPU implementation); "
            "use sync_bn = false (per-rank batch statistics) on the CPU",
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(
    train_model: nn.Module,
    context: DistributedContext,
    device: torch.device,
    unused: Sequence[str] = (),
) -> DistributedDataParallel:
    """``train_model`` in DDP (rank 0's weights and buffers are broadcast to all ranks here)."""
    return DistributedDataParallel(
        train_model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(unused),
    )


def seed_rank(seed: int, context: DistributedContext | None) -> None:
    """Give ranks > 0 their own random stream (attack starts, dropout) from ``(seed, rank)``;
    rank 0 keeps the run's stream, so it draws what a single process would."""
    if context is not None and context.rank > 0:
        from .checkpoint import seed_everything

        seed_everything(seed * _RANK_SEED_STRIDE + context.rank)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over the ranks (a new tensor)."""
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (each rank gets the list)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()


def sync_from_main(model: nn.Module, method: Any) -> None:
    """Make every rank's weights, buffers and training-method state rank 0's (at epoch ends).

    DDP keeps the weights equal by applying the same averaged gradient everywhere; what happens
    outside the optimizer step does not: a method's end-of-epoch hook (FGSM-RS's overfitting
    detector restores earlier weights after a randomly started PGD), AWP adding and removing a
    per-rank perturbation (equal only up to rounding), spectral clipping's power iterations.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    state = broadcast_object(method.state_dict() if dist.get_rank() == 0 else None)
    if dist.get_rank() != 0:
        method.load_state_dict(state)


class GlobalBatchMean:
    """Turns a rank's batch means into the global batch's (for WAR's λ, Wu et al. Algorithm 1,
    whose update uses the batch's l_nat and l_rob: a per-shard update would give each rank its
    own λ). Shard means are weighted by ``loader.shard_weight`` = K·n_r/N, so the result is
    exact when the shards differ in size."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __call__(self, *means: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight = getattr(self.loader, "shard_weight", 1.0)
        stacked = torch.stack([m.detach().float().reshape(()) for m in means]) * weight
        total = all_reduce_sum(stacked) / dist.get_world_size()
        return tuple(total.unbind())


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "DistributedContext",
    "GlobalBatchMean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "convert_batch_norm",
    "current",
    "gather_objects",
    "init_from_env",
    "launched_world_size",
    "seed_rank",
    "shutdown",
    "sync_from_main",
    "unused_parameters",
    "unwrap",
    "wrap",
]
