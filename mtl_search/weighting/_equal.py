"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class Equal(Weighting):
    """Every task weighs 1; the loss is the sum of the task losses.

    No hyperparameters. With one task this is plain single-task training, and
    every other scheme reduces to it for a group of one task.
    """

    scheme = SCHEMES["equal"]

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(tasks, seed=seed)
        self.register_buffer("_ones", torch.ones(self.num_tasks), persistent=False)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum()

    def weights(self) -> torch.Tensor:
        return self._ones
