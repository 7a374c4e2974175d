"""The training runs behind ``robustlab critical-eps``: their configs, names, execution, numbers.

Every run is an ordinary robustlab run (``config.toml``, ``run.json``, checkpoints, a row in the
store, tagged ``critical-eps:<group>``), trained with :func:`~robustlab.training.runner.prepare`
and :func:`~robustlab.training.runner.fit`. Its directory and id are derived from a hash of its
resolved config (and, for a fine-tuning run, of the checkpoint it starts from), so running the
same command again finds it: a finished run is skipped, an unfinished one resumed from its last
checkpoint, as ``robustlab train --resume`` would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AttackConfig, MethodConfig, RunConfig, all_keys, build_config
from ..errors import RunError
from ..rundir import RunDirectory

# The kinds of runs, and the word each one's name starts with.
CLEAN, GRID, FINETUNE, FGSM = "clean", "eps", "finetune", "fgsm"


def config_digest(config: RunConfig) -> str:
    """A stable hash of what the config sets: every key whose resolved value differs from the
    key's default (sorted, as JSON). Keys added to robustlab later, at their defaults, leave
    the hash of an existing study, and so its runs, unchanged."""
    defaults = RunConfig()
    changed = {
        dotted: config.get(dotted)
        for dotted in all_keys()
        if config.get(dotted) != defaults.get(dotted)
    }
    return hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()


def eps_text(eps: float) -> str:
    """A budget as a short, file-name-safe text: ``0.00392``."""
    return f"{eps:.6g}"


def rebuilt(config: RunConfig) -> RunConfig:
    """Validated and re-resolved (the keys set to None take their rules again)."""
    return build_config(base=config.to_dict())


def with_budget(base: RunConfig, eps: float) -> RunConfig:
    """``base`` trained and evaluated at budget ``eps``: the attack's and the evaluation's budget
    set to ``eps`` and every step size and schedule bound scaled with it (the rules that derive
    them, 2.5·ε/steps and the like, are linear in ε, so scaling a derived value recomputes it;
    from a base ε of 0 they are derived afresh). The evaluation budget follows the training one:
    the adversarial training loss R̂(θ̂(ε), ε) is measured at the same ε."""
    a, e = base.attack, base.eval
    scale = eps / a.eps if a.eps > 0 else None
    attack = dataclasses.replace(
        a,
        eps=eps,
        alpha=a.alpha * scale if scale is not None and a.alpha is not None else None,
        eps_min=a.eps_min * scale if scale is not None else 0.0,
        eps_max=a.eps_max * scale if scale is not None and a.eps_max is not None else None,
    )
    eval_scale = eps / e.eps if e.eps else None
    evaluation = dataclasses.replace(
        e,
        eps=eps,
        alpha=e.alpha * eval_scale if eval_scale is not None and e.alpha is not None else None,
    )
    return rebuilt(dataclasses.replace(base, attack=attack, eval=evaluation))


def clean_config(base: RunConfig) -> RunConfig:
    """Clean training of ``base``'s model and data (``method.name = "clean"``, ε = 0): the
    reference whose clean test loss R(θ̂(0), 0) defines ε*. Its per-epoch "robust" numbers are
    then the clean ones, so ``eval.select`` picks its epoch by the clean metric of the same name."""
    method = MethodConfig(name="clean", track_terms=base.method.track_terms)
    attack = AttackConfig(
        norm=base.attack.norm,
        eps=0.0,
        steps=base.attack.steps,
        random_start=base.attack.random_start,
        loss=base.attack.loss,
        bn_mode="auto",
    )
    evaluation = dataclasses.replace(base.eval, eps=0.0, alpha=None)
    return rebuilt(dataclasses.replace(base, method=method, attack=attack, eval=evaluation))


def fgm_config(config: RunConfig) -> RunConfig:
    """One-step FGM as the training attack (Xing et al. section 6: ε̂(FGM, a)): one step of
    size ε from the clean point, no random start."""
    attack = dataclasses.replace(
        config.attack, steps=1, alpha=config.attack.eps, random_start=False
    )
    return rebuilt(dataclasses.replace(config, attack=attack))


def fgsm_config(base: RunConfig, eps: float) -> RunConfig:
    """Wong et al.'s FGSM training (``fgsm_rs``) at ``eps`` with its catastrophic-overfitting
    detector flagging instead of stopping, so every ε trains for the whole run."""
    method = MethodConfig(
        name="fgsm_rs", overfit_action="flag", track_terms=base.method.track_terms
    )
    attack = AttackConfig(
        norm=base.attack.norm, eps=eps, loss=base.attack.loss, random_start=True, bn_mode="auto"
    )
    evaluation = dataclasses.replace(base.eval, eps=eps, alpha=None)
    return rebuilt(dataclasses.replace(base, method=method, attack=attack, eval=evaluation))


@dataclass
class PlannedRun:
    """One run of a critical-ε study: what to train and where it lives."""

    kind: str
    eps: float
    seed: int
    config: RunConfig
    run_id: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.kind} ε={eps_text(self.eps)} seed {self.seed}"


def plan_run(kind: str, eps: float, config: RunConfig, root: Path, group: str) -> PlannedRun:
    """Tag ``config`` with the study's ``group`` and derive its id and directory from it (a
    fine-tuning run's ``train.init_from``, the checkpoint it starts from, is part of it)."""
    config = dataclasses.replace(config, tag=f"critical-eps:{group}")
    run_id = f"{kind}-{eps_text(eps)}-s{config.seed}-{config_digest(config)[:10]}"
    return PlannedRun(kind, eps, config.seed, config, run_id, root / run_id)


def starting_from(config: RunConfig, checkpoint: Path) -> RunConfig:
    """``config`` starting from ``checkpoint``'s weights (``train.init_from``; optimizer,
    schedule and RNGs fresh): adversarial fine-tuning of a trained model."""
    train = dataclasses.replace(config.train, init_from=str(checkpoint.resolve()))
    return rebuilt(dataclasses.replace(config, train=train))


@dataclass
class RunOutcome:
    """A planned run after :func:`ensure_run`: its directory and whether it was trained now."""

    plan: PlannedRun
    run: RunDirectory
    action: str  # "trained", "resumed" or "skipped"


def ensure_run(
    plan: PlannedRun,
    store: Any,
    *,
    show_progress: bool,
    say: Callable[[str], None],
) -> RunOutcome:
    """Train ``plan`` unless its directory holds a finished run (then skip it, recording it in
    ``store`` if that store lacks it); an unfinished one is resumed from its last checkpoint."""
    from ..training.runner import fit, prepare

    path = plan.path
    if (path / "run.json").is_file():
        run = RunDirectory.open(path)
        info = run.read_info()
        if info.get("status") == "finished":
            _record_finished(run, plan.run_id, store)
            say(f"{plan.label}: finished before, skipped ({path})")
            return RunOutcome(plan, run, "skipped")
        config = run.read_config()
        action = "resumed"
    else:
        run, config, action = None, plan.config, "trained"
    say(f"{plan.label}: {'resuming' if run else 'training'} {plan.run_id}")
    experiment = prepare(config)
    if run is None:
        run = RunDirectory.create(path, config, plan.run_id, store=store.path)
        run.update_info(critical_eps={"kind": plan.kind, "eps": plan.eps, "seed": plan.seed})
    fit(
        experiment, run, plan.run_id, store, resume=action == "resumed", show_progress=show_progress
    )
    return RunOutcome(plan, run, action)


def _record_finished(run: RunDirectory, run_id: str, store: Any) -> None:
    """A finished run trained with another store: add it to this one (it is data like any run)."""
    if store.has_run(run_id):
        return
    info = run.read_info()
    history = run.read_metrics()
    store.upsert_run(run_id, run.path.resolve(), run.read_config().to_dict(), "finished")
    store.replace_epochs(run_id, history)
    summary = {"final": history[-1] if history else {}, "selection": info.get("selection", {})}
    store.finish_run(run_id, "finished", summary)


def selected_epoch(run: RunDirectory) -> tuple[dict[str, Any], str]:
    """The per-epoch metrics of the run's selected epoch (``eval.select``: its best checkpoint),
    and how it was chosen; the last epoch when no epoch measured the selection metric."""
    history = run.read_metrics()
    if not history:
        raise RunError(f"run {str(run.path)!r} has no finished epoch")
    best = run.read_info().get("best_epoch")
    select = run.read_config().eval.select
    for metrics in history:
        if metrics.get("epoch") == best:
            return metrics, f"best by {select}"
    return history[-1], f"last (no epoch measured {select})"


def wall_time(run: RunDirectory) -> float:
    return float(run.read_info().get("wall_time_s", 0.0))


def require(metrics: dict[str, Any], key: str, run: RunDirectory) -> float:
    """A per-epoch number the study needs; a clear error when the run did not record it."""
    value = metrics.get(key)
    if value is None:
        raise RunError(
            f"run {str(run.path)!r} has no per-epoch {key} at epoch {metrics.get('epoch')} "
            "(made before robustlab recorded losses, or with eval.n_train = 0 / eval.every > 1)"
        )
    return float(value)


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started
