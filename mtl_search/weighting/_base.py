"""The contract every loss-weighting scheme follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn


class Weighting(nn.Module, ABC):
    """Combines a group's per-task losses into the loss that is backpropagated.

    A scheme is an ``nn.Module`` so that learned weights (e.g. uncertainty's
    log-variances) are trained by the same optimiser as the network.

    Subclasses set ``name`` and implement :meth:`combine`. Schemes that adapt
    between epochs override :meth:`end_epoch`.

    Args:
        tasks: the group's task names, in the order losses are given.
    """

    name: ClassVar[str]
    #: Whether the trainer must hand the scheme per-task gradients of the shared
    #: parameters (gradient-manipulation schemes); loss-level schemes leave it False.
    needs_task_gradients: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a weighting needs at least one task")
        self.tasks = tuple(tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar to backpropagate, from a vector of per-task losses."""

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """The per-task weights the last :meth:`combine` used (detached), for logging."""

    def end_epoch(self, epoch_losses: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Called after each epoch with the epoch's mean training loss per task."""
