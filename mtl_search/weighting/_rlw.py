"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting:
A Litmus Test for Multi-Task Learning", TMLR 2022; arXiv 2111.10603, 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class RLW(Weighting):
    """Fresh random weights every step: ``w = T * softmax(z)``, ``z ~ N(0, I)``.

    The paper's default sampling (standard normal through a softmax). The paper's
    weights sum to 1; here they sum to the number of tasks ``T``, the scale of
    ``equal``. Draws come from the scheme's generator, seeded with the trial's
    seed, so a trial is reproducible and resumes exactly. ``weight/<task>`` is
    the epoch's mean draw (about 1 for every task). No hyperparameters.
    """

    scheme = SCHEMES["rlw"]

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(tasks, seed=seed)
        self.register_buffer("_weights", torch.ones(self.num_tasks))

    def sample(self) -> torch.Tensor:
        """Draw the next step's weights (on the CPU)."""
        z = torch.randn(self.num_tasks, generator=self.generator)
        return self.num_tasks * torch.softmax(z, dim=0)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        self._weights.copy_(self.sample())
        return (self._weights * losses).sum()

    def weights(self) -> torch.Tensor:
        return self._weights.clone()
