"""robustlab's speed, measured side by side against peers and ideals: ``make bench``.

Every case times robustlab and its reference in the same process, interleaved (ours, theirs,
theirs, ours, ...) after a warm-up, and reports the median, min and max of each and the ratio
of the medians. Absolute times on a shared machine are noise; ratios measured this way are not.
Results go to ``benchmarks/results/latest.json`` and ``latest.md``.

    python benchmarks/run.py                 # the CPU profile (about 6 minutes on 2 cores)
    python benchmarks/run.py --case pgd_at   # one case
    python benchmarks/run.py --gpu           # CIFAR-size models on a GPU (WRN-34-10 AT epoch)
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import cpu_speed
import references
from _timing import stats
from robustlab.attacks import create_attack
from robustlab.data import DeviceLoader, create_dataset
from robustlab.evaluation import evaluate_robustness
from robustlab.models import create_model
from robustlab.registry import Registry
from robustlab.training import create_method
from robustlab.training.loop import StepControls, train_step
from robustlab.training.schedules import ScheduleClock

RESULTS = Path(__file__).resolve().parent / "results"
CASES: Registry[Callable[[argparse.Namespace], dict[str, Any]]] = Registry(
    "benchmark case", "--case"
)
EPS, ALPHA = 8 / 255, 2 / 255


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def compare(
    ours: Callable[[], Any],
    reference: Callable[[], Any],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
) -> dict[str, Any]:
    """Time both, interleaved and alternating which goes first, after ``warmup`` runs of each."""
    for _ in range(warmup):
        ours()
        reference()
    ours_times, reference_times = [], []
    for i in range(repeats):
        pair = [(ours, ours_times), (reference, reference_times)]
        for fn, sink in pair if i % 2 == 0 else reversed(pair):
            sink.append(timed(fn, device))
    ours_stats, reference_stats = stats(ours_times), stats(reference_times)
    return {
        "ours": ours_stats,
        "reference": reference_stats,
        "ratio": ours_stats["median"] / reference_stats["median"],
        # The fastest runs are the least disturbed by other load: a second view of the same ratio.
        "ratio_of_mins": ours_stats["min"] / reference_stats["min"],
    }


# ---------------------------------------------------------------------------------------------
# Shared setup


def cifar_batch(
    batch: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=generator).to(device), torch.randint(
        0, 10, (batch,), generator=generator
    ).to(device)


def preact(width: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("preact_resnet18", 10, 3, 32, width=width).to(device)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def controls_for(attack: Any) -> StepControls:
    """Constant LR and ε: the step as the training loop runs it, without schedule changes."""
    return StepControls(
        clock=ScheduleClock(1),
        lr_schedule=lambda t: 1.0,
        base_lr=0.01,
        eps_schedule=lambda t: attack.eps,
        attack=attack,
        eps_target=attack.eps,
        alpha_target=getattr(attack, "alpha", None),
    )


def robustlab_step(
    model: torch.nn.Module, method_name: str, x: torch.Tensor, y: torch.Tensor, **method_kwargs: Any
) -> Callable[[], Any]:
    attack_name = {"trades": "trades-kl"}.get(method_name, "pgd")
    attack = create_attack(attack_name, eps=EPS, alpha=ALPHA, steps=10, check_inputs=False)
    method = create_method(method_name, attack=attack, **method_kwargs)
    optimizer, controls = sgd(model), controls_for(attack)
    device = x.device
    return lambda: train_step(model, method, optimizer, controls, x, y, device)


# ---------------------------------------------------------------------------------------------
# Cases


@CASES.register("pgd_at")
def pgd_at_case(args: argparse.Namespace) -> dict[str, Any]:
    """PGD-10 AT step vs robust_overfitting's loop; and vs a clean step."""
    device, width, batch = args.device, args.width, args.batch
    x, y = cifar_batch(batch, device)
    ours_model, ref_model = preact(width, device), preact(width, device)
    ours = robustlab_step(ours_model, "pgd_at", x, y, track_terms=False)
    ref_optimizer = sgd(ref_model)
    result = compare(
        ours,
        lambda: references.pgd_at_step(ref_model, ref_optimizer, x, y, EPS, ALPHA, 10),
        args.repeats,
        device,
    )
    tracked = compare(
        robustlab_step(preact(width, device), "pgd_at", x, y),
        ours,
        max(2, args.repeats // 2),
        device,
    )
    clean = compare(
        ours,
        robustlab_step(preact(width, device), "clean", x, y, track_terms=False),
        args.repeats,
        device,
    )
    return {
        "description": f"PGD-10 AT step, PreActResNet-18 width {width}, batch {batch}x3x32x32: robustlab ÷ robust_overfitting's loop",
        **result, "target": 1.02,
        "extra": {
            "default_track_terms_over_pure_step": tracked["ratio"],
            "pgd10_step_over_clean_step": clean["ratio"],
            "clean_step_s": clean["reference"]["median"],
        },
    }  # fmt: skip


@CASES.register("trades")
def trades_case(args: argparse.Namespace) -> dict[str, Any]:
    """TRADES step vs the reference trades_loss; same loss and gradients at the same x_adv."""
    device, width, batch = args.device, args.width, args.batch
    x, y = cifar_batch(batch, device)
    # Correctness first: the same start (seeded noise) gives the same loss and gradients.
    base = preact(width, device)
    check = {}
    for name, model in (("ours", copy.deepcopy(base)), ("reference", copy.deepcopy(base))):
        torch.manual_seed(7)
        if name == "ours":
            attack = create_attack("trades-kl", eps=EPS, alpha=0.007, steps=10, check_inputs=False)
            model.train()
            loss = create_method("trades", attack=attack, lam=6.0)(model, x, y)["loss"]
        else:
            loss = references.trades_loss(model, x, y, 0.007, EPS, 10, 6.0)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        check[name] = (float(loss.detach()), grads)
    pairs = list(zip(check["ours"][1], check["reference"][1], strict=True))
    max_grad_diff = max(float((a - b).abs().max()) for a, b in pairs)
    relative_grad_diff = max(float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in pairs)
    ours_model, ref_model = preact(width, device), preact(width, device)
    ours = robustlab_step(ours_model, "trades", x, y, lam=6.0)
    ref_optimizer = sgd(ref_model)

    def reference() -> None:
        loss = references.trades_loss(ref_model, x, y, ALPHA, EPS, 10, 6.0)
        ref_optimizer.zero_grad()
        loss.backward()
        ref_optimizer.step()

    result = compare(ours, reference, args.repeats, device)
    return {
        "description": f"TRADES step (β = 6, 10 KL steps), PreActResNet-18 width {width}, batch {batch}: robustlab ÷ reference trades_loss",
        **result, "target": 0.8,
        "extra": {"loss_ours": check["ours"][0], "loss_reference": check["reference"][0], "max_abs_grad_diff": max_grad_diff, "max_relative_grad_diff": relative_grad_diff},
    }  # fmt: skip


def briefly_trained_preact(
    width: int, device: torch.device
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """PreActResNet-18 trained for a few hundred steps (clean, then PGD-3 AT) on structured
    synthetic CIFAR-shaped data, so that attacks face a model with non-trivial robustness."""
    data = create_dataset(
        "synthetic", n_train=2048, n_test=256, channels=3, image_size=32, noise=0.8, seed=1
    ).to(device)
    model = preact(width, device)
    loader = DeviceLoader(data.train_x, data.train_y, 128, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    attack = create_attack("pgd", eps=EPS, alpha=ALPHA, steps=3, check_inputs=False)
    for epoch, method_name in enumerate(("clean", "clean", "pgd_at")):
        method = create_method(method_name, attack=attack, track_terms=False)
        for xb, yb in loader.epoch(epoch):
            train_step(model, method, optimizer, controls_for(attack), xb, yb, device)
    model.eval()
    return model, data.test_x[:128].float() / 255, data.test_y[:128]


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@CASES.register("attacks")
def attacks_case(args: argparse.Namespace) -> dict[str, Any]:
    """PGD-20 and APGD-CE (100 iterations) vs torchattacks on the same model and batch."""
    import torchattacks

    device = args.device
    model, x, y = briefly_trained_preact(args.attack_width, device)
    rows = {}
    pairs = {
        "pgd20": (
            create_attack("pgd", eps=EPS, alpha=ALPHA, steps=20),
            torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=20),
        ),
        "apgd_ce100": (
            create_attack("apgd-ce", eps=EPS, steps=100),
            torchattacks.APGD(model, eps=EPS, steps=100, loss="ce"),
        ),
    }
    for name, (ours, theirs) in pairs.items():
        adv = {}

        def run_ours(ours: Any = ours, adv: dict = adv) -> None:
            adv["ours"] = ours(model, x, y)

        def run_theirs(theirs: Any = theirs, adv: dict = adv) -> None:
            adv["theirs"] = theirs(x, y)

        timing = compare(run_ours, run_theirs, args.attack_repeats, device)
        rows[name] = {
            **timing,
            "robust_acc_ours": robust_accuracy(model, adv["ours"], y),
            "robust_acc_theirs": robust_accuracy(model, adv["theirs"], y),
        }
    return {
        "description": f"attacks per batch of {len(y)}, PreActResNet-18 width {args.attack_width} briefly PGD-trained: robustlab ÷ torchattacks",
        "ours": rows["pgd20"]["ours"], "reference": rows["pgd20"]["reference"], "ratio": rows["pgd20"]["ratio"], "target": 1.0,
        "extra": {
            "natural_acc": robust_accuracy(model, x, y),
            "pgd20": {k: v for k, v in rows["pgd20"].items() if k.startswith("robust")},
            "apgd_ce100_ratio": rows["apgd_ce100"]["ratio"],
            "apgd_ce100": {k: v for k, v in rows["apgd_ce100"].items() if k != "ratio"},
        },
    }  # fmt: skip


def robust_digits_mlp(device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP PGD-trained on digits at eps 0.1 for 6 epochs (the test suite's reference model)."""
    torch.manual_seed(0)
    data = create_dataset("digits").to(device)
    model = create_model("mlp", 10, 1, 8, width=64, depth=1, mean=data.mean, std=data.std).to(
        device
    )
    attack = create_attack("pgd", eps=0.1, alpha=0.025, steps=5, check_inputs=False)
    method, optimizer = (
        create_method("pgd_at", attack=attack, track_terms=False),
        torch.optim.Adam(model.parameters(), lr=3e-3),
    )
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=64, shuffle=True)
    for epoch in range(6):
        for xb, yb in loader.epoch(epoch):
            train_step(model, method, optimizer, controls_for(attack), xb, yb, device)
    return model.eval(), data.test_x.float() / 255, data.test_y


class CountingAttacks:
    """Wraps attacks to count the points each is asked to attack (the work the cascade saves)."""

    def __init__(self, attacks: dict[str, Any]) -> None:
        self.points = dict.fromkeys(attacks, 0)
        self.attacks = {name: self._wrap(name, attack) for name, attack in attacks.items()}

    def _wrap(self, name: str, attack: Any) -> Any:
        original = attack.perturb

        def perturb(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.points[name] += len(x)
            return original(model, x, y)

        attack.perturb = perturb
        return attack


@CASES.register("autoattack")
def autoattack_case(args: argparse.Namespace) -> dict[str, Any]:
    """AutoAttack standard: our cascade vs our four attacks on all points, and vs torchattacks."""
    import torchattacks

    device = args.device
    model, x, y = robust_digits_mlp(device)
    x, y = x[: args.aa_points], y[: args.aa_points]
    eps = 0.1
    outcome: dict[str, Any] = {}

    def cascade() -> None:
        counted = CountingAttacks(create_attack("autoattack", eps=eps).components)
        result = evaluate_robustness(model, x, y, counted.attacks, stability_labels="true")
        outcome["cascade"], outcome["cascade_points"] = result, counted.points

    def all_points() -> None:
        robust = torch.ones(len(y), dtype=torch.bool)
        for member in create_attack("autoattack", eps=eps).components.values():
            x_adv = member(model, x, y)
            with torch.no_grad():
                robust &= (model(x_adv).argmax(1) == y).cpu()
        outcome["all_points"] = float(robust.float().mean())

    torch.manual_seed(0)
    timing = compare(cascade, all_points, args.aa_repeats, device, warmup=0)
    theirs = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0
    )
    for attack in theirs._autoattack.attacks:
        if hasattr(attack, "steps"):
            attack.steps = 100  # their port defaults to 10 iterations (issue #196)
    start = time.perf_counter()
    x_theirs = theirs(x, y)
    theirs_s = time.perf_counter() - start
    cascade_s = timing["ours"]["median"]
    return {
        "description": f"AutoAttack standard on {len(y)} digits points (MLP, eps 0.1): our cascade ÷ our four attacks on all points",
        **timing, "target": 1.0,
        "extra": {
            "cascade_over_torchattacks": cascade_s / theirs_s, "torchattacks_s": theirs_s,
            "robust_acc_cascade": outcome["cascade"].robust_accuracy, "robust_acc_all_points": outcome["all_points"],
            "robust_acc_torchattacks": robust_accuracy(model, x_theirs, y), "per_attack": outcome["cascade"].per_attack,
            "points_attacked_cascade": sum(outcome["cascade_points"].values()), "points_attacked_all": 4 * len(y),
        },
    }  # fmt: skip


@CASES.register("data")
def data_case(args: argparse.Namespace) -> dict[str, Any]:
    """On-device batching + batched crop/flip vs DataLoader with per-sample transforms."""
    from torch.utils.data import DataLoader

    device = args.device
    n = args.data_images
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    ours_loader = DeviceLoader(
        images.to(device), labels.to(device), 128, shuffle=True, augment="crop_flip"
    )
    epoch = {"n": 0}

    def ours() -> None:
        for xb, _ in ours_loader.epoch(epoch["n"]):
            xb.sum()  # consume the batch as training would
        epoch["n"] += 1

    def loader(workers: int) -> Callable[[], None]:
        dl = DataLoader(
            references.TransformedImages(images, labels),
            batch_size=128,
            shuffle=True,
            num_workers=workers,
        )

        def run() -> None:
            for xb, _ in dl:
                xb.to(device).sum()

        return run

    result = compare(ours, loader(0), args.repeats, device)
    workers = compare(ours, loader(2), max(2, args.repeats // 2), device)
    rate = lambda seconds: n / seconds  # noqa: E731
    return {
        "description": f"one epoch of {n} 3x32x32 images with crop+flip: robustlab images/s ÷ DataLoader images/s (ratio < 1: faster)",
        **result, "target": 0.2,
        "extra": {
            "speedup_vs_dataloader_0_workers": 1 / result["ratio"], "speedup_vs_dataloader_2_workers": 1 / workers["ratio"],
            "images_per_s_ours": rate(result["ours"]["median"]), "images_per_s_dataloader": rate(result["reference"]["median"]),
        },
    }  # fmt: skip


@CASES.register("demo")
def demo_case(args: argparse.Namespace) -> dict[str, Any]:
    """The whole job: `robustlab demo`, wall time and peak memory (no reference: absolute)."""
    # The job reports its own peak RSS (RUSAGE_CHILDREN would also count earlier cases' workers).
    job = (
        "import resource, sys; from robustlab.cli.main import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); raise SystemExit(code)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", job, "demo", "--quiet", "--out", tmp, "--store", str(Path(tmp) / "s.db")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {
        "description": "make demo's job (train clean + PGD-AT on digits, PGD-50x3 evaluation): wall time and peak RSS",
        "ours": stats([wall]),
        "reference": None,
        "ratio": None,
        "target": None,
        "extra": {"wall_s": wall, "peak_rss_mb": peak_kb / 1024},
    }


# The sweep case: small PGD-AT runs of a digits MLP (a few seconds of training each).
SWEEP_SPEC = {
    "name": "bench",
    "base": {
        "data.name": "digits",
        "model.name": "mlp",
        "model.width": 128,
        "train.epochs": 2,
        "eval.lipschitz_n": 0,
        "eval.n_train": 200,
        "device": "cpu",
    },
    "axes": {"method.lam": [1.0, 2.0]},
    "seeds": [0, 1],
}


def _timed_sweep(workers: int, threads: int | None = None) -> float:
    """Wall time of the whole sweep (job start-up included) with ``workers`` local workers."""
    from robustlab.store import ResultsStore
    from robustlab.sweep.execute import run_sweep
    from robustlab.sweep.spec import parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        store = ResultsStore(Path(tmp) / "s.db")
        start = time.perf_counter()
        outcome = run_sweep(
            parse_spec(SWEEP_SPEC), out=tmp, store=store, workers=workers, threads=threads,
            log=lambda message: None, poll_s=0.1,
        )  # fmt: skip
        wall = time.perf_counter() - start
    if outcome.counts["done"] != len(outcome.runs):
        raise RuntimeError(f"bench sweep incomplete: {outcome.counts}")
    return wall


@CASES.register("sweep_local")
def sweep_local_case(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 12's speed target: a sweep of small runs on two local workers (each given half the
    cores) against the same sweep run one after another (one worker with all the cores)."""
    from robustlab.sweep.executors.local import available_cores, threads_per_worker

    parallel = lambda: _timed_sweep(2)  # noqa: E731
    sequential = lambda: _timed_sweep(1)  # noqa: E731
    result = compare(parallel, sequential, repeats=2, device=torch.device("cpu"), warmup=0)
    cores = available_cores()
    # Both workers with all the cores each (no division): what the division saves; and one
    # after another on one thread each (a baseline that no other load can slow by contention).
    oversubscribed = _timed_sweep(2, threads=cores)
    sequential_one_thread = _timed_sweep(1, threads=1)
    return {
        "description": f"sweep of {len(SWEEP_SPEC['axes']['method.lam']) * len(SWEEP_SPEC['seeds'])} small PGD-AT runs: 2 local workers vs one after another",
        **result,
        "target": 0.6,
        "extra": {
            # other load on the machine skews this ratio (two workers then get a larger share)
            "load_average_1min": os.getloadavg()[0],
            "cores": cores,
            "threads_per_worker": threads_per_worker(2, cores),
            "oversubscribed_s": oversubscribed,
            "oversubscribed_ratio": oversubscribed / result["reference"]["median"],
            "sequential_1_thread_s": sequential_one_thread,
            "ratio_to_sequential_1_thread": result["ours"]["median"] / sequential_one_thread,
        },
    }


def wrn_model(depth: int, width: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("wrn", 10, 3, 32, width=width, depth=depth).to(device).eval()


@CASES.register("spectra")
def spectra_case(args: argparse.Namespace) -> dict[str, Any]:
    """Exact singular values of every layer of WRN-34-10 (32x32 input): seconds; and, on each
    distinct stride-1 k x k convolution, our batched decomposition ÷ a per-frequency loop."""
    from robustlab.diagnostics import conv_singular_values, layer_input_sizes, spectra

    device = args.device
    depth, width = args.spectra_depth, args.spectra_width
    model = wrn_model(depth, width, device)
    x = torch.rand(1, 3, 32, 32, device=device)
    full: dict[str, Any] = {}

    def whole_model() -> None:
        full["result"] = spectra(model, x)

    seconds = timed(whole_model, device)
    # One layer of each distinct (kernel shape, input size): WRN repeats each 3x3 layer of a
    # group nine times. Strided and 1x1 layers have no per-frequency-loop peer (the loop is
    # Sedghi et al.'s stride-1 construction), so they are left out of the ratio.
    sizes = layer_input_sizes(model, x)
    distinct: dict[tuple, tuple[torch.Tensor, int]] = {}
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.Conv2d)
            and module.stride == (1, 1)
            and module.kernel_size != (1, 1)
        ):
            size = sizes[name][0]
            distinct.setdefault((tuple(module.weight.shape), size), (module.weight.detach(), size))
    layers = list(distinct.values())
    values: dict[str, list[torch.Tensor]] = {}

    def ours() -> None:
        values["ours"] = [conv_singular_values(k, n) for k, n in layers]

    def loop() -> None:
        values["loop"] = [references.conv_singular_values_loop(k, n) for k, n in layers]

    result = compare(ours, loop, args.spectra_repeats, device, warmup=0)
    pairs = zip(values["ours"], values["loop"], strict=True)
    max_diff = max(float((a - b).abs().max()) for a, b in pairs)
    summary = full["result"].summary()
    return {
        "description": f"exact spectra of WRN-{depth}-{width}'s {summary['n_layers']} layers (32x32): seconds; ratio on its {len(layers)} distinct stride-1 convs, batched ÷ a per-frequency svdvals loop",
        **result, "target": 1.0,
        "extra": {
            "whole_model_s": seconds, "layers": summary["n_layers"], "distinct_convs": [[*shape, n] for shape, n in distinct],
            "max_abs_diff_vs_loop": max_diff, "log_spectral_complexity": summary["log_spectral_complexity"],
        },
    }  # fmt: skip


@CASES.register("diagnose_gaps")
def diagnose_gaps_case(args: argparse.Namespace) -> dict[str, Any]:
    """`robustlab diagnose RUN --what gaps` (the whole command) ÷ evaluate_robustness on the same
    points with the same attack: the losses come from the logits the evaluation computes anyway."""
    from robustlab.cli._target import load_dataset
    from robustlab.cli.main import main as cli
    from robustlab.config import build_config
    from robustlab.training.runner import load_trained_model

    n = args.gaps_points  # per split: gaps attacks n training and n test points
    overrides = [
        "data.name=synthetic", f"data.options.n_train={n}", f"data.options.n_test={n}",
        "data.val_size=0", "model.name=lenet", "model.width=4", "method.name=clean",
        "train.epochs=1", "eval.n=64", "eval.n_train=0", "eval.steps=20", "attack.eps=8/255",
        f"device={args.device.type}",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run, store = Path(tmp) / "run", Path(tmp) / "store.db"
        sets = [part for o in overrides for part in ("--set", o)]
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(["train", *sets, "--out", str(run), "--store", str(store), "--quiet"]) == 0
        from robustlab.rundir import RunDirectory

        model, _ = load_trained_model(RunDirectory.open(run), "last", args.device)
        config = build_config(run / "config.toml")
        data = load_dataset(config)
        x = torch.cat([data.train_x, data.test_x]).to(args.device)
        y = torch.cat([data.train_y, data.test_y]).to(args.device)
        ev = config.eval
        attack = create_attack(
            "pgd", eps=ev.eps, steps=ev.steps, alpha=ev.alpha, restarts=ev.restarts
        )
        argv = ["diagnose", str(run), "--what", "gaps", "--device", args.device.type, "--json"]
        outcome: dict[str, Any] = {}

        def ours() -> None:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert cli(argv) == 0
            outcome["gaps"] = json.loads(out.getvalue())["gaps"]

        def reference() -> None:
            outcome["eval"] = evaluate_robustness(model, x, y, attack, batch_size=ev.batch_size)

        result = compare(ours, reference, args.gaps_repeats, args.device, args.gaps_warmup)
    gaps = outcome["gaps"]
    return {
        "description": f"diagnose --what gaps on {n} train + {n} test points (synthetic 3x8x8, LeNet width 4, PGD-{ev.steps}), whole command (data, model, figure, store) ÷ one evaluate_robustness pass over the same {2 * n} points",
        **result, "target": 1.1,
        "extra": {
            "points_attacked": 2 * n, "fixed_overhead_s": result["ours"]["median"] - result["reference"]["median"],
            "robust_acc_evaluate_robustness": outcome["eval"].robust_accuracy,
            "robust_acc_gaps": 1 - (gaps["train_rob_error"] + gaps["test_rob_error"]) / 2,
        },
    }  # fmt: skip


@CASES.register("hessian")
def hessian_case(args: argparse.Namespace) -> dict[str, Any]:
    """Top-1 and top-5 Hessian eigenvalues by power iteration with deflation: robustlab's
    ``hessian(solver="power")`` ÷ PyHessian's loop, same model, batch, tolerance and products."""
    from robustlab.diagnostics import hessian

    device, iters = args.device, args.hessian_iters
    x, y = cifar_batch(args.hessian_batch, device, seed=3)
    model = preact(args.hessian_width, device).eval()
    # tol = 0: no early stop, so both compute exactly top_n x iters Hessian-vector products.
    rows, outcome = {}, {}
    for top in (1, 5):

        def ours(top: int = top) -> None:
            outcome[f"ours{top}"] = hessian(
                model, x, y, k=top, solver="power", tol=0.0, max_iter=iters, batch_size=len(y)
            )

        def reference(top: int = top) -> None:
            outcome[f"ref{top}"] = references.pyhessian_top_eigenvalues(
                model, x, y, top, iters, 0.0
            )

        rows[top] = compare(ours, reference, args.hessian_repeats, device)
    ours5 = outcome["ours5"]
    # For scale: the products Lanczos needs for the top 5 at PyHessian's default tolerance.
    lanczos = hessian(model, x, y, k=5, solver="lanczos", max_iter=60, batch_size=len(y))
    return {
        "description": f"top-1 Hessian eigenvalue, {iters} power iterations, PreActResNet-18 width {args.hessian_width}, batch {len(y)}: robustlab ÷ PyHessian's loop",
        **rows[1], "target": 1.0,
        "extra": {
            "top5_ratio": rows[5]["ratio"], "top5_ratio_of_mins": rows[5]["ratio_of_mins"], "top5_target": 1.0,
            "hvps_each": ours5.hvps, "top1_ours": outcome["ours1"].eigenvalues[0], "top1_pyhessian": outcome["ref1"][0][0],
            "lanczos_top5_tol1e-3_hvps": lanczos.hvps, "lanczos_top5_converged": lanczos.converged,
        },
    }  # fmt: skip


@CASES.register("tracking")
def tracking_case(args: argparse.Namespace) -> dict[str, Any]:
    """A PGD-10 AT epoch of 10 steps with ``train.track_every = 10`` (one step recorded, then one
    flush) ÷ the same epoch untracked; and with every step recorded (the first and last 2,000)."""
    from robustlab.training.loop import train_one_epoch
    from robustlab.training.tracking import IterationTracker

    device, width, batch, steps = args.device, args.track_width, args.track_batch, 10
    x, y = cifar_batch(batch * steps, device, seed=5)
    images = (x * 255).to(torch.uint8)
    loader = DeviceLoader(images, y, batch, shuffle=True)
    attack = create_attack("pgd", eps=EPS, alpha=ALPHA, steps=10, check_inputs=False)

    def epoch_runner(tracker_every: int | None, dense: int = 0) -> Callable[[], Any]:
        model = preact(width, device)
        method = create_method("pgd_at", attack=attack, track_terms=False)
        optimizer, controls = sgd(model), controls_for(attack)
        # total far beyond this epoch: only the sparse rule applies unless ``dense`` says so.
        tracker = (
            IterationTracker(model, tracker_every, total=10**9, dense=dense)
            if tracker_every
            else None
        )

        def run() -> None:
            train_one_epoch(model, method, loader, optimizer, controls, 0, tracker=tracker)
            if tracker is not None:
                tracker.flush()

        return run

    result = compare(epoch_runner(10), epoch_runner(None), args.track_repeats, device)
    dense = compare(epoch_runner(10, dense=10**9), epoch_runner(None), 2, device)
    # The tracker's own work per recorded step, timed alone (a ratio of two epochs on a loaded
    # machine moves by a few percent either way): the hook, the norms, the record.
    model = preact(width, device)
    method = create_method("pgd_at", attack=attack, track_terms=False)
    tracker = IterationTracker(model, 1, total=10**9, dense=10**9)
    xb, yb = x[:batch], y[:batch]
    with tracker.watching(model, 0):
        out = train_step(model, method, sgd(model), controls_for(attack), xb, yb, device)
    record_s = timed(lambda: [tracker.record(0, 0, out, yb, 0.1, EPS) for _ in range(20)], device)
    tracker.flush()
    step_s = result["reference"]["median"] / steps
    return {
        "description": f"PGD-10 AT epoch of {steps} steps, PreActResNet-18 width {width}, batch {batch}: track_every=10 ÷ untracked",
        **result, "target": 1.05,
        "extra": {
            "every_step_recorded_ratio": dense["ratio"], "step_s": step_s,
            "record_s": record_s / 20, "record_share_of_a_step": record_s / 20 / step_s,
        },
    }  # fmt: skip


@CASES.register("gpu_wrn")
def gpu_wrn_case(args: argparse.Namespace) -> dict[str, Any]:
    """GPU profile: a PGD-10 AT epoch of WRN-34-10 on CIFAR-shaped data, fp32 eager vs bf16 +
    channels_last + torch.compile, images/s and FLOPs per image (to compare with the GPU's peak)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = args.device
    if device.type != "cuda":
        raise SystemExit("gpu_wrn needs a CUDA device (run with --gpu on a GPU machine)")
    batch, n = 128, args.gpu_images
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    model = create_model("wrn", 10, 3, 32, width=10, depth=34).to(device)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 32, 32, device=device)).sum().backward()
    flops_fwd_bwd = counter.get_total_flops()
    results = {}
    for label, precision, channels_last, compiled in (
        ("fp32_eager", "fp32", False, False),
        ("bf16_cl_compile", "bf16", True, True),
    ):
        net = create_model("wrn", 10, 3, 32, width=10, depth=34).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        train_net = torch.compile(net) if compiled else net
        attack = create_attack("pgd", eps=EPS, alpha=ALPHA, steps=10, check_inputs=False)
        method = create_method("pgd_at", attack=attack, track_terms=False)
        optimizer = sgd(net)
        controls = controls_for(attack)
        controls.precision, controls.channels_last = precision, channels_last
        loader = DeviceLoader(images, labels, batch, shuffle=True, augment="crop_flip")
        for i, (xb, yb) in enumerate(loader.epoch(0)):  # warm-up (and compilation)
            train_step(train_net, method, optimizer, controls, xb, yb, device)
            if i == 2:
                break

        def one_epoch(
            net: Any = train_net,
            method: Any = method,
            optimizer: Any = optimizer,
            controls: Any = controls,
            loader: Any = loader,
        ) -> None:
            for xb, yb in loader.epoch(1):
                train_step(net, method, optimizer, controls, xb, yb, device)

        seconds = timed(one_epoch, device)
        results[label] = {"seconds": seconds, "images_per_s": n / seconds}
    # One PGD-10 AT step is 11 forward passes and 11 backward passes (10 input-only).
    flops_per_image = 11 * flops_fwd_bwd
    return {
        "description": f"WRN-34-10 PGD-10 AT epoch of {n} images: bf16 + channels_last + compile ÷ fp32 eager",
        "ours": stats([results["bf16_cl_compile"]["seconds"]]), "reference": stats([results["fp32_eager"]["seconds"]]),
        "ratio": results["bf16_cl_compile"]["seconds"] / results["fp32_eager"]["seconds"], "target": None,
        "extra": {**results, "flops_per_image_upper_bound": flops_per_image, "device_name": torch.cuda.get_device_name()},
    }  # fmt: skip


# Issue 14's CPU speed cases (allocator re-exec, threads, per-epoch overhead): cpu_speed.py.
for _name, _case in cpu_speed.CASE_FUNCTIONS.items():
    CASES.register(_name)(_case)


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# robustlab benchmarks ({report['profile']} profile)",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · torch {m['torch']} · {m['torch_threads']} threads · "
        f"CUDA: {m['cuda_device'] or 'none'} · malloc: {m['malloc_env'] or 'glibc defaults'}",
        "",
        "| case | ours (median s) | reference (median s) | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, case in report["cases"].items():
        ours = f"{case['ours']['median']:.4g}" if case.get("ours") else "-"
        reference = f"{case['reference']['median']:.4g}" if case.get("reference") else "-"
        ratio = f"{case['ratio']:.3f}" if case.get("ratio") is not None else "-"
        target = f"<= {case['target']}" if case.get("target") is not None else "-"
        met = "-" if case.get("met") is None else ("yes" if case["met"] else "**no**")
        notes = "; ".join(
            f"{k} {_fmt(v)}" for k, v in case.get("extra", {}).items() if not isinstance(v, dict)
        )
        lines.append(
            f"| {name}: {case['description']} | {ours} | {reference} | {ratio} | {target} | {met} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Profiles

# The sizes the cases read from ``args``, as (CPU profile, GPU profile): the CPU profile fits
# 2 shared cores in minutes; the GPU profile (--gpu) runs CIFAR-size models and batches.
PROFILE_SIZES: dict[str, tuple[int, int]] = {
    "width": (16, 64),
    "batch": (128, 128),
    "attack_width": (8, 64),
    "attack_repeats": (7, 5),
    "aa_points": (128, 1000),
    "aa_repeats": (5, 3),
    "data_images": (10000, 50000),
    "gpu_images": (0, 10240),
    "spectra_depth": (34, 34),
    "spectra_width": (10, 10),
    "spectra_repeats": (1, 3),
    "gaps_points": (5000, 10000),
    "gaps_repeats": (3, 5),
    "gaps_warmup": (1, 1),
    "hessian_width": (4, 64),
    "hessian_batch": (32, 256),
    "hessian_iters": (20, 20),
    "hessian_repeats": (7, 5),
    "track_width": (8, 64),
    "track_batch": (64, 128),
    "track_repeats": (3, 5),
    # cpu_speed.py's cases (CPU profile only)
    "allocator_repeats": (3, 3),
    "allocator_threads": (1, 1),
    "threads_repeats": (3, 3),
    "threads_steps": (3, 3),
    "overhead_repeats": (3, 3),
}
# The cases a profile runs without --case, in order: the shared ones, then the CPU profile's
# whole-job and local-sweep timings, or the GPU profile's WRN-34-10 AT epoch.
_SHARED_CASES = [
    "pgd_at",
    "trades",
    "attacks",
    "autoattack",
    "data",
    "spectra",
    "diagnose_gaps",
    "hessian",
    "tracking",
]
DEFAULT_CASES = {
    "cpu": [*_SHARED_CASES, "demo", "sweep_local", *cpu_speed.CASE_FUNCTIONS],
    "gpu": [*_SHARED_CASES, "gpu_wrn"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--case", action="append", help=f"run only these cases ({', '.join(CASES.names())})"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="the GPU profile: CIFAR-size models and batches"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)
    args.device = torch.device("cuda" if args.gpu else "cpu")
    profile = "gpu" if args.gpu else "cpu"
    for key, (cpu, gpu) in PROFILE_SIZES.items():
        setattr(args, key, gpu if args.gpu else cpu)
    names = args.case or DEFAULT_CASES[profile]
    report: dict[str, Any] = {
        "profile": profile,
        "machine": machine(),
        "cases": {},
    }
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        case = CASES.get(name)(args)
        case["wall_s"] = time.perf_counter() - start
        if case.get("target") is not None and case.get("ratio") is not None:
            case["met"] = case["ratio"] <= case["target"]
        report["cases"][name] = case
        print(
            f"[bench] {name}: ratio {case.get('ratio')} ({case['wall_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        "latest"
        if not args.gpu
        else f"gpu-{(report['machine']['cuda_device'] or 'unknown').replace(' ', '_')}"
    )
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
