"""The seeds' experiments as sweep specs: ``robustlab sweep --preset NAME [--scale tiny|paper]``.

Each preset is a function of the scale returning a spec tree (what a spec file holds, see
:mod:`.spec`), registered in :data:`PRESETS`:

* ``paper``: the published grid and training settings (cited per preset; where a paper leaves
  a setting out, the choice is said in a comment);
* ``tiny``: the same grid's shape on scikit-learn's 8x8 digits (or the synthetic set), small
  widths, one or two epochs: the whole preset runs in minutes on 2 CPU cores (a smoke test of
  the experiment, not its result). A tiny sweep is named ``<preset>-tiny`` so its runs never
  mix with the paper's in a store.

``robustlab sweep --preset NAME --dry-run`` lists a preset's runs; ``--list-presets`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .spec import SweepSpec, parse_spec

SCALES = ("paper", "tiny")

PRESETS: Registry[Callable[[str], dict[str, Any]]] = Registry("preset", "--preset")


def preset_spec(name: str, scale: str = "paper") -> SweepSpec:
    """The preset ``name`` at ``scale`` as a parsed spec."""
    if scale not in SCALES:
        raise ConfigError("--scale", scale, f"one of {', '.join(SCALES)}")
    tree = PRESETS.get(name)(scale)
    if scale != "paper":
        tree = {**tree, "name": f"{tree['name']}-{scale}"}
    return parse_spec(tree, source=f"preset:{name}@{scale}")


def _zip_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """A ``[[zip]]`` table from a list of rows (every row sets the same keys)."""
    keys = list(rows[0])
    for row in rows:
        if list(row) != keys:  # a programming error in a preset
            raise ValueError(f"zip rows set different keys: {list(row)} vs {keys}")
    return {key: [row[key] for row in rows] for key in keys}


# Settings every tiny preset shares: a couple of cheap epochs, small evaluations, no per-epoch
# Lipschitz estimate (its PGD on 256 points would cost more than the training).
TINY_TRAIN = {
    "train.epochs": 2,
    "train.batch_size": 64,
    "train.lr": 0.05,
    "train.schedule": "cosine",
    "eval.n": 100,
    "eval.n_train": 100,
    "eval.steps": 5,
    "eval.lipschitz_n": 0,
    "attack.steps": 3,
}


# ---------------------------------------------------------------------------------------------
# Wu, Chen, Cai, He, Gu (NeurIPS 2021), "Do wider neural networks really help adversarial
# robustness?": section 5.1, Table 1, Appendix C (exp-decay LR) and D (boosted AT).

WU2021_BASE = {
    # Section 5.1 and the TRADES code they adapt (configs/cifar10_trades_wrn34_wu2021.toml).
    "data.name": "cifar10",
    "data.root": "data",
    "data.val_size": 1000,
    "data.augment": "crop_flip",
    "model.name": "wrn",
    "model.depth": 34,
    "attack.norm": "Linf",
    "attack.eps": 0.031,
    "attack.alpha": 0.007,
    "attack.steps": 10,
    "eval.eps": "8/255",
    "eval.steps": 20,
    "eval.alpha": 0.007,
    "eval.n": 1000,
    "eval.n_train": 1000,
    "train.epochs": 100,
    "train.batch_size": 128,
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.weight_decay": 2e-4,
    # Appendix C: the LR halved every epoch after the 75th.
    "train.schedule": "exp_decay",
    "train.milestones": [75],
}
WU2021_TINY_BASE = {
    "data.name": "digits",
    "model.name": "mlp",
    "model.depth": 2,
    "attack.eps": 0.2,
    **TINY_TRAIN,
}
# Table 1: TRADES lambda in {6, ..., 21}; the boosted (generalized) AT of Appendix D (eq. 1.1
# with the per-example clip: method "gat") lambda in {1.00, 1.25, 1.50, 1.75, 2.00}.
WU2021_LAMBDAS = {"trades": [6, 9, 12, 15, 18, 21], "gat": [1.0, 1.25, 1.5, 1.75, 2.0]}


def _method_lambda_zip(lambdas: Mapping[str, Sequence[float]]) -> dict[str, list[Any]]:
    rows = [{"method.name": m, "method.lam": lam} for m, grid in lambdas.items() for lam in grid]
    return _zip_rows(rows)


@PRESETS.register(
    "wu2021-table1",
    summary="Wu et al. 2021 Table 1: WRN-34 widths 1/5/10 x TRADES lambda 6..21 and AT lambda 1..2, 3 seeds",
)
def wu2021_table1(scale: str) -> dict[str, Any]:
    """Wu et al. Table 1: 3 widths x (6 TRADES + 5 AT lambdas) x 3 seeds = 99 runs.

    The issue listed AT lambda in {1, 1.5, 2}; the paper's Table 1 has {1.00, 1.25, 1.50, 1.75,
    2.00}, used here. Table: ``sweep table --preset wu2021-table1 --rows method.lam --cols
    model.width --metric best_robust_accuracy --where method.name=trades``.
    """
    if scale == "tiny":
        return {
            "name": "wu2021-table1",
            "description": "Wu et al. 2021 Table 1 shape on digits: MLP widths x lambda x method",
            "base": WU2021_TINY_BASE,
            "axes": {"model.width": [16, 64]},
            "zip": [_method_lambda_zip({"trades": [1, 6], "gat": [1.0, 2.0]})],
            "seeds": [0, 1],
        }
    return {
        "name": "wu2021-table1",
        "description": "Wu et al. 2021 Table 1: width x lambda for TRADES and boosted AT, CIFAR-10",
        "base": WU2021_BASE,
        "axes": {"model.width": [1, 5, 10]},
        "zip": [_method_lambda_zip(WU2021_LAMBDAS)],
        "seeds": [0, 1, 2],
    }


@PRESETS.register(
    "wu2021-war",
    summary="Wu et al. 2021 section 5.4 / Table 3: WRN-34-0.5 calibration (lambda 6), then WAR on widths 1/5/10",
)
def wu2021_war(scale: str) -> dict[str, Any]:
    """Wu et al. section 5.4 (Table 3): the thin WRN-34-0.5 trained with its tuned lambda = 6
    (the calibration run: ``robustlab calibrate-war RUN_DIR`` reads its zeta), and TRADES with
    WAR (Algorithm 1, lambda from 0) on widths 1, 5 and 10 with the paper's zeta = 30.

    A sweep has no stages: the WAR runs use the published zeta; to use your own calibration,
    run the ``constant`` run, then copy this preset to a spec file with your zeta.
    """
    if scale == "tiny":
        rows = [
            {
                "model.width": 8,
                "method.lam_schedule": "constant",
                "method.lam": 1.0,
                "method.zeta": None,
            },
            *(
                {
                    "model.width": w,
                    "method.lam_schedule": "war",
                    "method.lam": None,
                    "method.zeta": 2.0,
                }
                for w in (16, 64)
            ),
        ]
        return {
            "name": "wu2021-war",
            "description": "Wu et al. 2021 WAR shape on digits: thin calibration run, WAR on wider MLPs",
            "base": {**WU2021_TINY_BASE, "method.name": "trades"},
            "zip": [_zip_rows(rows)],
            "name_keys": ["method.lam_schedule", "model.width"],
            "seeds": [0],
        }
    rows = [
        {
            "model.width": 0.5,
            "method.lam_schedule": "constant",
            "method.lam": 6.0,
            "method.zeta": None,
        },
        *(
            {
                "model.width": w,
                "method.lam_schedule": "war",
                "method.lam": None,
                "method.zeta": 30.0,
            }
            for w in (1, 5, 10)
        ),
    ]
    return {
        "name": "wu2021-war",
        "description": "Wu et al. 2021 section 5.4: WAR calibrated on WRN-34-0.5, CIFAR-10",
        "base": {**WU2021_BASE, "method.name": "trades"},
        "zip": [_zip_rows(rows)],
        "name_keys": ["method.lam_schedule", "model.width"],
        "seeds": [0, 1, 2],
    }


# ---------------------------------------------------------------------------------------------
# Liu, Salzmann, Lin, Tomioka, Süsstrunk (NeurIPS 2020), "On the loss landscape of adversarial
# training": Table 1 and Appendix C.1.


def _liu_tasks() -> dict[str, dict[str, Any]]:
    """Appendix C.1's three tasks, each as every key the zip sets."""
    cifar_attack = {
        "attack.eps": "8/255",
        "attack.alpha": "2/255",  # step eps/4, 10 iterations
        "attack.steps": 10,
        "eval.alpha": "2/255",
        "eval.steps": 10,
    }
    return {
        # MNIST LeNet-16: Adam 1e-4, 100 epochs, PGD step 0.01 and eps/0.01 + 10 = 50 iterations.
        "lenet": {
            "data.name": "mnist",
            "data.options": {},
            "data.augment": "none",
            "model.name": "lenet",
            "model.width": 16,
            "model.normalize": True,
            "train.optimizer": "adam",
            "train.lr": 1e-4,
            "train.nesterov": False,
            "train.schedule": "piecewise",
            "train.milestones": [],
            "train.epochs": 100,
            "attack.eps": 0.4,
            "attack.alpha": 0.01,
            "attack.steps": 50,
            "eval.alpha": 0.01,
            "eval.steps": 50,
        },
        # CIFAR-10 VGG-16 w=8 (configs/cifar10_vgg_liu2020.toml): Adam 1e-3 decayed
        # exponentially to 1e-4 between epochs 100 and 150, no input normalization.
        "vgg": {
            "data.name": "cifar10",
            "data.options": {},
            "data.augment": "crop_flip",
            "model.name": "vgg",
            "model.width": 8,
            "model.normalize": False,
            "train.optimizer": "adam",
            "train.lr": 1e-3,
            "train.nesterov": False,
            "train.schedule": "exponential",
            "train.milestones": [100, 150],
            "train.epochs": 200,
            **cifar_attack,
        },
        # CIFAR-10 ResNet18 w=8 (64 base channels; robustlab's ResNet-18 is the pre-activation
        # one): "accelerated" (Nesterov) SGD, momentum 0.9, LR 0.1 divided by 10 at 100 and 150.
        "resnet18": {
            "data.name": "cifar10",
            "data.options": {},
            "data.augment": "crop_flip",
            "model.name": "preact_resnet18",
            "model.width": 64,
            "model.normalize": False,
            "train.optimizer": "sgd",
            "train.lr": 0.1,
            "train.nesterov": True,
            "train.schedule": "piecewise",
            "train.milestones": [100, 150],
            "train.epochs": 200,
            **cifar_attack,
        },
    }


# eps_max of the warm-up schedulers (Appendix C.1): MNIST 0.6 (cosine) and 0.8 (linear);
# CIFAR-10 16/255 for both. eps_min = 0 everywhere.
LIU_EPS_MAX = {
    "lenet": {"cosine": 0.6, "linear": 0.8},
    "cifar": {"cosine": "16/255", "linear": "16/255"},
}
LIU_SCHEDULERS = ("constant", "cosine", "linear")


def _liu_rows(
    tasks: Mapping[str, Mapping[str, Any]], periods: Sequence[float]
) -> list[dict[str, Any]]:
    rows = []
    for task, settings in tasks.items():
        # Table 1: periodic LR resets (PAS) only for CIFAR-10; MNIST is reported without.
        regimes = [("", [])] + ([("-pas", list(periods))] if task != "lenet" else [])
        for suffix, task_periods in regimes:
            for scheduler in LIU_SCHEDULERS:
                eps_max = LIU_EPS_MAX["lenet" if task == "lenet" else "cifar"].get(scheduler)
                rows.append(
                    {
                        "tag": task + suffix,
                        **settings,
                        "train.periods": task_periods,
                        "attack.eps_schedule": scheduler,
                        "attack.eps_min": 0.0,
                        # constant: eps_max is unused; the task's eps keeps it valid
                        "attack.eps_max": eps_max
                        if eps_max is not None
                        else settings["attack.eps"],
                    }
                )
    return rows


@PRESETS.register(
    "liu2020-table1",
    summary="Liu et al. 2020 Table 1: LeNet/VGG/ResNet-18 x constant/linear/cosine eps x with/without PAS resets",
)
def liu2020_table1(scale: str) -> dict[str, Any]:
    """Liu et al. Table 1: MNIST LeNet (3 eps schedulers) and CIFAR-10 VGG and ResNet-18 (3
    schedulers x without / with periodic resets at epochs 100 and 150, the 3 snapshots
    ensembled): 15 settings x 3 seeds (the paper reports mean ± std without the count; 3
    assumed). Weight decay 1e-3 ("fine-tuned ... for Table 1"), batch 128, a 1,000-image
    validation split. Table: ``sweep table --preset liu2020-table1 --rows tag --cols
    attack.eps_schedule --metric last_robust_accuracy`` (with PAS: ``ensemble_robust_accuracy``).
    """
    if scale == "tiny":
        tasks = _liu_tasks()
        images = {"image_size": 32, "n_train": 256, "n_test": 128}  # VGG pools 5 times
        small = {
            "lenet": {"data.name": "digits", "data.options": {}, "model.width": 2},
            "vgg": {"data.name": "synthetic", "data.options": images, "model.width": 0.5},
            "resnet18": {"data.name": "synthetic", "data.options": images, "model.width": 4},
        }
        epochs = {"train.epochs": 2, "attack.steps": 3, "eval.steps": 5, "train.milestones": []}
        tiny = {
            task: {
                **settings,
                "data.augment": "none",
                **small[task],
                **epochs,
                "train.schedule": "piecewise",
                "attack.alpha": None,  # 2.5 eps / steps
                "eval.alpha": None,
            }
            for task, settings in tasks.items()
        }
        tiny["lenet"]["attack.eps"] = 0.2
        rows = _liu_rows(tiny, periods=[1])
        for row in rows:
            if row["tag"] == "lenet" and row["attack.eps_schedule"] != "constant":
                row["attack.eps_max"] = 0.4
        return {
            "name": "liu2020-table1",
            "description": "Liu et al. 2020 Table 1 shape on digits and synthetic 32x32 images",
            "base": {
                **TINY_TRAIN,
                "data.val_size": 0.1,
                "attack.bn_mode": "eval",
                "train.weight_decay": 1e-3,
            },
            "zip": [_zip_rows(rows)],
            "name_keys": ["tag", "attack.eps_schedule"],
            "seeds": [0],
        }
    return {
        "name": "liu2020-table1",
        "description": "Liu et al. 2020 Table 1: eps schedulers and periodic resets (PAS)",
        "base": {
            "data.root": "data",
            "data.val_size": 1000,
            "model.depth": None,
            "method.name": "pgd_at",
            "attack.norm": "Linf",
            "attack.bn_mode": "eval",  # their code crafts in eval mode
            "eval.n": 1000,
            "eval.n_train": 1000,
            "train.batch_size": 128,
            "train.momentum": 0.9,  # SGD momentum; Adam's beta1
            "train.weight_decay": 1e-3,
            "train.gamma": 0.1,
        },
        "zip": [_zip_rows(_liu_rows(_liu_tasks(), periods=[100, 150]))],
        "name_keys": ["tag", "attack.eps_schedule"],
        "seeds": [0, 1, 2],
    }


# ---------------------------------------------------------------------------------------------
# Xing, Song, Cheng (NeurIPS 2022), "Phase transition from clean training to adversarial
# training": Table 3 (critical eps* per dataset x architecture x training size), section 5.1.

# Table 3's rows: (tag, dataset, model, width, training size n, initial LR). CIFAR and SVHN:
# Rice et al.'s code, SGD with batch 128, 200 epochs, LR /10 at 100 and 150 (0.1; SVHN 0.01).
XING_ROWS = (
    ("cifar10-preact18-n50k", "cifar10", "preact_resnet18", None, 50000, 0.1),
    ("cifar10-preact18-n10k", "cifar10", "preact_resnet18", None, 10000, 0.1),
    ("cifar10-wrn34_1-n50k", "cifar10", "wrn", 1, 50000, 0.1),
    ("cifar10-wrn34_10-n50k", "cifar10", "wrn", 10, 50000, 0.1),
    ("cifar100-preact18-n25k", "cifar100", "preact_resnet18", None, 25000, 0.1),
    ("cifar100-preact18-n50k", "cifar100", "preact_resnet18", None, 50000, 0.1),
    ("mnist-mlp128-n50k", "mnist", "mlp", 128, 50000, 0.01),
    ("mnist-mlp16-n50k", "mnist", "mlp", 16, 50000, 0.01),
    ("svhn-preact18-n50k", "svhn", "preact_resnet18", None, 50000, 0.01),
)
# The eps grids (in 1/255) the critical eps* is interpolated on (section 5.2: clean training
# gives R*(0), adversarial training over a range of eps, linear interpolation where the
# adversarial training loss crosses it). Table 1 shows 0, 0.5, 1, 2; the grids bracket each
# row's reported eps* (CIFAR/SVHN 0.5 to 4.9; MNIST 26.1 and 48).
XING_EPS = {"natural": [0, 0.5, 1, 2, 4, 8], "mnist": [0, 8, 16, 32, 48, 64]}


def _xing_rows(
    rows: Sequence[tuple[Any, ...]], grids: Mapping[str, Sequence[float]], sizes: bool
) -> list[dict[str, Any]]:
    out = []
    for tag, dataset, model, width, n, lr in rows:
        for eps in grids["mnist" if dataset in ("mnist", "digits") else "natural"]:
            row = {
                "tag": tag,
                "data.name": dataset,
                "model.name": model,
                "model.width": width,
                "model.depth": 34 if model == "wrn" else None,
                "train.lr": lr,
                "attack.eps": f"{eps}/255",
            }
            if sizes:
                row["data.train_size"] = n
            out.append(row)
    return out


@PRESETS.register(
    "xing2022-table3",
    summary="Xing et al. 2022 Table 3: eps grids per dataset x architecture x training size n (critical eps*)",
)
def xing2022_table3(scale: str) -> dict[str, Any]:
    """Xing et al. Table 3: every (dataset, architecture, n) row trained with PGD-AT over an
    eps grid (eps = 0 is clean training, the benchmark R*(0)); eps* is where the adversarial
    training loss crosses the clean test loss (``robustlab.phase``). One seed (the paper reports
    single values). Training sizes use ``data.train_size`` (issue 11). MNIST: the table says
    MLP(128) / MLP(16), the text a two-conv CNN with 128 / 16 units in its first FC layer; the
    table's MLPs are used (LeNet's FC width 64w cannot be 16 with an integer w). Their MNIST
    training settings are not given; SGD at 0.01 with the CIFAR schedule is assumed.
    """
    if scale == "tiny":
        rows = (
            ("digits-mlp64", "digits", "mlp", 64, None, 0.05),
            ("digits-mlp16", "digits", "mlp", 16, None, 0.05),
        )
        return {
            "name": "xing2022-table3",
            "description": "Xing et al. 2022 Table 3 shape on digits: MLP widths x eps grid",
            "base": {**TINY_TRAIN, "method.name": "pgd_at", "model.depth": 2},
            "zip": [_zip_rows(_xing_rows(rows, {"mnist": [0, 16, 48]}, sizes=False))],
            "name_keys": ["tag", "attack.eps"],
            "seeds": [0],
        }
    return {
        "name": "xing2022-table3",
        "description": "Xing et al. 2022 Table 3: critical eps* grids",
        "base": {
            "data.root": "data",
            "data.val_size": 1000,
            "data.augment": "auto",
            "method.name": "pgd_at",
            "attack.norm": "Linf",
            "attack.steps": 10,  # Rice et al.: PGD-10, step eps/4 (= 2.5 eps / 10, the default)
            "eval.steps": 20,
            "eval.n": 1000,
            "eval.n_train": 1000,
            # section 5.1: the epoch of smallest adversarial test loss is the final model
            "eval.select": "test_rob_loss",
            "train.epochs": 200,
            "train.batch_size": 128,
            "train.momentum": 0.9,
            "train.weight_decay": 5e-4,
            "train.schedule": "piecewise",
            "train.milestones": [100, 150],
            "train.gamma": 0.1,
        },
        "zip": [_zip_rows(_xing_rows(XING_ROWS, XING_EPS, sizes=True))],
        "name_keys": ["tag", "attack.eps"],
        "seeds": [0],
    }


# ---------------------------------------------------------------------------------------------
# Wen, Li, Jia (ICML 2020), "Towards understanding the regularization of adversarial robustness
# on neural networks": section 4.1, Appendix D.1-D.3 (ResNet-56/110, with and without BN).


@PRESETS.register(
    "wen2020",
    summary="Wen et al. 2020: ResNet-56/110 with and without batch norm x eps 4/8/16 (CIFAR-10/100)",
)
def wen2020(scale: str) -> dict[str, Any]:
    """Wen et al. section 4.1 (Appendix D.2, Tables 3-4): PGD-AT (10 steps of 2/255) at eps in
    {4, 8, 16}/255 of ResNet-56 and ResNet-110 on CIFAR-10 and CIFAR-100, batch 256, 200 epochs,
    SGD momentum 0.9, LR 0.05 divided by 10 at 100 and 150 (App. D.3). Their ResNets have no
    batch norm (Fixup initialization, App. D.3); the runs with batch norm are the comparison
    the issue asks for. Weight decay is not given: robustlab's default (5e-4) is kept. One seed.
    """
    axes: dict[str, Any] = {
        "model.options.batchnorm": [False, True],
        "attack.eps": ["4/255", "8/255", "16/255"],
    }
    if scale == "tiny":
        return {
            "name": "wen2020",
            "description": "Wen et al. 2020 shape on digits: ResNet depth x batch norm x eps",
            "base": {
                **TINY_TRAIN,
                "data.name": "digits",
                "model.name": "resnet_cifar",
                "model.width": 4,
                "attack.alpha": "2/255",
                "train.epochs": 1,
            },
            "axes": {"model.depth": [20, 32], **axes},
            "seeds": [0],
        }
    return {
        "name": "wen2020",
        "description": "Wen et al. 2020: adversarial robustness and BN in deep ResNets",
        "base": {
            "data.root": "data",
            "data.val_size": 1000,
            "data.augment": "crop_flip",
            "model.name": "resnet_cifar",
            "model.width": 16,
            "method.name": "pgd_at",
            "attack.norm": "Linf",
            "attack.alpha": "2/255",
            "attack.steps": 10,
            "eval.steps": 20,
            "eval.n": 1000,
            "eval.n_train": 1000,
            "train.epochs": 200,
            "train.batch_size": 256,
            "train.lr": 0.05,
            "train.momentum": 0.9,
            "train.schedule": "piecewise",
            "train.milestones": [100, 150],
            "train.gamma": 0.1,
        },
        "axes": {"data.name": ["cifar10", "cifar100"], "model.depth": [56, 110], **axes},
        "seeds": [0],
    }
