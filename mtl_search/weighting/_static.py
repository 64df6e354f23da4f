"""Static weighting: fixed per-task weights, chosen by the search.

The classic hand-tuned weighted sum of task losses (e.g. Kendall et al. 2018,
section 1, on the cost of tuning such weights by grid search), with the weights
left to the hyperparameter search instead of a grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class Static(Weighting):
    """Loss ``sum_k w_k L_k`` with constant weights.

    The raw weights ``r_k`` (one per task of the pack) are normalised within each
    group to sum to the group's number of tasks ``T``: ``w_k = T * r_k / sum_i r_i``
    over the group's tasks, so only their ratios matter and ``r = (1, ..., 1)`` is
    ``equal``; a group of one task weighs it 1.

    Hyperparameters:
        weight: ``r_k``, one per task, sampled as ``static.weight_<task>``;
            default log-uniform on ``[0.1, 10]`` (ratios up to 100), whose middle is 1.
    """

    scheme = SCHEMES["static"]

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *, seed: int = 0,
                 weight: Sequence[float] | None = None) -> None:
        super().__init__(tasks, groups, seed=seed)
        raw = tuple(float(w) for w in weight) if weight is not None else (1.0,) * self.num_tasks
        if len(raw) != self.num_tasks:
            raise ValueError(f"static needs one weight per task ({self.num_tasks}), but got {weight=}.")
        self.scheme.check({"weight": raw})
        values = self.held(torch.tensor(raw, dtype=torch.float32).expand(self.num_groups, -1))
        self.register_buffer("_weights", self.sizes * values / values.sum(dim=1, keepdim=True))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self._weights * self.held(losses)).sum()

    def weights(self) -> torch.Tensor:
        return self._weights
