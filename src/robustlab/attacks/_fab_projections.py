"""FAB's projection: the smallest step onto a hyperplane that stays inside the image box.

Croce & Hein (ICML 2020), section 3.1: ``proj_p(t, π, C) = argmin_{z ∈ C} ||z - t||_p`` subject to
``<w, z> = b``, with ``C = [0, 1]^D``. Both supported norms share one structure. Write
``c = <w, t> - b`` (the signed gap) and move coordinate ``i`` towards the hyperplane, that is
along ``-sign(c) sign(w_i)``, by ``m_i >= 0``, at most ``p_i`` (the distance to the box face in
that direction). The step closes the gap when ``sum_i |w_i| m_i = |c|``, and the minimizer is:

- L-inf: ``m_i = min(λ, p_i)``: every free coordinate moves by the same ``λ``;
- L2: ``m_i = min(λ |w_i|, p_i)``: the KKT point, the step along ``-w`` clipped to the box;

with the smallest ``λ >= 0`` that closes the gap. Both give ``|w_i| m_i = h_i min(λ, r_i)``
(L-inf: ``h = |w|, r = p``; L2: ``h = w², r = p / |w|``), so the gap closed,
``Φ(λ) = sum_i h_i min(λ, r_i)``, is piecewise linear, concave and nondecreasing with breakpoints
``r``. After sorting ``r``, ``Φ`` at every breakpoint comes from two cumulative sums, the segment
holding ``|c|`` from one comparison, and ``λ`` from a linear equation on it: no per-example
bisection (as the reference runs), no data-dependent indexing, no host synchronization.

If even the box corner that moves every coordinate as far as it can does not reach the hyperplane
(``Φ(max r) < |c|``), that corner is returned, as in the reference implementation: it is the
point of the box closest to the hyperplane in the gap ``<w, z> - b``.
"""

from __future__ import annotations

import torch

# Gradient components at most this large count as zero in the L2 projection (as in the
# reference): their breakpoints p / |w| would overflow and they cannot help close the gap.
L2_ZERO = 1e-8


def project_onto_hyperplane_in_box(
    t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str
) -> torch.Tensor:
    """The step ``d`` of least ``norm`` with ``<w, t + d> = b`` and ``t + d`` in ``[0, 1]^D``.

    Args:
        t: points, N x D, in [0, 1].
        w: hyperplane normals, N x D.
        b: hyperplane offsets, N.
        norm: ``"Linf"`` or ``"L2"``.

    Returns:
        N x D steps. Where the hyperplane does not meet the box, the step to the box corner
        closest to it; coordinates with a zero normal component never move.
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    gap = (w * t).sum(1) - b
    # The direction of motion of each coordinate: down the gap. sign(0) = +1, as the reference.
    side = torch.where(gap >= 0, 1.0, -1.0).to(t.dtype)
    direction = -side[:, None] * w.sign()
    room = torch.where(direction > 0, 1 - t, t)  # p: how far each coordinate can move
    magnitude = w.abs()
    if norm == "Linf":
        moves = magnitude != 0
        weight = magnitude  # h
        breaks = room  # r
    else:
        moves = magnitude > L2_ZERO
        safe = torch.where(moves, magnitude, 1.0)
        weight = torch.where(moves, magnitude * magnitude, 0.0)
        breaks = torch.where(moves, room / safe, 0.0)
    direction = torch.where(moves, direction, 0.0)

    lam = _solve_gap(weight, breaks, gap.abs())
    step = torch.minimum(lam[:, None], breaks)  # min(λ, r)
    if norm == "L2":
        step = step * magnitude  # min(λ |w|, p) = |w| min(λ, p / |w|)
    return direction * step


def _solve_gap(weight: torch.Tensor, breaks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The least ``λ >= 0`` with ``sum_i weight_i min(λ, breaks_i) = target`` (N values);
    ``max(breaks)`` where no ``λ`` reaches the target (every coordinate then saturates).
    """
    r, order = breaks.sort(dim=1)
    h = weight.gather(1, order)
    # Φ(r_k) = sum_{j<k} h_j r_j + r_k sum_{j>=k} h_j: the first sum over the saturated
    # coordinates, the second over those still moving at the common rate.
    tail = h.flip(1).cumsum(1).flip(1)
    head = (h * r).cumsum(1) - h * r
    phi = head + r * tail
    # Φ is nondecreasing: the breakpoints below the target are a prefix, and λ lies on the
    # segment after the last of them, where Φ(λ) = head_k + λ tail_k.
    k = (phi < target[:, None]).sum(1, keepdim=True)
    reachable = k.squeeze(1) < r.shape[1]
    k = k.clamp(max=r.shape[1] - 1)
    tail_k = tail.gather(1, k).squeeze(1)
    lam = (target - head.gather(1, k).squeeze(1)) / tail_k.clamp_min(torch.finfo(r.dtype).tiny)
    return torch.where(reachable, lam.clamp_min(0), r[:, -1])
