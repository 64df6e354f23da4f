"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class Equal(Weighting):
    """Every task weighs 1; a group's loss is the sum of its task losses.

    No hyperparameters. With one task this is plain single-task training, and
    every other scheme reduces to it for a group of one task.
    """

    scheme = SCHEMES["equal"]

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return self.held(losses).sum()

    def weights(self) -> torch.Tensor:
        return self.plain_weights()
