"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import Weighting


class DWA(Weighting):
    """Weights each task by how slowly its loss fell over the last two epochs.

    With ``r_k = L_k(t-1) / L_k(t-2)`` (epoch-mean training losses),
    ``w_k(t) = K * exp(r_k / T) / sum_i exp(r_i / T)`` over the group's ``K`` tasks;
    the first two epochs use ``w_k = 1``. A group's weights sum to ``K``.

    Hyperparameters:
        temperature: ``T`` > 0; larger values flatten the weights towards 1. Default 2 (the paper's).
    """

    scheme = SCHEMES["dwa"]

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *, seed: int = 0,
                 temperature: float = 2.0) -> None:
        super().__init__(tasks, groups, seed=seed)
        self.scheme.check({"temperature": temperature})
        self.temperature = float(temperature)
        # Buffers, so a checkpoint (state_dict) carries the loss history along with the weights.
        self.register_buffer("_last_losses", torch.ones(2, self.num_groups, self.num_tasks))
        self.register_buffer("_epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("_weights", self.plain_weights())

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self._weights * self.held(losses)).sum()

    def weights(self) -> torch.Tensor:
        return self._weights.detach().clone()

    def end_epoch(self, epoch_losses: torch.Tensor) -> None:
        self._last_losses[0] = self._last_losses[1]
        self._last_losses[1] = epoch_losses.detach().to(self._last_losses)
        self._epochs_seen += 1
        if self._epochs_seen >= 2:
            previous, last = self._last_losses
            ratios = last / previous.clamp_min(1e-12)
            scores = (ratios / self.temperature).masked_fill(~self.membership, -torch.inf)
            softmax = torch.softmax(scores, dim=1)
            self._weights.copy_(torch.where(self.weighed, self.sizes * softmax, self.plain_weights()))
