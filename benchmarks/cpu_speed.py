"""Issue 14's "CPU speed without tuning" cases, registered in ``run.py``:

* ``allocator``: ``robustlab train`` started bare (the CLI re-executes itself with glibc's tuned
  ``MALLOC_*`` settings) ÷ started with the Makefile's settings, and the opt-out for context;
* ``threads``: one training step with 1 thread ÷ with every core, on the models the default
  thread rule (:mod:`robustlab._threads`) was measured on;
* ``epoch_overhead``: where a small run's time goes, per epoch (training, evaluation, Lipschitz,
  checkpoints, store, the rest) and per run (imports, set-up, final evaluation).

Each returns the dict ``run.py`` reports (``ours``, ``reference``, ``ratio``, ``target``, ...).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from _timing import stats
from robustlab._allocator import OPT_OUT, TUNED
from robustlab._threads import available_cores

# The small run of issue 14 point 11: a digits MLP trained with TRADES for 20 epochs.
OVERHEAD_EPOCHS = 20
OVERHEAD_RUN = ["method.name=trades", f"train.epochs={OVERHEAD_EPOCHS}", "device=cpu"]
OVERHEAD_RUN += ["eval.final=false"]


def _bare_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``MALLOC_*`` or robustlab allocator variable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and not k.startswith("ROBUSTLAB_")
    }
    return {**env, **extra}


def _robustlab_train(env: dict[str, str], overrides: list[str], threads: int) -> float:
    """Wall time of one ``python -m robustlab train`` (imports and the re-exec included)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "robustlab", "train", *[a for o in overrides for a in ("--set", o)],
            "--threads", str(threads), "--quiet", "--out", f"{tmp}/run", "--store", f"{tmp}/s.db",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        info = json.loads(Path(f"{tmp}/run/run.json").read_text())
    if env.get(OPT_OUT) != "1" and not info.get("malloc"):
        raise RuntimeError("the run did not record the allocator settings it ran with")
    return wall


# A CPU-profile training job whose steps allocate activation buffers above glibc's default
# mmap threshold (128 KiB growing to 32 MiB): a LeNet on 28x28 images, batch 128, PGD-5 AT.
ALLOCATOR_RUN = [
    "data.name=synthetic", "data.options.n_train=1024", "data.options.n_test=128",
    "data.options.image_size=28", "data.options.channels=1", "data.val_size=0",
    "model.name=lenet", "train.batch_size=128", "train.epochs=2", "attack.steps=5",
    "eval.steps=5", "eval.n_train=0", "eval.lipschitz_n=0", "eval.final=false", "device=cpu",
]  # fmt: skip


def allocator_case(args: Any) -> dict[str, Any]:
    """``robustlab train`` started without ``MALLOC_*`` (the CLI re-executes itself with them)
    ÷ started with the Makefile's settings; the opt-out (glibc's defaults) for context."""
    threads = args.allocator_threads
    runs = {
        "bare": _bare_env(),
        "makefile": _bare_env(**TUNED),
        "opt_out": _bare_env(**{OPT_OUT: "1"}),
    }
    times: dict[str, list[float]] = defaultdict(list)
    order = list(runs)
    for i in range(args.allocator_repeats + 1):  # the first round warms the file cache
        for name in order if i % 2 == 0 else reversed(order):
            wall = _robustlab_train(runs[name], ALLOCATOR_RUN, threads)
            if i:
                times[name].append(wall)
    ours, reference, untuned = (stats(times[k]) for k in ("bare", "makefile", "opt_out"))
    return {
        "description": f"`robustlab train` (LeNet, 28x28, batch 128, PGD-5 AT, 2 epochs, {threads} thread) started without MALLOC_* ÷ with the Makefile's",
        "ours": ours, "reference": reference, "ratio": ours["median"] / reference["median"],
        "ratio_of_mins": ours["min"] / reference["min"], "target": 1.05,
        "extra": {"untuned_opt_out_ratio": untuned["median"] / reference["median"], "opt_out_s": untuned["median"]},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Threads


def step_time(model_name: str, width: Any, threads: int, steps: int) -> float:
    """Median seconds of one PGD-3 AT training step (batch 128) of ``model_name`` on
    CIFAR-shaped (or, for the MLP, digits-shaped) inputs with ``threads`` intra-op threads."""
    from robustlab.attacks import create_attack
    from robustlab.models import create_model
    from robustlab.training import create_method

    shape = (1, 8) if model_name == "mlp" else (3, 32)
    torch.manual_seed(0)
    model = create_model(model_name, 10, shape[0], shape[1], width=width)
    x = torch.rand(128, shape[0], shape[1], shape[1])
    y = torch.randint(0, 10, (128,))
    # PGD-3: the threads share each operation, so the ratio does not depend on the step count.
    attack = create_attack("pgd", eps=8 / 255, alpha=2 / 255, steps=3, check_inputs=False)
    method = create_method("pgd_at", attack=attack, track_terms=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            method(model, x, y)["loss"].backward()
            optimizer.step()
            if i:  # the first step warms up
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


THREAD_MODELS = (("mlp", None), ("lenet", None), ("preact_resnet18", 16))


def threads_case(args: Any) -> dict[str, Any]:
    """One thread ÷ every core, per training step, on the models the default rule is drawn
    from, with the work per step (forward FLOPs of a batch) the rule reads."""
    from robustlab._threads import forward_flops
    from robustlab.models import create_model

    cores = max(2, available_cores())
    rows = {}
    for name, width in THREAD_MODELS:
        shape = (1, 8) if name == "mlp" else (3, 32)
        model = create_model(name, 10, shape[0], shape[1], width=width)
        flops = forward_flops(model, (shape[0], shape[1], shape[1])) * 128
        one, many = [], []
        for i in range(args.threads_repeats):
            for n, sink in ((1, one), (cores, many)) if i % 2 == 0 else ((cores, many), (1, one)):
                sink.append(step_time(name, width, n, args.threads_steps))
        rows[f"{name}_{width or 'std'}"] = {
            "forward_flops_per_batch": flops,
            "one_thread_s": statistics.median(one),
            f"{cores}_threads_s": statistics.median(many),
            "ratio_1_over_all": statistics.median(one) / statistics.median(many),
        }
    first = next(iter(rows.values()))
    return {
        "description": f"PGD-3 AT step (batch 128), 1 thread ÷ {cores} threads: mlp (digits), lenet, preact_resnet18 width 16 (CIFAR shapes)",
        "ours": stats([first["one_thread_s"]]), "reference": stats([first[f"{cores}_threads_s"]]),
        "ratio": first["ratio_1_over_all"], "target": None,
        "extra": {f"{k}_ratio_1_over_all": v["ratio_1_over_all"] for k, v in rows.items()} | {"models": rows},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Per-epoch overhead

# What each part of an epoch is, as the names it is called by in ``robustlab.training.runner``.
PARTS = {
    "training": "train_one_epoch",
    "evaluation": "evaluate_epoch",
    "lipschitz": "local_lipschitz",
    "checkpoint": "save_checkpoint",
}
STORE_PARTS = ("record_epoch", "record_iterations")


@contextmanager
def _timing_parts(totals: dict[str, float]) -> Iterator[None]:
    """Wrap the runner's calls of each part (and the store's epoch writes) with timers."""
    from robustlab.store import ResultsStore
    from robustlab.training import runner

    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attribute: str, part: str) -> None:
        original = getattr(owner, attribute)

        def timed(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                totals[part] += time.perf_counter() - start

        originals.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    for part, attribute in PARTS.items():
        wrap(runner, attribute, part)
    for attribute in STORE_PARTS:
        wrap(ResultsStore, attribute, "store")
    wrap(runner.RunDirectory, "append_metrics", "metrics_file")
    try:
        yield
    finally:
        for owner, attribute, original in reversed(originals):
            setattr(owner, attribute, original)


def one_small_run(overrides: list[str], root: str) -> dict[str, float]:
    """Seconds of each part of one run of ``overrides`` (prepare, fit, the parts of its epochs)."""
    from robustlab.config import build_config
    from robustlab.rundir import RunDirectory, new_run_id
    from robustlab.store import ResultsStore
    from robustlab.training.runner import fit, prepare

    totals: dict[str, float] = defaultdict(float)
    config = build_config(None, overrides)
    start = time.perf_counter()
    experiment = prepare(config)
    totals["set_up"] = time.perf_counter() - start
    run_id = new_run_id(config)
    store = ResultsStore(Path(root) / "s.db")
    run = RunDirectory.create(Path(root) / run_id, config, run_id, store=store.path)
    with _timing_parts(totals):
        start = time.perf_counter()
        fit(experiment, run, run_id, store, show_progress=False)
        totals["fit"] = time.perf_counter() - start
    return dict(totals)


def import_seconds(repeats: int) -> float:
    """Median wall time of ``python -m robustlab --help`` (interpreter, imports, parser)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "robustlab", "--help"],
            check=True,
            capture_output=True,
            env={**os.environ, **TUNED},
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def store_writes_per_epoch(repeats: int) -> dict[str, float]:
    """Seconds of one epoch's store writes with its iteration records (``train.track_every``):
    two transactions (the epoch row, then the records: what runs did before issue 14) ÷ one
    (``record_epoch(..., iterations)``), interleaved on the same store."""
    from robustlab.config import RunConfig
    from robustlab.store import ResultsStore

    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(Path(tmp) / "s.db")
        store.upsert_run("r", tmp, RunConfig().to_dict())
        metrics = {f"m{i}": 0.5 for i in range(24)}
        records = [{"iteration": i, "loss": 0.1} for i in range(10)]
        two, one = [], []
        for epoch in range(1, 2 * repeats + 1):
            start = time.perf_counter()
            if epoch % 2:
                store.record_epoch("r", epoch, metrics)
                store.record_iterations("r", records)
                two.append(time.perf_counter() - start)
            else:
                store.record_epoch("r", epoch, metrics, records)
                one.append(time.perf_counter() - start)
    return {"two_transactions_s": statistics.median(two), "one_s": statistics.median(one)}


def epoch_overhead_case(args: Any) -> dict[str, Any]:
    """Per epoch of the digits MLP TRADES run: training vs everything else (evaluation,
    Lipschitz, checkpoints, store, metrics file, the rest), and per run: imports and set-up."""
    epochs = OVERHEAD_EPOCHS
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # what the default thread rule gives a model this small
    runs = []
    try:
        for _ in range(args.overhead_repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(one_small_run(OVERHEAD_RUN, tmp))
    finally:
        torch.set_num_threads(previous)
    parts = ("training", "evaluation", "lipschitz", "checkpoint", "store", "metrics_file")
    per_epoch = {p: statistics.median(r.get(p, 0.0) for r in runs) / epochs for p in parts}
    fit_s = statistics.median(r["fit"] for r in runs)
    per_epoch["rest"] = fit_s / epochs - sum(per_epoch.values())
    other = fit_s / epochs - per_epoch["training"]
    not_evaluation = per_epoch["checkpoint"] + per_epoch["store"] + per_epoch["metrics_file"]
    not_evaluation += per_epoch["rest"]
    set_up = statistics.median(r["set_up"] for r in runs)
    imports = import_seconds(args.overhead_repeats)
    writes = store_writes_per_epoch(20 * args.overhead_repeats)
    extra: dict[str, Any] = {f"{p}_ms_per_epoch": 1000 * s for p, s in per_epoch.items()}
    extra["store_one_over_two_transactions"] = writes["one_s"] / writes["two_transactions_s"]
    extra |= {
        "other_ms_per_epoch": 1000 * other,
        "not_evaluation_ms_per_epoch": 1000 * not_evaluation,
        "set_up_s": set_up,
        "imports_help_s": imports,
    }
    return {
        "description": f"digits MLP, TRADES, {epochs} epochs, 1 thread: per epoch, everything but training ÷ training",
        "ours": stats([other]), "reference": stats([per_epoch["training"]]),
        "ratio": other / per_epoch["training"], "target": None, "extra": extra,
    }  # fmt: skip


CASE_FUNCTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "allocator": allocator_case,
    "threads": threads_case,
    "epoch_overhead": epoch_overhead_case,
}
