"""The worst-case cascade of attacks (as AutoAttack runs its ensemble), with a resumable state.

Every point starts *stable*. Each attack in turn runs, in batches, only on the points still
stable; a point whose prediction it changes is done (its adversarial example kept) and no later
attack spends work on it. After each attack the robust accuracy so far is recorded, so one run
gives the per-attack and the overall point-wise worst-case numbers.

Which label an attack pushes away from is ``stability_labels``: each point's *predicted* label
(exact perturbation stability, Wu et al. 2021 eq. 3.1; for correctly classified points this is
the robust-accuracy attack itself) or its *true* label (the published variant, which does not try
to move misclassified points). Either way a point is stable while f(x_adv) = f(x), and robust
when it is correct and stable.

The losses come from the logits these passes compute anyway (no extra forward pass, no extra
attack): the natural loss CE(f(x), y) from the clean pass, and the adversarial loss
CE(f(x_adv), y), always against the *true* label y, from the pass that reads each attack's
prediction, on the adversarial example the state keeps for the point (see
:attr:`CascadeState.x_adv`). With predicted-label attacks, a misclassified point's x_adv was
pushed away from its (wrong) predicted label, not towards a higher loss on y; so the mean is the
true-label CE at the evaluation's own adversarial examples, not a separate maximization of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Attack
from ..attacks.base import validate_logits
from ..errors import ConfigError, RunError
from ..progress import StageProgress

STABILITY_LABELS = ("predicted", "true")
# Save the state at most this often during an attack (and always when an attack ends).
SAVE_INTERVAL_S = 30.0

# What a saved state must have been computed for to be resumed, in the order they are compared,
# and how a mismatch reads ("... was saved for <this>"). Without the model and data parts, a
# state saved for one model resumed silently with another and reported the first one's flags.
SIGNATURE_PARTS = {
    "model": "another model (its parameters or buffers differ)",
    "inputs": "other test inputs (--data, --n or the data files differ)",
    "labels": "other labels",
    "n": "another number of points (--n)",
    "attacks": "other attacks or attack settings",
    "stability_labels": "another --stability-labels",
    "seed": "another --seed",
}


@dataclass
class CascadeState:
    """Per-point flags and per-attack results of a (possibly unfinished) cascade.

    Attributes:
        attacks: names of the attacks, in cascade order.
        signature: what the state was computed for (:data:`SIGNATURE_PARTS`: fingerprints of
            the model and the data, the attacks' settings, n, label mode, seed); a state is only
            resumed for the same signature.
        done: attacks finished so far.
        prediction: f(x) per point; ``correct``: f(x) == y.
        stable: no attack so far changed the prediction.
        adv_prediction: f(x_adv) per point (f(x) until attacked).
        perturbation_norm: the norm of x_adv - x per point, in the attacks' norm.
        fooled_by: index into ``attacks`` of the attack that changed the prediction (-1: none).
        queries: forward passes spent by black-box attacks, per point.
        x_adv: adversarial examples (the first that changed the prediction; for stable points the
            last attack's output), kept only when asked for.
        nat_loss: CE(f(x), y) per point, against the true label.
        adv_loss: CE(f(x_adv), y) per point, at the example ``x_adv`` holds (whether kept or
            not; CE(f(x), y) until the point is attacked), against the true label whatever
            ``stability_labels``. ``None`` in a state saved by a robustlab without losses.
        per_attack: robust accuracy after each finished attack; ``per_attack_stability`` likewise.
        seconds: wall time per attack (accumulated across resumes).
        position: in the attack being run, how many of its points are done (for resuming mid-attack).
    """

    attacks: list[str]
    signature: dict[str, Any]
    prediction: torch.Tensor
    correct: torch.Tensor
    stable: torch.Tensor
    adv_prediction: torch.Tensor
    perturbation_norm: torch.Tensor
    fooled_by: torch.Tensor
    queries: torch.Tensor
    x_adv: torch.Tensor | None = None
    nat_loss: torch.Tensor | None = None
    adv_loss: torch.Tensor | None = None
    done: list[str] = field(default_factory=list)
    per_attack: dict[str, float] = field(default_factory=dict)
    per_attack_stability: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    clean_seconds: float = 0.0
    position: int = 0
    pending: torch.Tensor | None = None

    @property
    def robust(self) -> torch.Tensor:
        return self.correct & self.stable

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.attacks)

    def save(self, path: str | Path) -> None:
        """Write the state atomically (checksummed, as checkpoints are)."""
        from ..training.checkpoint import save_checkpoint

        save_checkpoint(path, {"cascade_state": self.__dict__})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> CascadeState:
        """Read a state saved by :meth:`save`, with every tensor on ``device``.

        The file is read onto the CPU whatever device wrote it (a state saved on ``cuda:1``
        loads on a machine with one GPU), then moved: the cascade indexes these tensors with
        indices on the evaluation's device, which must match.
        """
        from ..training.checkpoint import load_checkpoint

        payload = load_checkpoint(path, map_location="cpu")
        if "cascade_state" not in payload:
            raise RunError(f"{str(path)!r} is not a cascade state file")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in payload["cascade_state"].items() if k in known}).to(device)

    def to(self, device: torch.device | str) -> CascadeState:
        """Every tensor field on ``device`` (in place; returns the state)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.to(device))
        return self


def signature_of(
    attacks: Mapping[str, Attack],
    n: int,
    stability_labels: str,
    *,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """What a cascade state is computed for (see :data:`SIGNATURE_PARTS`).

    The fingerprints of the model and the data are left out when not given (they cost one pass
    over the weights and the test set, so they are only computed when a state is saved or
    resumed).
    """
    signature: dict[str, Any] = {
        "attacks": {name: repr(a) for name, a in attacks.items()},
        "n": n,
        "stability_labels": stability_labels,
        "seed": seed,
    }
    if model is not None:
        signature["model"] = model_fingerprint(model)
    if images is not None:
        signature["inputs"] = tensor_fingerprint(images)
    if labels is not None:
        signature["labels"] = tensor_fingerprint(labels)
    return signature


def _hash_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    # Raw bytes of any dtype (bfloat16 has no numpy type, so view the memory as bytes first).
    digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values."""
    digest = hashlib.sha256()
    _hash_tensor(digest, tensor)
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes and values): the same
    weights give the same fingerprint on any device, other weights almost surely another."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _hash_tensor(digest, tensor)
    return digest.hexdigest()


def check_signature(
    saved: Mapping[str, Any], expected: Mapping[str, Any], path: str | Path | None = None
) -> None:
    """Refuse to resume a state computed for something else, naming the first difference.

    Raises:
        RunError: the state was saved for another model, data, attacks, label mode or seed (or
            by a robustlab that did not record them).
    """
    where = f"the cascade state {str(path)!r}" if path is not None else "the cascade state"
    for part, what in SIGNATURE_PARTS.items():
        if part in expected and saved.get(part) != expected[part]:
            if part not in saved:
                what = f"an unknown {part} (saved by an older robustlab)"
            raise RunError(
                f"{where} was saved for {what}; delete it to start over, or pass another --state"
            )


def check_state_file(
    path: str | Path | None,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Mapping[str, Attack],
    stability_labels: str,
    seed: int | None = None,
) -> None:
    """Refuse a state file at ``path`` saved for something else, before any work starts (so
    a command refuses it with its one line, before announcing the evaluation); a missing file
    is a fresh start. :func:`run_cascade` checks again when it resumes.

    Raises:
        RunError: as :func:`check_signature`, or the file is not a cascade state.
    """
    if path is None or not Path(path).exists():
        return
    saved = CascadeState.load(path)
    expected = signature_of(
        attacks, len(labels), stability_labels, seed=seed, model=model, images=images, labels=labels
    )
    check_signature(saved.signature, expected, path)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images


def _fresh_state(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Mapping[str, Attack],
    batch_size: int,
    signature: dict[str, Any],
    keep_adv: bool,
) -> CascadeState:
    """The clean pass: predictions, correctness and natural losses, every point stable."""
    start = time.perf_counter()
    predictions, losses = [], []
    with torch.no_grad():
        for begin in range(0, len(labels), batch_size):
            batch_labels = labels[begin : begin + batch_size]
            logits = model(_as_float(images[begin : begin + batch_size]))
            validate_logits(logits, len(batch_labels), batch_labels)
            predictions.append(logits.argmax(dim=1))
            losses.append(_losses(logits, batch_labels))
    n = len(labels)
    device = labels.device
    prediction = (
        torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long, device=device)
    )
    nat_loss = torch.cat(losses) if losses else torch.zeros(0, device=device)
    return CascadeState(
        attacks=list(attacks),
        signature=signature,
        prediction=prediction,
        correct=prediction == labels,
        stable=torch.ones(n, dtype=torch.bool, device=device),
        adv_prediction=prediction.clone(),
        perturbation_norm=torch.zeros(n, device=device),
        fooled_by=torch.full((n,), -1, dtype=torch.long, device=device),
        queries=torch.zeros(n, dtype=torch.long, device=device),
        x_adv=_as_float(images).clone() if keep_adv else None,
        nat_loss=nat_loss,
        adv_loss=nat_loss.clone(),  # x_adv = x until a point is attacked
        clean_seconds=time.perf_counter() - start,
    )


def run_cascade(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Mapping[str, Attack],
    *,
    batch_size: int = 512,
    stability_labels: str = "predicted",
    keep_adv: bool = False,
    state: CascadeState | None = None,
    state_path: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    seed: int | None = None,
) -> CascadeState:
    """Run ``attacks`` one after another, each only on the points still stable.

    Args:
        model: the classifier, already in the mode to evaluate (eval).
        images, labels: the points (uint8 images are mapped to [0, 1] per batch).
        attacks: name -> attack, in cascade order; they must share the norm and eps.
        batch_size: points per attack call.
        stability_labels: ``"predicted"`` or ``"true"`` (see the module docstring).
        keep_adv: keep every point's adversarial example in the state.
        state: a state to continue (from :meth:`CascadeState.load`).
        state_path: where to save the state as it progresses (resumable after a crash).
        progress: called with the number of batches finished, counted in batches of all the
            points per attack (the batches an attack needs no more, its points fooled already,
            count as done), so the total is ``len(attacks) * ceil(len(labels) / batch_size)``.
            A :class:`~robustlab.progress.StageProgress` (a progress bar) is also told which
            attack runs and pulsed at each model call inside it (an APGD-T batch is ~900 calls).
        seed: the seed the caller drew the attacks' randomness from (recorded in the state, so
            a state is only resumed with the same seed).
    """
    if stability_labels not in STABILITY_LABELS:
        raise ConfigError(
            "eval.stability_labels", stability_labels, f"one of {', '.join(STABILITY_LABELS)}"
        )
    check_compatible(attacks)
    tracked = state is not None or state_path is not None
    fingerprints = {"model": model, "images": images, "labels": labels} if tracked else {}
    signature = signature_of(attacks, len(labels), stability_labels, seed=seed, **fingerprints)
    if state is None:
        state = _fresh_state(model, images, labels, attacks, batch_size, signature, keep_adv)
    else:
        check_signature(state.signature, signature, state_path)
        state.to(labels.device)  # saved on another device, or loaded onto the CPU
    targets = state.prediction if stability_labels == "predicted" else labels
    last_save = time.perf_counter()
    full_batches = -(-len(labels) // batch_size)
    for index, (name, attack) in enumerate(attacks.items()):
        if name in state.done:
            _advance(progress, full_batches)
            continue
        start = time.perf_counter()
        # The points this attack runs on are fixed when it starts (saved, for resuming mid-attack).
        if state.pending is None:
            state.pending = torch.nonzero(state.stable).squeeze(1)
            state.position = 0
        pending = state.pending.to(labels.device)
        remaining = -(-(len(pending) - state.position) // batch_size)
        _advance(progress, full_batches - remaining)
        attacked = _reporting(model, progress, f"{name} ({index + 1}/{len(attacks)})")
        while state.position < len(pending):
            index_batch = pending[state.position : state.position + batch_size]
            x = _as_float(images[index_batch])
            x_adv = attack(attacked, x, targets[index_batch])
            with torch.no_grad():
                adv_logits = model(x_adv)
            adv_prediction = adv_logits.argmax(dim=1)
            if state.adv_loss is not None:
                state.adv_loss[index_batch] = _losses(adv_logits, labels[index_batch])
            changed = adv_prediction != state.prediction[index_batch]
            state.adv_prediction[index_batch] = adv_prediction
            state.perturbation_norm[index_batch] = attack.ball.norm(x_adv - x)
            state.stable[index_batch] = ~changed
            state.fooled_by[index_batch[changed]] = index
            if "queries" in attack.info:
                state.queries[index_batch] += attack.info["queries"].to(state.queries.device)
            if state.x_adv is not None:
                state.x_adv[index_batch] = x_adv.to(state.x_adv.device)
            state.position += len(index_batch)
            if progress is not None:
                progress(1)
            if state_path is not None and time.perf_counter() - last_save > SAVE_INTERVAL_S:
                state.seconds[name] = state.seconds.get(name, 0.0) + time.perf_counter() - start
                start = time.perf_counter()
                state.save(state_path)
                last_save = start
        state.seconds[name] = state.seconds.get(name, 0.0) + time.perf_counter() - start
        state.per_attack[name] = _mean(state.robust)
        state.per_attack_stability[name] = _mean(state.stable)
        state.done.append(name)
        state.pending, state.position = None, 0
        if state_path is not None:
            state.save(state_path)
            last_save = time.perf_counter()
    return state


def _losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE per point against the true labels, in float32 (a half-precision model's logits too)."""
    with torch.no_grad():
        return F.cross_entropy(logits.float(), labels, reduction="none")


def _advance(progress: Callable[[int], None] | None, batches: int) -> None:
    if progress is not None and batches > 0:
        progress(batches)


class _CallCounter(nn.Module):
    """The model, reporting each forward pass: one batch of APGD-T or Square is hundreds to
    thousands of passes (tens of seconds on a GPU), so a bar advanced per batch alone stands
    still that long. A plain module around the model, so it works for TorchScript too."""

    def __init__(self, model: nn.Module, progress: StageProgress) -> None:
        super().__init__()
        self.model = model
        self.progress = progress
        self.calls = 0

    def forward(self, x: torch.Tensor) -> Any:
        self.calls += 1
        self.progress.pulse(model_calls=self.calls)
        return self.model(x)


def _reporting(model: nn.Module, progress: Callable[[int], None] | None, stage: str) -> nn.Module:
    """``model``, counting its calls into ``progress`` when that is a stage-aware bar."""
    if not isinstance(progress, StageProgress):
        return model
    progress.stage(stage)
    return _CallCounter(model, progress)


def check_compatible(attacks: Mapping[str, Attack]) -> None:
    """All attacks of one evaluation must share the threat model (norm and eps)."""
    if not attacks:
        raise ConfigError("attack", "", "at least one attack")
    first_name, first = next(iter(attacks.items()))
    for name, attack in attacks.items():
        if (attack.norm, attack.eps) != (first.norm, first.eps):
            raise ConfigError(
                "attack",
                name,
                f"every attack of a cascade must use the same threat model ({first_name}: {first.norm} eps {first.eps:g}; {name}: {attack.norm} eps {attack.eps:g})",
            )


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if flags.numel() else float("nan")
