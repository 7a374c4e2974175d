"""Square Attack: score-based black-box random search (Andriushchenko et al., ECCV 2020)."""

from __future__ import annotations

import bisect
import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import AttackInputError, ConfigError
from .base import ATTACKS, Attack

# The paper's p schedule (as in the authors' code): the fraction of the image a square covers
# halves after each of these iterations, counted on a 10000-iteration scale.
P_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_SCALE = 10_000

# The losses the search can lower (the reference's): the margin itself, or -CE. Success is
# always decided by the margin, which is <= 0 exactly when the point is misclassified.
SEARCH_LOSSES = ("margin", "ce")


def p_selection(iteration: int, p_init: float = 0.8, queries: int | None = None) -> float:
    """Fraction of the image covered by the square sampled at ``iteration`` (0-based).

    ``p_init`` halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. As in
    AutoAttack (``resc_schedule=False``) the schedule is on that 10000-iteration scale whatever
    the budget; pass ``queries`` to stretch it over ``queries`` iterations instead (the
    reference's ``resc_schedule=True``).
    """
    if queries is not None:
        iteration = int(iteration / queries * SCHEDULE_SCALE)
    return p_init / 2 ** bisect.bisect_left(P_HALVING_ITERATIONS, iteration)


def square_side(p: float, height: int, width: int, norm: str) -> int:
    """Side of a square covering a fraction ``p`` of an ``height`` x ``width`` image.

    For L2 the side is odd and at least 3, as in the reference: the pattern is two
    pseudo-Gaussian halves of opposite signs, which need a few pixels each.
    """
    side = round(math.sqrt(p * height * width))
    if norm == "L2":
        side = max(side, 3)
        if side % 2 == 0:
            side += 1
    return max(min(side, height, width), 1)


def _pseudo_gaussian(
    rows: int, cols: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Concentric rectangles around the centre ``(rows // 2, cols // 2)``, the k-th one weighted
    ``1 / (k + 1)^2``: a pixel at Chebyshev distance d from the centre gets
    ``sum_{k >= d} 1 / (k + 1)^2``. Unit L2 norm."""
    rings = max(rows // 2, cols // 2) + 1
    i = torch.arange(rows, device=device)
    j = torch.arange(cols, device=device)
    distance = torch.maximum((i - rows // 2).abs()[:, None], (j - cols // 2).abs()[None, :])
    weights = 1.0 / torch.arange(1, rings + 1, device=device, dtype=dtype) ** 2
    tail_sums = weights.flip(0).cumsum(0).flip(0)  # tail_sums[d] = sum_{k >= d} weights[k]
    pattern = tail_sums[distance]
    return pattern / pattern.norm().clamp_min(1e-12)


def meta_pseudo_gaussian(side: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The L2 update pattern of the paper's Algorithm 3 (Figure 2), ``side`` x ``side``: a
    pseudo-Gaussian on the top ``side // 2`` rows minus one on the others, unit L2 norm."""
    top = _pseudo_gaussian(side // 2, side, device, dtype)
    bottom = _pseudo_gaussian(side - side // 2, side, device, dtype)
    pattern = torch.cat([top, -bottom])
    return pattern / pattern.norm()


# Lookup tables, built once per square side (which changes only at the schedule's breakpoints),
# so that placing a batch of windows costs a few gathers. Cached: callers must not modify them.


@functools.lru_cache(maxsize=32)
def _pattern_table(side: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The meta-pseudo-Gaussian pattern, then its transpose, flattened: (2 * side * side,)."""
    eta = meta_pseudo_gaussian(side, device, dtype)
    return torch.cat([eta.flatten(), eta.T.flatten()])


@functools.lru_cache(maxsize=64)
def _axis_tables(side: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each window start k in 0..length - side along an axis of ``length``: which indices
    the window covers (bool) and each index's position inside it (clamped outside): two
    (length - side + 1, length) tensors."""
    starts = torch.arange(length - side + 1, device=device)
    offsets = torch.arange(length, device=device)[None, :] - starts[:, None]
    return (offsets >= 0) & (offsets < side), offsets.clamp(0, side - 1)


def _random_signs(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _random_corners(
    n: int, side: int, height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of one ``side`` x ``side`` window per example, uniform over all
    positions (the paper's Algorithm 2; the authors' code never draws the last one): two (n,)
    integer tensors."""
    top = torch.randint(0, height - side + 1, (n,), device=device)
    left = torch.randint(0, width - side + 1, (n,), device=device)
    return top, left


def _window(
    top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int
) -> torch.Tensor:
    """The windows with corners ``(top, left)`` as a (n, 1, H, W) boolean mask."""
    in_rows = _axis_tables(side, height, top.device)[0].index_select(0, top)
    in_cols = _axis_tables(side, width, left.device)[0].index_select(0, left)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _placed_patterns(
    top: torch.Tensor, left: torch.Tensor, side: int, like: torch.Tensor
) -> torch.Tensor:
    """The meta-pseudo-Gaussian pattern written at each example's window, randomly transposed
    per example: (n, 1, H, W), meaningful inside the window only (mask it)."""
    n, _, h, w = like.shape
    rows = _axis_tables(side, h, like.device)[1].index_select(0, top)  # (n, H)
    cols = _axis_tables(side, w, like.device)[1].index_select(0, left)  # (n, W)
    first = torch.randint(0, 2, (n, 1, 1), device=like.device) * (side * side)
    flat_index = first + rows[:, :, None] * side + cols[:, None, :]
    return _pattern_table(side, like.device, like.dtype).take(flat_index)[:, None]


def _channel_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm over the pixels of each (example, channel): (B, C, 1, 1)."""
    return t.square().sum(dim=(2, 3), keepdim=True).sqrt()


def _image_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example: (B, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


@ATTACKS.register("square")
class Square(Attack):
    """Square Attack, "Square Attack: a query-efficient black-box adversarial attack via random
    search" (Andriushchenko, Croce, Flammarion, Hein; ECCV 2020), https://arxiv.org/abs/1912.00049:
    the random search of Algorithm 1 with the L-inf square updates of Algorithm 2 (vertical
    stripes init) and the L2 updates of Algorithm 3 (meta-pseudo-Gaussian init and windows that
    move mass while keeping the norm budget), as run by AutoAttack (``resc_schedule=False``).

    Score-based black box: only forward passes, under ``torch.no_grad``. It minimizes the margin
    ``z_y - max_{j != y} z_j`` (or ``-CE``); a candidate is kept when it lowers the loss or
    misclassifies the point. Each iteration queries only the points not yet misclassified, and the
    search stops once all are. Points misclassified at the start are returned unchanged; the
    others get the best point found (adversarial if any was).

    ``info["queries"]`` holds the forward passes spent on each example (CPU int64, shape B): one
    for the clean check that picks the points to attack, then per restart one for the random
    start and one per iteration. Each example's total never exceeds ``queries * restarts``
    (AutoAttack's code runs ``queries`` iterations after its start, and a clean and a final
    check: up to ``queries + 3`` forward passes).

    Differences from AutoAttack's code, each following the paper: squares are placed uniformly
    over all positions (Algorithm 2's ``{0, ..., w - h}``; the code never draws the last row and
    column of positions, which on small images weakens it noticeably), and each example draws its
    own square, signs and pattern orientation (the code shares one square per iteration across
    the batch; the marginal distribution per example is the same).

    Threat model: L-inf (default) or L2 ball of radius ``eps`` intersected with [0, 1].

    Args:
        eps: budget (default 8/255).
        norm: ``"Linf"`` or ``"L2"``.
        queries: query budget per example and restart (default 5000, AutoAttack's).
        restarts: searches from new random starts, each on the points still robust (default 1).
        p_init: fraction of the image covered by the first squares (default 0.8).
        loss: ``"margin"`` (default) or ``"ce"``, the loss the search lowers; success is always
            decided by the margin.
        rescale_schedule: stretch the p schedule over ``queries`` iterations instead of the
            10000-iteration scale (default False, as AutoAttack).
        model_mode: ``"eval"`` (default) or ``"train"``.

    Shapes: ``x`` B x C x H x W in [0, 1], ``y`` B (int64) -> ``x_adv`` like ``x``.

    Example:
        >>> attack = create_attack("square", eps=8 / 255, queries=5000)
        >>> x_adv = attack(model, x, y)
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "Linf",
        queries: int = 5000,
        restarts: int = 1,
        p_init: float = 0.8,
        loss: str = "margin",
        rescale_schedule: bool = False,
        model_mode: str = "eval",
        check_inputs: bool = True,
    ) -> None:
        super().__init__(eps, norm, model_mode, check_inputs)
        if queries <= 0:
            raise ConfigError("queries", queries, "must be > 0")
        if restarts <= 0:
            raise ConfigError("restarts", restarts, "must be > 0")
        if not 0 < p_init <= 1:
            raise ConfigError("p_init", p_init, "must be in (0, 1]")
        if loss not in SEARCH_LOSSES:
            raise ConfigError("loss", loss, f"one of {', '.join(SEARCH_LOSSES)}")
        self.queries = int(queries)
        self.restarts = int(restarts)
        self.p_init = float(p_init)
        self.loss = loss
        self.rescale_schedule = rescale_schedule
        # Per-norm pieces as lookup tables (the norm was validated by the base class).
        self._start = {"Linf": self._linf_start, "L2": self._l2_start}[norm]
        self._candidate = {"Linf": self._linf_candidate, "L2": self._l2_candidate}[norm]

    @torch.no_grad()
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise AttackInputError(
                f"square attack needs images B x C x H x W, got shape {tuple(x.shape)}"
            )
        y = y.long()  # gather indices
        if x.shape[0] == 0:
            self.info["queries"] = torch.zeros(0, dtype=torch.long)
            return x.clone()
        margin, _ = self._objective(model(x), y)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        if self.eps == 0:  # nothing to search: the ball is the point itself
            self.info["queries"] = queries.cpu()
            return x.clone()
        x_adv = x.clone()
        best_loss = torch.full_like(margin, float("inf"))
        robust = margin > 0
        for restart in range(self.restarts):
            budget = self.queries - (restart == 0)  # the clean check was the first query
            todo = robust.nonzero().squeeze(1)
            if budget < 1 or todo.numel() == 0:
                break
            best, margin, loss, used = self._search(model, x[todo], y[todo], budget)
            queries[todo] += used
            # Across restarts keep, per example, an adversarial point, else the lowest loss.
            take = (margin <= 0) | (loss < best_loss[todo])
            x_adv[todo] = torch.where(take.view(-1, 1, 1, 1), best, x_adv[todo])
            best_loss[todo] = torch.where(take, loss, best_loss[todo])
            robust[todo] = margin > 0
        self.info["queries"] = queries.cpu()
        return x_adv

    def _objective(
        self, logits: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example margin ``z_y - max_{j != y} z_j`` and the loss the search minimizes."""
        true = logits.gather(1, y[:, None]).squeeze(1)
        margin = true - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        if self.loss == "margin":
            return margin, margin
        return margin, F.cross_entropy(logits, y, reduction="none").neg()

    def _search(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One random search (Algorithm 1) of at most ``budget`` queries per example.

        Returns the best point of each example, its margin and loss, and the queries used.
        """
        best = self._start(x)
        margin, loss = self._objective(model(best), y)
        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        # The working set holds the examples still correctly classified, compacted only on the
        # iterations where some fall: the fallen ones are written back, the others go on.
        pos = (margin > 0).nonzero().squeeze(1)
        xs, ys, best_w, margin_w, loss_w = x[pos], y[pos], best[pos], margin[pos], loss[pos]
        for iteration in range(budget - 1):
            if pos.numel() == 0:
                break
            x_new = self._candidate(xs, best_w, iteration)
            new_margin, new_loss = self._objective(model(x_new), ys)
            lower = new_loss < loss_w
            loss_w = torch.where(lower, new_loss, loss_w)
            # A misclassified candidate is kept even when the (CE) loss did not go down.
            accept = lower | (new_margin <= 0)
            margin_w = torch.where(accept, new_margin, margin_w)
            best_w = torch.where(accept.view(-1, 1, 1, 1), x_new, best_w)
            keep = (margin_w > 0).nonzero().squeeze(1)  # the one host sync per iteration
            if keep.numel() < pos.numel():
                best[pos], margin[pos], loss[pos] = best_w, margin_w, loss_w
                used[pos] = iteration + 2  # the random start and iterations 0..iteration
                pos, xs, ys = pos[keep], xs[keep], ys[keep]
                best_w, margin_w, loss_w = best_w[keep], margin_w[keep], loss_w[keep]
        # The examples still in the working set spent the whole budget.
        best[pos], margin[pos], loss[pos] = best_w, margin_w, loss_w
        used[pos] = budget
        return best, margin, loss, used

    def _square_side(self, x: torch.Tensor, iteration: int) -> int:
        queries = self.queries if self.rescale_schedule else None
        p = p_selection(iteration, self.p_init, queries)
        return square_side(p, x.shape[2], x.shape[3], self.norm)

    # -- L-inf (Algorithm 2) -------------------------------------------------------------------

    def _linf_start(self, x: torch.Tensor) -> torch.Tensor:
        """Vertical stripes of width 1 at ±eps, one sign per (example, channel, column)."""
        signs = _random_signs((x.shape[0], x.shape[1], 1, x.shape[3]), x)
        return (x + self.eps * signs).clamp(0.0, 1.0)

    def _linf_candidate(self, x: torch.Tensor, best: torch.Tensor, iteration: int) -> torch.Tensor:
        """A random square set to ``x ± eps`` (one sign per channel), the rest of ``best`` kept.

        The reference adds ±2 eps to ``best`` and clips to the ball: since ``best`` is in the
        ball, that lands exactly on ``x ± eps``, which is what is written here directly.
        """
        n, c, h, w = x.shape
        side = self._square_side(x, iteration)
        window = _window(*_random_corners(n, side, h, w, x.device), side, h, w)
        corner = (x + self.eps * _random_signs((n, c, 1, 1), x)).clamp(0.0, 1.0)
        return torch.where(window, corner, best)

    # -- L2 (Algorithm 3) ----------------------------------------------------------------------

    def _l2_start(self, x: torch.Tensor) -> torch.Tensor:
        """A grid of meta-pseudo-Gaussian tiles (about 5 x 5 of side ``H // 5``, each randomly
        transposed, one sign per example, channel and tile), rescaled to L2 norm eps."""
        n, c, h, w = x.shape
        side = max(h // 5, 1)  # the reference divides by zero below 5 pixels
        offset = max((h - 5 * side) // 2, 0)
        tiles_h, tiles_w = h // side, w // side
        eta = meta_pseudo_gaussian(side, x.device, x.dtype)  # once per call: no cache needed
        transposed = torch.randint(0, 2, (n, 1, tiles_h, tiles_w, 1, 1), device=x.device).bool()
        signs = _random_signs((n, c, tiles_h, tiles_w, 1, 1), x)
        tiles = torch.where(transposed, eta.T, eta) * signs  # (n, c, tiles_h, tiles_w, s, s)
        grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, tiles_h * side, tiles_w * side)
        # The grid starts at ``offset`` and is cut at the image border, as in the reference.
        rows, cols = min(grid.shape[2], h - offset), min(grid.shape[3], w - offset)
        delta = torch.zeros_like(x)
        delta[:, :, offset : offset + rows, offset : offset + cols] = grid[:, :, :rows, :cols]
        return (x + self.eps * delta / _image_norm(delta).clamp_min(1e-12)).clamp(0.0, 1.0)

    def _l2_candidate(self, x: torch.Tensor, best: torch.Tensor, iteration: int) -> torch.Tensor:
        """Move the perturbation's mass from two random windows into the first (Algorithm 3).

        Per channel, window 1 gets a fresh ±pattern plus its old content (both at unit norm),
        rescaled to carry the mass of both windows and the unused part of the budget; window 2
        is emptied. The whole perturbation is then rescaled to norm eps and clipped to [0, 1].
        """
        n, c, h, w = x.shape
        side = self._square_side(x, iteration)
        top, left = _random_corners(n, side, h, w, x.device)
        window = _window(top, left, side, h, w)
        emptied = _window(*_random_corners(n, side, h, w, x.device), side, h, w)
        delta = best - x
        budget_left = (self.eps**2 - _image_norm(delta).square()).clamp_min(0.0) / c
        mass = _channel_norm(delta * (window | emptied)).square()
        old = delta * window
        old = old / (_channel_norm(old) + 1e-12)
        fresh = _placed_patterns(top, left, side, x) * _random_signs((n, c, 1, 1), x)
        moved = (fresh + old) * window
        moved = moved / (_channel_norm(moved) + 1e-12) * (budget_left + mass).sqrt()
        delta = torch.where(window, moved, delta.masked_fill(emptied, 0.0))
        return (x + self.eps * delta / (_image_norm(delta) + 1e-12)).clamp(0.0, 1.0)
