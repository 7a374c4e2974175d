"""Per-iteration tracking: what Liu et al. 2020 plot against iterations (Figs. 1 and 8).

With ``train.track_every = N`` a run records, every N iterations (and at every iteration of the
first and the last 2,000), the stochastic gradient's norm, the distance travelled from the
starting weights ||θ − θ₀||, the batch's robust training error and loss, the method's loss,
λ, the learning rate and ε. Liu, Salzmann, Lin, Tomioka & Süsstrunk, "On the Loss Landscape of
Adversarial Training" (NeurIPS 2020), §4.1, Fig. 1: with a large ε the gradient norm stays large
late in training, and the robust training error of the batches plateaus.

Nothing here reads a value back to the host inside the training loop: each record is a small
device tensor, and :meth:`IterationTracker.flush` copies an epoch's records in one transfer at
its end. The robust error and loss are those of the training step's own forward pass on the
crafted examples (captured, not recomputed: no extra pass, the pre-step weights, batch norm as
the method ran it); λ is the value the step used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .methods.base import crafted_examples
from .numerics import total_norm

# Iterations recorded at every step at each end of a run (Liu et al. Fig. 8 zooms on them).
DENSE_ITERATIONS = 2000
# The device values of one record, in this order; ``iteration``, ``epoch``, ``lr`` and ``eps``
# are known on the host.
DEVICE_FIELDS = ("loss", "rob_loss", "rob_error", "grad_norm", "distance", "lam")


class IterationTracker:
    """Records a few numbers per tracked iteration, kept on the device until the epoch's end.

    Args:
        model: the model being trained (its parameters, not a compiled or DDP wrapper's).
        every: record every this many iterations (> 0).
        total: the run's number of iterations (epochs x batches per epoch).
        dense: also record every iteration of the first and the last ``dense``.
    """

    def __init__(
        self, model: nn.Module, every: int, total: int, dense: int = DENSE_ITERATIONS
    ) -> None:
        self.every, self.total, self.dense = int(every), int(total), int(dense)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # θ₀: the weights training starts from (saved in the last checkpoint for a resume).
        self.origin = [p.detach().clone() for p in self.params]
        self._rows: list[torch.Tensor] = []
        self._host: list[tuple[int, int, float, float]] = []
        self._logits: torch.Tensor | None = None

    def wants(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based over the run) is recorded: host arithmetic."""
        return (
            iteration < self.dense
            or iteration >= self.total - self.dense
            or iteration % self.every == 0
        )

    def watching(self, model: nn.Module, iteration: int) -> AbstractContextManager[None]:
        """Around the training step of a tracked iteration: capture the logits of the step's
        forward pass on the examples the method crafted (others: a no-op)."""
        return self._watch(model) if self.wants(iteration) else nullcontext()

    @contextmanager
    def _watch(self, model: nn.Module) -> Iterator[None]:
        self._logits = None
        with crafted_examples() as crafted:

            def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                # The first forward pass on the crafted batch itself (an attack's inner passes
                # see other tensors; AWP's later pass at perturbed weights comes second).
                if (
                    self._logits is None
                    and crafted
                    and args
                    and args[0] is crafted[-1]
                    and isinstance(output, torch.Tensor)
                ):
                    self._logits = output.detach()

            handle = model.register_forward_hook(keep)
            try:
                yield
            finally:
                handle.remove()

    def record(
        self,
        iteration: int,
        epoch: int,
        out: dict[str, torch.Tensor],
        y: torch.Tensor,
        lr: float,
        eps: float,
    ) -> None:
        """After the step of iteration ``iteration``: queue its record (device ops only)."""
        if not self.wants(iteration):
            return
        device = out["loss"].device
        nan = torch.full((), float("nan"), device=device)
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = total_norm(grads) if grads else nan
        weights = [p.detach() for p in self.params]
        distance = total_norm(torch._foreach_sub(weights, self.origin))
        if self._logits is not None:
            logits = self._logits.float()
            rob_loss = F.cross_entropy(logits, y)
            rob_error = (logits.argmax(1) != y).float().mean()
        else:  # no adversarial examples this step (clean training without term tracking)
            rob_loss = rob_error = nan
        lam = out.get("lam", nan)
        values = (out["loss"].detach(), rob_loss, rob_error, grad_norm, distance, lam)
        self._rows.append(torch.stack([v.detach().float().reshape(()).to(device) for v in values]))
        self._host.append((iteration, epoch + 1, float(lr), float(eps)))
        self._logits = None

    def flush(self) -> list[dict[str, Any]]:
        """The records queued since the last flush, as JSON-ready dicts (one device read)."""
        if not self._rows:
            return []
        values = torch.stack(self._rows).cpu().tolist()
        records = []
        for (iteration, epoch, lr, eps), row in zip(self._host, values, strict=True):
            record: dict[str, Any] = {"iteration": iteration, "epoch": epoch, "lr": lr, "eps": eps}
            # Missing (no adversarial examples) or non-finite (an fp16 step the scaler skipped)
            # values are null: the file stays strict JSON.
            record.update(
                {
                    k: (v if math.isfinite(v) else None)
                    for k, v in zip(DEVICE_FIELDS, row, strict=True)
                }
            )
            records.append(record)
        self._rows, self._host = [], []
        return records

    def state_dict(self) -> dict[str, Any]:
        """θ₀, for a resumed run to measure distances from the same start."""
        return {"origin": [t.cpu() for t in self.origin]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.origin = [
            t.to(p.device, p.dtype) for t, p in zip(state["origin"], self.params, strict=True)
        ]


def plot_iterations(
    records: list[dict[str, Any]] | Mapping[str, list[dict[str, Any]]], path: str | Path
) -> Path | None:
    """The tracked quantities against the iteration, to ``path`` (PNG): the stochastic
    gradient's norm (log scale), the batch's robust training error and the distance from θ₀,
    as Liu et al. 2020, Figs. 1 and 8.

    ``records`` are one run's (``RunDirectory.read_iterations()`` or the store's
    ``iterations(run_id)``), or ``{label: records}`` to compare runs (ε values, say) in one
    figure, one tab10 colour each.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed.
    """
    from ..diagnostics._plot import new_figure, save

    runs = dict(records) if isinstance(records, Mapping) else {"": records}
    drawn = new_figure(ncols=3, size=(13.0, 4.0))
    if drawn is None:
        return None
    figure, (grad_axis, error_axis, distance_axis) = drawn
    panels = (
        (grad_axis, "grad_norm", 1.0, "stochastic gradient norm ‖∇θ L‖ (log scale)"),
        (error_axis, "rob_error", 100.0, "robust training error of the batch (%)"),
        (distance_axis, "distance", 1.0, "distance from the start ‖θ − θ₀‖"),
    )
    for index, (label, rows) in enumerate(runs.items()):
        for axis, key, scale, _ in panels:
            kept = [r for r in rows if r.get(key) is not None]
            axis.plot(
                [r["iteration"] for r in kept],
                [scale * r[key] for r in kept],
                color=f"C{index % 10}",
                linewidth=0.8,
                label=label or None,
            )
    for axis, _, _, ylabel in panels:
        axis.set_xlabel("iteration")
        axis.set_ylabel(ylabel)
    grad_axis.set_yscale("log")
    if any(runs):
        grad_axis.legend(fontsize=8)
    figure.suptitle("Per-iteration training dynamics (train.track_every; Liu et al. 2020, Fig. 1)")
    return save(figure, path)
