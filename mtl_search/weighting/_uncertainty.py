"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class Uncertainty(Weighting):
    """Learns one log-variance ``s_i`` per task and minimises

    ``sum_i 0.5 * exp(-s_i) * L_i + 0.5 * s_i``.

    The effective weight of task ``i`` is ``0.5 * exp(-s_i)``; the ``0.5 * s_i``
    term keeps the variances from growing without bound. ``s_i`` starts at 0 and
    is trained by the network's optimiser. No hyperparameters.
    """

    scheme = SCHEMES["uncertainty"]

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(tasks, seed=seed)
        self.log_vars = nn.Parameter(torch.zeros(self.num_tasks))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        precision = torch.exp(-self.log_vars)
        return (0.5 * precision * losses + 0.5 * self.log_vars).sum()

    def weights(self) -> torch.Tensor:
        return (0.5 * torch.exp(-self.log_vars)).detach()
