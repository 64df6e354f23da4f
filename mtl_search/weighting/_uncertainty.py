"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class Uncertainty(Weighting):
    """Learns one log-variance ``s_i`` per task of each group and minimises, per group,

    ``sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i``.

    The effective weight of task ``i`` is ``0.5 * exp(-s_i)``; the ``0.5 * s_i``
    term keeps the variances from growing without bound. ``s_i`` starts at 0 and
    is trained by the networks' optimiser. No hyperparameters.
    """

    scheme = SCHEMES["uncertainty"]

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *,
                 seed: int = 0) -> None:
        super().__init__(tasks, groups, seed=seed)
        self.log_vars = nn.Parameter(torch.zeros(self.num_groups, self.num_tasks))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=losses.dtype, device=losses.device)
        weighed = 0.5 * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars
        return torch.where(self.weighed, weighed, zero).sum() + torch.where(
            self.membership & ~self.weighed, losses, zero).sum()

    def weights(self) -> torch.Tensor:
        return torch.where(self.weighed, 0.5 * torch.exp(-self.log_vars.detach()), self.plain_weights())
