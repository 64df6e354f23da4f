"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting:
A Litmus Test for Multi-Task Learning", TMLR 2022; arXiv 2111.10603, 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class RLW(Weighting):
    """Fresh random weights every step: for a group of ``K`` tasks, ``w = K * softmax(z)``, ``z ~ N(0, I)``.

    The paper's default sampling (standard normal through a softmax). The paper's
    weights sum to 1; here they sum to ``K``, the scale of ``equal``. Each group
    draws from its own generator, seeded with the trial's seed, so a trial is
    reproducible, resumes exactly, and a group draws what it would alone.
    ``weight/<task>`` is the epoch's mean draw (about 1 for every task). No hyperparameters.
    """

    scheme = SCHEMES["rlw"]

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *,
                 seed: int = 0) -> None:
        super().__init__(tasks, groups, seed=seed)
        self.register_buffer("_weights", self.plain_weights())
        self._drawn = [group for group in range(self.num_groups) if len(self.groups[group]) > 1]

    def sample(self, group: int = 0) -> torch.Tensor:
        """Draw group ``group``'s next weights (on the CPU), one per task it holds."""
        z = torch.randn(len(self.groups[group]), generator=self.generators[group])
        return len(self.groups[group]) * torch.softmax(z, dim=0)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        weights = self.plain_weights().cpu()
        for group in self._drawn:
            weights[group, self.members(group).cpu()] = self.sample(group)
        self._weights.copy_(weights)
        return (self._weights * self.held(losses)).sum()

    def weights(self) -> torch.Tensor:
        return self._weights.clone()
