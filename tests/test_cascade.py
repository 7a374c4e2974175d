"""The worst-case cascade, its resumable state, AutoAttack as an ensemble, and the sanity checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustlab.attacks import Attack, create_attack
from robustlab.attacks.autoattack import VERSIONS
from robustlab.errors import ConfigError, RunError
from robustlab.evaluation import CascadeState, evaluate_robustness, expand_attacks, run_cascade
from robustlab.evaluation.checks import (
    check_black_box_gap,
    check_logits,
    check_randomized,
    check_train_mode,
    check_zero_gradients,
    run_pre_checks,
)

EPS = 0.1


class CountingAttack(Attack):
    """Records how many points it was asked to attack; fools every point whose index is in ``fool``."""

    def __init__(self, fool: set[int], images: torch.Tensor, eps: float = EPS) -> None:
        super().__init__(eps, "Linf")
        self.fool, self.images, self.seen = fool, images, []

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(x))
        # Find each point's index in the dataset to decide whether to "fool" it: flip its pixels
        # towards a region the model (below) classifies differently.
        out = x.clone()
        for row, image in enumerate(x):
            index = int((self.images.flatten(1) == image.flatten()).all(1).nonzero()[0])
            if index in self.fool:
                out[row] = (image + self.eps).clamp(0, 1)
        return out


class ThresholdModel(nn.Module):
    """Class 1 when the mean pixel exceeds 0.5, else class 0; a tiny nudge crosses the threshold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1).mean(1) - 0.5) * 100
        return torch.stack([-score, score], dim=1)


def _threshold_data() -> tuple[torch.Tensor, torch.Tensor]:
    levels = torch.tensor([0.1, 0.45, 0.47, 0.48, 0.2, 0.46, 0.49, 0.44])
    images = levels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return images, torch.zeros(8, dtype=torch.long)


def test_later_attacks_only_see_points_still_stable() -> None:
    images, labels = _threshold_data()
    first = CountingAttack({1, 2, 3}, images)
    second = CountingAttack({5, 6}, images)
    third = CountingAttack({7}, images)
    state = run_cascade(
        ThresholdModel(), images, labels, {"a": first, "b": second, "c": third}, batch_size=3
    )
    assert sum(first.seen) == 8 and sum(second.seen) == 5 and sum(third.seen) == 3
    assert max(first.seen) <= 3  # batched
    assert state.per_attack == {"a": 5 / 8, "b": 3 / 8, "c": 2 / 8}
    assert state.fooled_by.tolist() == [-1, 0, 0, 0, -1, 1, 1, 2]
    assert state.robust.tolist() == [True, False, False, False, True, False, False, False]
    assert state.finished and state.done == ["a", "b", "c"]


def test_state_saved_mid_cascade_resumes_to_the_same_result(
    tmp_path, robust_digits_mlp, one_thread
) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:120], y[:120]

    def attacks() -> dict[str, Attack]:
        return {
            "pgd": create_attack("pgd", eps=EPS, steps=5),
            "fgsm": create_attack("fgsm", eps=EPS),
        }

    torch.manual_seed(0)
    full = run_cascade(model, x, y, attacks(), batch_size=50, keep_adv=True)

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crash_after_two_batches(_: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash

    path = tmp_path / "state.pt"
    torch.manual_seed(0)
    import robustlab.evaluation.cascade as cascade

    previous, cascade.SAVE_INTERVAL_S = cascade.SAVE_INTERVAL_S, -1.0  # save after every batch
    try:
        with pytest.raises(Crash):
            run_cascade(
                model,
                x,
                y,
                attacks(),
                batch_size=50,
                keep_adv=True,
                state_path=path,
                progress=crash_after_two_batches,
            )
    finally:
        cascade.SAVE_INTERVAL_S = previous
    saved = CascadeState.load(path)
    assert saved.done == [] and saved.position == 50  # mid-way through the first attack
    # Resuming replays the RNG from where the crashed run was after its first batch.
    torch.manual_seed(0)
    rerun = attacks()
    rerun["pgd"](model, x[:50], saved.prediction[:50])  # consume the first batch's draws
    resumed = run_cascade(model, x, y, rerun, batch_size=50, state=saved)
    assert torch.equal(resumed.stable, full.stable) and resumed.per_attack == full.per_attack
    assert torch.allclose(resumed.x_adv, full.x_adv)
    with pytest.raises(RunError, match="other test inputs"):
        run_cascade(
            model, x[:100], y[:100], attacks(), batch_size=50, state=CascadeState.load(path)
        )


def test_evaluate_robustness_resumes_from_a_finished_state_without_attacking(
    tmp_path, robust_digits_mlp, one_thread
) -> None:
    model, x, y = robust_digits_mlp
    path = tmp_path / "state.pt"
    attack = create_attack("pgd", eps=EPS, steps=3)
    first = evaluate_robustness(model, x[:64], y[:64], attack, state_path=path)
    counting = create_attack("pgd", eps=EPS, steps=3)
    calls = []
    counting.perturb = lambda *args: calls.append(1)  # must not run
    again = evaluate_robustness(model, x[:64], y[:64], {"pgd": counting}, state_path=path)
    assert calls == [] and again.robust_accuracy == first.robust_accuracy


def test_mixed_threat_models_are_rejected() -> None:
    with pytest.raises(ConfigError, match="same threat model"):
        run_cascade(
            ThresholdModel(),
            *_threshold_data(),
            {"a": create_attack("pgd", eps=0.1), "b": create_attack("pgd", eps=0.2)},
        )


def test_autoattack_versions_expand_to_their_published_components() -> None:
    standard = create_attack("autoattack", eps=8 / 255)
    assert list(standard.components) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert standard.components["apgd-t"].targets == 9
    assert standard.components["fab-t"].targets == 9
    assert standard.components["square"].queries == 5000
    assert all(standard.components[n].steps == 100 for n in ("apgd-ce", "apgd-t", "fab-t"))
    assert list(expand_attacks(standard)) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    fewer = create_attack("autoattack", targets=4)
    assert fewer.components["apgd-t"].targets == fewer.components["fab-t"].targets == 4
    plus = create_attack("autoattack", version="plus")
    assert list(plus.components) == [name for name, _ in VERSIONS["plus"]]
    assert plus.components["apgd-ce"].restarts == 5
    rand = create_attack("autoattack", version="rand")
    assert [a.eot_iter for a in rand.components.values()] == [20, 20]
    custom = create_attack(
        "autoattack", version="custom", attacks=["pgd", "square"], eps=0.1, norm="L2"
    )
    assert list(custom.components) == ["pgd", "square"] and custom.components["square"].norm == "L2"
    with pytest.raises(ConfigError, match="version"):
        create_attack("autoattack", version="fast")
    with pytest.raises(ConfigError, match="attacks"):
        create_attack("autoattack", version="custom")
    with pytest.raises(ConfigError, match="valid:"):
        create_attack("autoattack", version="custom", attacks=["pdg"])


def test_autoattack_cascade_is_at_most_each_of_its_attacks(robust_digits_mlp, one_thread) -> None:
    """The ensemble's robust accuracy is the point-wise worst case: never above any member's."""
    model, x, y = robust_digits_mlp
    x, y = x[:150], y[:150]
    kwargs = {"eps": EPS, "steps": 20, "queries": 300}
    torch.manual_seed(0)
    ensemble = evaluate_robustness(model, x, y, create_attack("autoattack", **kwargs))
    per_attack = list(ensemble.per_attack.values())
    assert per_attack == sorted(per_attack, reverse=True)  # cumulative worst case
    assert ensemble.robust_accuracy == per_attack[-1]
    for name, member in create_attack("autoattack", **kwargs).components.items():
        torch.manual_seed(0)
        alone = evaluate_robustness(model, x, y, member).robust_accuracy
        # The first member sees the same points with the same seed: exactly equal. Later members
        # alone attack every point with other random draws: within 2 points of the cascade's.
        tolerance = 0.0 if name == "apgd-ce" else 0.02
        assert ensemble.robust_accuracy <= alone + tolerance, name
    assert ensemble.per_attack["apgd-ce"] == evaluate_robustness_seeded(model, x, y, kwargs)


def evaluate_robustness_seeded(model, x, y, kwargs) -> float:
    torch.manual_seed(0)
    member = create_attack("autoattack", **kwargs).components["apgd-ce"]
    return evaluate_robustness(model, x, y, member).robust_accuracy


def test_autoattack_called_directly_returns_the_worst_case_examples(
    robust_digits_mlp, one_thread
) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:64], y[:64]
    attack = create_attack("autoattack", eps=EPS, steps=10, queries=100)
    x_adv = attack(model, x, y)
    assert (x_adv - x).abs().amax() <= EPS + 1e-6
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    torch.manual_seed(0)
    cascade = evaluate_robustness(
        model, x, y, create_attack("autoattack", eps=EPS, steps=10, queries=100)
    )
    assert abs(float(robust.float().mean()) - cascade.robust_accuracy) <= 0.05
    assert attack.info["queries"].shape == (64,)


# ---------------------------------------------------------------------------------------------
# Sanity checks: each fires on a model built to trigger it, and stays silent on a sound model.


class Softmaxed(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(dim=1)


class Noisy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.05 * torch.randn_like(x))


class Quantized(nn.Module):
    """Rounds its input: a gradient of exactly zero almost everywhere (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def test_checks_fire_on_the_models_built_to_trigger_them(robust_digits_mlp) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:32], y[:32]
    assert run_pre_checks(model, x, y) == []
    assert check_logits(Softmaxed(model), x, y).code == "probabilities"
    assert check_randomized(Noisy(model), x, y).code == "randomized"
    assert check_randomized(model, x, y) is None
    flag = check_zero_gradients(Quantized(model), x, y)
    assert flag.code == "zero_gradients" and "32 of 32" in flag.message
    trained = nn.Sequential(nn.Linear(2, 2))
    assert check_train_mode(trained).code == "train_mode"
    assert check_train_mode(trained.eval()) is None


def test_black_box_gap_check() -> None:
    assert check_black_box_gap({"apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.449}) is None
    flag = check_black_box_gap({"apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.40})
    assert flag.code == "black_box_stronger" and "5.0 points" in flag.message
    assert check_black_box_gap({"square": 0.1}) is None  # nothing white-box to compare with


def _fgsm_state(tmp_path, model, x, y, **kwargs):
    path = tmp_path / "state.pt"
    evaluate_robustness(model, x, y, create_attack("fgsm", eps=EPS), state_path=path, **kwargs)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("weights", "another model"),
        ("buffers", "another model"),
        ("inputs", "other test inputs"),
        ("labels", "other labels"),
        ("seed", "another --seed"),
        ("attack", "other attacks"),
    ],
)
def test_a_state_resumes_only_for_what_it_was_saved_for(
    tmp_path, robust_digits_mlp, one_thread, change, message
) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:40], y[:40]
    path = _fgsm_state(tmp_path, model, x, y, seed=0)
    other, seed, attack = copy.deepcopy(model), 0, create_attack("fgsm", eps=EPS)
    if change == "weights":  # one weight, by one float32 step
        weight = next(other.parameters())
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1.0))
    elif change == "buffers":
        other.normalize.mean += 1e-3  # the normalization layer's mean is a buffer
    elif change == "inputs":
        x = x.flip(0)
        y = y.flip(0)
    elif change == "labels":
        y = (y + 1) % 10
    elif change == "seed":
        seed = 1
    else:
        attack = create_attack("fgsm", eps=EPS, random_start=True)
    with pytest.raises(RunError, match=message) as error:
        evaluate_robustness(other, x, y, attack, state_path=path, seed=seed)
    assert len(str(error.value).splitlines()) == 1 and str(path) in str(error.value)


def test_the_same_weights_in_another_object_resume(tmp_path, robust_digits_mlp) -> None:
    model, x, y = robust_digits_mlp
    path = _fgsm_state(tmp_path, model, x[:40], y[:40])
    first = CascadeState.load(path)
    again = evaluate_robustness(
        copy.deepcopy(model), x[:40], y[:40], create_attack("fgsm", eps=EPS), state_path=path
    )
    assert again.robust.tolist() == first.robust.tolist()


class RecordingProgress:
    """A StageProgress that records what the cascade reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def __call__(self, n: int = 1) -> None:
        self.events.append(("done", n))

    def stage(self, name: str) -> None:
        self.events.append(("stage", name))

    def pulse(self, **postfix: float) -> None:
        self.events.append(("pulse", postfix["model_calls"]))


def test_progress_names_each_attack_and_moves_inside_its_batches(
    robust_digits_mlp, one_thread
) -> None:
    model, x, y = robust_digits_mlp
    x, y = x[:120], y[:120]
    attacks = {
        "fgsm": create_attack("fgsm", eps=0.3),
        "pgd": create_attack("pgd", eps=0.3, steps=4),
    }
    progress = RecordingProgress()
    state = run_cascade(model, x, y, attacks, batch_size=50, progress=progress)
    stages = [value for kind, value in progress.events if kind == "stage"]
    assert stages == ["fgsm (1/2)", "pgd (2/2)"]
    during_pgd = progress.events[progress.events.index(("stage", "pgd (2/2)")) :]
    pulses = [value for kind, value in during_pgd if kind == "pulse"]
    # pgd runs on the points FGSM left stable: 4 steps + its final forward pass per batch, at least.
    pgd_batches = -(-int((state.fooled_by != 0).sum()) // 50)  # points FGSM left stable
    assert len(pulses) >= 4 * pgd_batches and pulses == sorted(pulses)
    # Batches count as if every attack ran on every point: the ones pgd needs no more are skipped.
    assert sum(value for kind, value in progress.events if kind == "done") == 2 * 3
    assert 0 < pgd_batches < 3  # at eps 0.3 FGSM fools enough points to spare pgd a batch


def test_progress_bar_draws_the_attack_and_the_model_calls() -> None:
    import io

    from robustlab.progress import Progress, StageProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = Progress(4, "eval", stream=stream, interval=0.0)
    assert isinstance(bar, StageProgress)
    bar.stage("apgd-t (2/4)")
    bar.pulse(model_calls=312)
    assert bar.count == 0  # a pulse does not advance
    last = stream.getvalue().split("\r")[-1]
    assert "apgd-t (2/4)" in last and "model calls 312" in last and "0/4" in last
