"""The critical budget ε* of a real training setup, from ordinary runs (Xing, Song & Cheng 2022).

* :func:`critical_eps_grid` (section 5.2, Table 1): train the clean model and, from scratch,
  one adversarial model per ε of a grid; ε* is where the adversarial training loss at each run's
  selected epoch crosses the clean model's clean test loss, by linear interpolation.
* :func:`fast_critical_eps` (section 6, Table 4): fine-tune the clean model adversarially at a
  few small ε (PGD or one-step FGM) and extrapolate the loss linearly to the crossing.
* :func:`fgsm_instability` (section 5.2, Table 2): the smallest ε of a grid at which FGSM
  training overfits catastrophically (Wong et al.'s detector, flagging).

The selected epoch of every run is its best checkpoint by ``eval.select`` (the paper keeps the
epoch of smallest adversarial test loss: ``--set eval.select=test_rob_loss``). The adversarial
training loss is the per-epoch ``train_rob_loss``: the evaluation attack (``eval.*``, at the
run's ε) on the first ``eval.n_train`` training points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..report import render_table
from ._runs import (
    CLEAN,
    FGSM,
    FINETUNE,
    GRID,
    RunOutcome,
    clean_config,
    ensure_run,
    fgm_config,
    fgsm_config,
    plan_run,
    rebuilt,
    require,
    selected_epoch,
    starting_from,
    wall_time,
    with_budget,
)
from .crossing import Crossing, extrapolate_crossing, interpolate_crossing

# Adversarial fine-tuning (section 6): its attacks, by name, each a change of the run's config.
FAST_ATTACKS: dict[str, Callable[[RunConfig], RunConfig]] = {
    "pgd": lambda config: config,
    "fgm": fgm_config,
}
# The per-epoch keys a row of Table 1 reads: the clean row its clean numbers (at ε = 0 the
# robust ones equal them), the adversarial rows their robust numbers.
ROW_KEYS = {
    CLEAN: ("train_nat_loss", "train_nat_acc", "test_nat_loss", "test_nat_acc"),
    GRID: ("train_rob_loss", "train_rob_acc", "test_rob_loss", "test_rob_acc"),
}


@dataclass
class Study:
    """Where a critical-ε study's runs live and how they are reported."""

    base: RunConfig
    root: Path
    group: str
    store: Any
    seeds: list[int]
    show_progress: bool = False
    say: Callable[[str], None] = lambda message: None

    def run(self, kind: str, eps: float, config: RunConfig) -> RunOutcome:
        plan = plan_run(kind, eps, config, self.root, self.group)
        return ensure_run(plan, self.store, show_progress=self.show_progress, say=self.say)

    def seeded(self, config: RunConfig, seed: int) -> RunConfig:
        return dataclasses.replace(config, seed=seed)


@dataclass
class TableRow:
    """One row of Xing et al.'s Table 1: a budget, its selected epochs and losses/accuracies
    (means over seeds)."""

    eps: float
    epochs: list[int]
    train_loss: float
    train_acc: float | None
    test_loss: float | None
    test_acc: float | None
    run_ids: list[str]
    wall_time_s: float
    selected_by: str

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def table_row(eps: float, outcomes: Sequence[RunOutcome], kind: str) -> TableRow:
    """The row of ``outcomes`` (one per seed), read at each run's selected epoch."""
    train_loss_key, train_acc_key, test_loss_key, test_acc_key = ROW_KEYS[kind]
    epochs, train_loss, train_acc, test_loss, test_acc, how = [], [], [], [], [], ""
    for outcome in outcomes:
        metrics, how = selected_epoch(outcome.run)
        epochs.append(int(metrics["epoch"]))
        train_loss.append(require(metrics, train_loss_key, outcome.run))
        train_acc.append(metrics.get(train_acc_key))
        test_loss.append(metrics.get(test_loss_key))
        test_acc.append(metrics.get(test_acc_key))
    return TableRow(
        eps=eps,
        epochs=epochs,
        train_loss=float(_mean(train_loss)),
        train_acc=_mean(train_acc),
        test_loss=_mean(test_loss),
        test_acc=_mean(test_acc),
        run_ids=[o.plan.run_id for o in outcomes],
        wall_time_s=sum(wall_time(o.run) for o in outcomes),
        selected_by=how,
    )


@dataclass
class CriticalEpsResult:
    """ε* of one setup from a grid (Table 1)."""

    dataset: str
    model: str
    method: str
    norm: str
    select: str
    seeds: list[int]
    clean: TableRow
    rows: list[TableRow]
    crossing: Crossing
    root: str = ""
    figure: str | None = None

    @property
    def clean_test_loss(self) -> float:
        """R(θ̂(0), 0): the clean model's clean test loss at its selected epoch."""
        if self.clean.test_loss is None:
            raise ValueError("the clean run recorded no test_nat_loss")
        return self.clean.test_loss

    @property
    def critical_eps(self) -> float | None:
        return self.crossing.eps

    @property
    def grid_wall_time_s(self) -> float:
        """Training time of the adversarial runs (the clean run is shared with the fast method)."""
        return sum(row.wall_time_s for row in self.rows)

    def summary(self) -> dict[str, Any]:
        return {
            "critical_eps": self.critical_eps,
            "crossing": self.crossing.summary(),
            "clean_test_loss": self.clean_test_loss,
            "dataset": self.dataset,
            "model": self.model,
            "method": self.method,
            "norm": self.norm,
            "select": self.select,
            "seeds": list(self.seeds),
            "table": [self.clean.summary(), *(row.summary() for row in self.rows)],
            "grid_wall_time_s": self.grid_wall_time_s,
            "clean_wall_time_s": self.clean.wall_time_s,
            "root": self.root,
            "figure": self.figure,
        }


def train_clean(study: Study) -> tuple[TableRow, list[RunOutcome]]:
    """The clean model, once per seed, and its row (ε = 0)."""
    outcomes = [
        study.run(CLEAN, 0.0, study.seeded(clean_config(study.base), seed)) for seed in study.seeds
    ]
    return table_row(0.0, outcomes, CLEAN), outcomes


def critical_eps_grid(
    study: Study, eps: Sequence[float], clean: TableRow | None = None
) -> CriticalEpsResult:
    """Xing et al. section 5.2: the clean run, then one adversarial run from scratch per ε and
    seed, and ε* by linear interpolation of the adversarial training loss across the clean
    test loss (the clean model's own training loss is the curve's point at ε = 0)."""
    if clean is None:
        clean, _ = train_clean(study)
    rows = []
    for value in eps:
        config = with_budget(study.base, value)
        outcomes = [study.run(GRID, value, study.seeded(config, seed)) for seed in study.seeds]
        rows.append(table_row(value, outcomes, GRID))
    if clean.test_loss is None:
        raise ValueError("the clean run recorded no test_nat_loss")
    crossing = interpolate_crossing(
        [0.0, *(row.eps for row in rows)],
        [clean.train_loss, *(row.train_loss for row in rows)],
        clean.test_loss,
    )
    base = study.base
    return CriticalEpsResult(
        dataset=base.data.name,
        model=f"{base.model.name} width {base.model.width}",
        method=base.method.name,
        norm=base.attack.norm,
        select=base.eval.select,
        seeds=list(study.seeds),
        clean=clean,
        rows=rows,
        crossing=crossing,
        root=str(study.root.resolve()),
    )


@dataclass
class FastResult:
    """ε̂ from adversarial fine-tuning and linear extrapolation (Table 4)."""

    attack: str
    repeats: int
    epochs: int
    lr: float
    rows: list[TableRow]
    crossing: Crossing
    clean_test_loss: float
    clean_train_loss: float
    grid_critical_eps: float | None = None
    grid_wall_time_s: float | None = None

    @property
    def wall_time_s(self) -> float:
        return sum(row.wall_time_s for row in self.rows)

    @property
    def speedup(self) -> float | None:
        """Grid training time over fine-tuning time (both without the shared clean run)."""
        if self.grid_wall_time_s is None or self.wall_time_s <= 0:
            return None
        return self.grid_wall_time_s / self.wall_time_s

    def summary(self) -> dict[str, Any]:
        return {
            "critical_eps": self.crossing.eps,
            "crossing": self.crossing.summary(),
            "attack": self.attack,
            "repeats": self.repeats,
            "epochs": self.epochs,
            "lr": self.lr,
            "clean_train_loss": self.clean_train_loss,
            "clean_test_loss": self.clean_test_loss,
            "table": [row.summary() for row in self.rows],
            "wall_time_s": self.wall_time_s,
            "grid_critical_eps": self.grid_critical_eps,
            "grid_wall_time_s": self.grid_wall_time_s,
            "speedup": self.speedup,
        }


def finetune_config(
    base: RunConfig, eps: float, attack: str, epochs: int, lr_factor: float
) -> RunConfig:
    """``base`` at ``eps`` as a short fine-tuning run: ``epochs`` epochs at ``lr_factor`` times
    its learning rate, the schedule's bounds re-derived for the shorter run, ε constant."""
    config = with_budget(base, eps)
    train = dataclasses.replace(
        config.train,
        epochs=epochs,
        lr=config.train.lr * lr_factor,
        milestones=None,
        warmup_epochs=0.0,
        periods=[],
    )
    schedule = dataclasses.replace(
        config.attack, eps_schedule="constant", eps_warmup=None, eps_max=None, eps_min=0.0
    )
    return FAST_ATTACKS[attack](rebuilt(dataclasses.replace(config, train=train, attack=schedule)))


def fast_critical_eps(
    study: Study,
    clean: TableRow,
    clean_runs: Sequence[RunOutcome],
    fast_eps: float,
    repeats: int,
    attack: str,
    epochs: int,
    lr_factor: float,
    grid: CriticalEpsResult | None = None,
) -> FastResult:
    """Xing et al. section 6 as robustlab reads it (its appendix A is not in the published
    text): ``repeats`` = a fine-tuning runs, at ε_k = k·``fast_eps``/a (k = 1..a), each starting
    from the clean model's selected checkpoint (per seed); the least-squares line through the
    clean model's training loss at ε = 0 and the fine-tuned adversarial training losses is
    extended to the clean test loss. With a = 1 the line passes through the two points."""
    rows = []
    for k in range(1, repeats + 1):
        value = fast_eps * k / repeats
        config = finetune_config(study.base, value, attack, epochs, lr_factor)
        outcomes = []
        for seed, clean_run in zip(study.seeds, clean_runs, strict=True):
            start = clean_run.run.best_checkpoint
            if not start.exists():
                start = clean_run.run.last_checkpoint
            seeded = starting_from(study.seeded(config, seed), start)
            outcomes.append(study.run(FINETUNE, value, seeded))
        rows.append(table_row(value, outcomes, GRID))
    if clean.test_loss is None:
        raise ValueError("the clean run recorded no test_nat_loss")
    crossing = extrapolate_crossing(
        [0.0, *(row.eps for row in rows)],
        [clean.train_loss, *(row.train_loss for row in rows)],
        clean.test_loss,
    )
    return FastResult(
        attack=attack,
        repeats=repeats,
        epochs=epochs,
        lr=study.base.train.lr * lr_factor,
        rows=rows,
        crossing=crossing,
        clean_test_loss=clean.test_loss,
        clean_train_loss=clean.train_loss,
        grid_critical_eps=grid.critical_eps if grid is not None else None,
        grid_wall_time_s=grid.grid_wall_time_s if grid is not None else None,
    )


@dataclass
class InstabilityRow:
    """FGSM training at one ε: whether (and when) the detector flagged catastrophic overfitting."""

    eps: float
    collapsed: bool
    first_epoch: int | None
    min_pgd_acc: float | None
    final_test_rob_acc: float | None
    run_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class InstabilityResult:
    """Table 2's "Unstable ε": the smallest ε of the grid at which FGSM training collapses."""

    rows: list[InstabilityRow]
    critical_eps: float | None = None

    @property
    def unstable_eps(self) -> float | None:
        return next((row.eps for row in self.rows if row.collapsed), None)

    @property
    def message(self) -> str:
        if self.unstable_eps is None:
            return (
                f"no catastrophic overfitting up to ε = {self.rows[-1].eps:.4g}: the unstable "
                "ε lies beyond the grid"
            )
        return f"FGSM training first collapses at ε = {self.unstable_eps:.4g}"

    def summary(self) -> dict[str, Any]:
        return {
            "unstable_eps": self.unstable_eps,
            "critical_eps": self.critical_eps,
            "message": self.message,
            "table": [row.summary() for row in self.rows],
        }


def fgsm_instability(study: Study, eps: Sequence[float]) -> InstabilityResult:
    """FGSM training (``fgsm_rs``, the detector flagging) at each ε and seed; an ε collapses
    when the detector flags any epoch of any seed (its PGD accuracy on a fixed batch falls by
    more than 0.2 in one epoch, Wong et al. section 5.1)."""
    rows = []
    for value in eps:
        config = fgsm_config(study.base, value)
        outcomes = [study.run(FGSM, value, study.seeded(config, seed)) for seed in study.seeds]
        flagged, accs, finals = [], [], []
        for outcome in outcomes:
            history = outcome.run.read_metrics()
            flagged += [m["epoch"] for m in history if m.get("co_detected")]
            accs += [m["co_pgd_acc"] for m in history if m.get("co_pgd_acc") is not None]
            finals.append(history[-1].get("test_rob_acc") if history else None)
        rows.append(
            InstabilityRow(
                eps=value,
                collapsed=bool(flagged),
                first_epoch=min(flagged) if flagged else None,
                min_pgd_acc=min(accs) if accs else None,
                final_test_rob_acc=_mean(finals),
                run_ids=[o.plan.run_id for o in outcomes],
            )
        )
    return InstabilityResult(rows)


# ---------------------------------------------------------------------------------------------
# Tables


def eps_label(eps: float, norm: str) -> str:
    """``0.00196 (0.5/255)`` for image budgets under L∞; the number alone otherwise."""
    if norm == "Linf" and eps > 0:
        return f"{eps:.4g} ({eps * 255:.3g}/255)"
    return f"{eps:.4g}"


def _epochs(row: TableRow) -> str:
    return ",".join(str(e) for e in row.epochs)


def grid_table(result: CriticalEpsResult) -> str:
    """Xing et al.'s Table 1 and the ε* line."""
    rows = [
        [
            eps_label(row.eps, result.norm),
            _epochs(row),
            row.train_loss,
            row.train_acc,
            row.test_loss,
            row.test_acc,
            row.wall_time_s,
        ]
        for row in [result.clean, *result.rows]
    ]
    seeds = f", mean of {len(result.seeds)} seeds" if len(result.seeds) > 1 else ""
    title = (
        f"{result.method} on {result.dataset}, {result.model}, {result.norm}; epoch: best by "
        f"{result.select}{seeds}; ε = 0 is the clean model (its clean losses)"
    )
    table = render_table(
        [
            "ε",
            "epoch",
            "adv train loss",
            "adv train acc",
            "adv test loss",
            "adv test acc",
            "train s",
        ],
        rows,
        ["auto", "auto", "auto", "pct", "auto", "pct", "seconds"],
    )
    if result.critical_eps is not None:
        answer = f"ε* = {eps_label(result.critical_eps, result.norm)}: {result.crossing.message}"
    else:
        answer = f"ε* not found: {result.crossing.message}"
    return f"{title}\n{table}\n{answer}"


def fast_table(result: FastResult, norm: str) -> str:
    rows = [
        [eps_label(row.eps, norm), _epochs(row), row.train_loss, row.train_acc, row.wall_time_s]
        for row in result.rows
    ]
    table = render_table(
        ["ε (fine-tuned)", "epoch", "adv train loss", "adv train acc", "train s"],
        rows,
        ["auto", "auto", "auto", "pct", "seconds"],
    )
    title = (
        f"fast ε* (Xing et al. section 6): {result.repeats} fine-tuning run(s) with "
        f"{result.attack.upper()}, {result.epochs} epoch(s) at lr {result.lr:.3g} from the clean "
        f"model (clean train loss {result.clean_train_loss:.4g}, clean test loss "
        f"{result.clean_test_loss:.4g})"
    )
    estimate = (
        f"ε̂({result.attack.upper()}, {result.repeats}) = {eps_label(result.crossing.eps, norm)}"
        if result.crossing.eps is not None
        else f"ε̂ not found: {result.crossing.message}"
    )
    timing = f"fine-tuning {result.wall_time_s:.1f} s"
    if result.grid_wall_time_s is not None:
        grid_eps = (
            eps_label(result.grid_critical_eps, norm)
            if result.grid_critical_eps is not None
            else "not found"
        )
        ratio = f", {result.speedup:.1f}x faster" if result.speedup else ""
        timing += f" vs grid {result.grid_wall_time_s:.1f} s{ratio} (grid ε* = {grid_eps})"
    return f"{title}\n{table}\n{estimate}; {timing}"


def fgsm_table(result: InstabilityResult, norm: str) -> str:
    rows = [
        [
            eps_label(row.eps, norm),
            row.collapsed,
            row.first_epoch,
            row.min_pgd_acc,
            row.final_test_rob_acc,
        ]
        for row in result.rows
    ]
    table = render_table(
        ["ε", "collapsed", "flagged at epoch", "min PGD-5 acc (fixed batch)", "final test rob acc"],
        rows,
        ["auto", "auto", "auto", "pct", "pct"],
    )
    line = result.message
    if result.critical_eps is not None:
        line += f" (grid ε* = {eps_label(result.critical_eps, norm)})"
    return f"FGSM instability (Xing et al. Table 2; fgsm_rs, detector flagging)\n{table}\n{line}"
