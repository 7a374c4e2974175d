"""How many CPU threads a run's torch uses: ``threads`` (config key) and ``--threads``.

torch starts one intra-op thread per core. On a machine busy with other processes a thread
that waits for a core stalls every operation of the step (a digits MLP step went from ~5 ms to
~0.8 s with three such processes on 2 cores), and on a small model the second thread gains
little even on a quiet machine. So ``threads = 0`` (auto) decides by the work of one training
batch and by the load when the run starts (:func:`auto_threads`):

* below :data:`FLOPS_PER_THREAD` forward FLOPs per batch: one thread;
* above: every core that is free (the cores of this process's affinity, or a sweep worker's
  share, less those other processes keep busy when the run starts, at least one).

Measured with ``make bench``'s ``threads`` case and the same step at other sizes (PGD-3 AT
step, batch 128, 1 thread ÷ 2 threads on the 2-core development machine; below 1: one thread
is faster):

=============================  ===============  ===============  ====================
model (input)                  forward FLOPs    quiet machine    busy (load 4 to 10)
                               of a batch       (load < 1)       from other work
=============================  ===============  ===============  ====================
MLP 256 (digits 1x8x8)         22 M             0.93 - 1.39      0.13 - 0.26
MLP 512 (digits)               77 M             1.34
MLP 1024 (CIFAR 3x32x32)       1.1 G            1.51
LeNet (MNIST 1x28x28)          1.8 G            1.84
LeNet (CIFAR)                  2.5 G            1.66 - 1.70      0.39 - 0.49
PreActResNet-18 width 16       9.0 G            1.80 - 1.83      0.39 - 0.41
=============================  ===============  ===============  ====================

On a quiet machine two threads win from ~10 M FLOPs up, but by a few milliseconds a step below
~1 G; on a busy one a single thread wins at every size, by 2-8x. The threshold keeps the
models whose second thread saves milliseconds on one thread, where contention cannot hurt them,
and the load check keeps larger models from fighting other processes for cores.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

# Forward FLOPs of one training batch from which a run uses every free core (auto); below it,
# one thread (the table above: the second thread saves a few ms a step there, quiet or not).
FLOPS_PER_THREAD = 1e9


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and Slurm set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def forward_flops(model: Any, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-adds) of the linear and convolution layers of ``model``'s forward
    pass on one example of ``input_shape`` (C, H, W): the layers that hold nearly all of a
    network's arithmetic, counted by hooks during one real forward pass of a zero image in eval
    mode (no gradient, no random draw, the weights untouched; a few ms for the small models the
    rule is about). Neither the meta device nor torch's ``FlopCounterMode``: their first use
    imports torch's compiler stack, seconds of a small run's set-up."""
    import torch
    from torch import nn

    total = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    hooks = [m.register_forward_hook(count) for m in layers]
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()  # batch norm must not update its running statistics
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
        return total
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def other_load(samples: int = 5, interval_s: float = 0.002) -> float:
    """How many cores other work keeps busy now: the runnable tasks (threads) of the machine,
    less this one, from ``/proc/loadavg`` (the median of a few samples ms apart: a sampled
    count, not the 1-minute average, in which a sweep's previous run would still show); the
    1-minute load average where there is no ``/proc``."""
    counts = []
    for i in range(samples):
        try:
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            try:
                return os.getloadavg()[0]
            except (AttributeError, OSError):  # not Unix
                return 0.0
        counts.append(max(0, int(running) - 1))
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def auto_threads(
    flops_per_batch: float, cores: int, load: float = 0.0, machine: int | None = None
) -> int:
    """The default thread count for a training batch of ``flops_per_batch`` forward FLOPs on
    ``cores`` cores (a sweep worker's share of the ``machine``'s; default: all of them) while
    other work keeps ``load`` of the machine's cores busy (see the module docstring). The load
    counts the machine, a sweep's other workers included, so it is taken from the machine's
    cores, not from the share."""
    if flops_per_batch < FLOPS_PER_THREAD:
        return 1
    return max(1, min(cores, (machine or cores) - int(load)))


def resolve_threads(
    requested: int,
    model: Any,
    input_shape: tuple[int, ...],
    batch_size: int,
    device_type: str,
    cores: int | None = None,
    load: float | None = None,
) -> int:
    """The thread count a run uses: ``requested`` if > 0, else :func:`auto_threads` within
    ``cores`` (a sweep worker's share; default: the cores this process may use) and the
    ``load`` of other work (default: :func:`other_load`, sampled now). A GPU run gets ``cores``
    threads (its CPU work is launching kernels; the rule is for CPU steps)."""
    if requested > 0:
        return requested
    cores = max(1, cores or available_cores())
    if device_type != "cpu" or cores == 1:
        return cores
    flops = forward_flops(model, input_shape) * batch_size
    if flops < FLOPS_PER_THREAD:
        return 1  # without sampling the load: a small run's set-up stays a few ms
    machine = max(cores, available_cores())
    return auto_threads(flops, cores, other_load() if load is None else load, machine)


def set_threads(threads: int) -> int:
    """Make torch use ``threads`` intra-op threads (and as many inter-op threads, which can be
    set only before the first parallel operation: later it keeps its pool); returns the count
    torch reports, as a run records it."""
    import torch

    threads = max(1, threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    # Refused once the inter-op pool has started (a second run in a process): it keeps its size.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    return torch.get_num_threads()
