"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

import torch

from mtl_search.weighting._base import Weighting


class Equal(Weighting):
    """Every task weighs 1; the loss is the sum of the task losses.

    With one task this is plain single-task training.
    """

    name = "equal"

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum()

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_tasks)
