"""The snapshot ensemble of periodic adversarial scheduling (Liu et al. 2020, section 5, PAS)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class SnapshotEnsemble(nn.Module):
    """Averages the softmax of its members and returns the log of the average.

    ``log(mean_k softmax(f_k(x)))`` is a valid logit vector (its softmax is the averaged
    probabilities), so attacks and cross-entropy see the ensemble as one model, as Liu et al.
    ensemble "the models stored at the end of each period".
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([member(x).log_softmax(dim=1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
