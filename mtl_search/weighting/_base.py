"""The contract every loss-weighting scheme follows.

Two kinds of scheme share one base class:

*Loss-level* schemes (``Scheme.level == "loss"``) turn the vector of
per-task losses into one scalar with :meth:`Weighting.combine`; the trainer
backpropagates it into every parameter.

*Gradient-level* schemes (``Scheme.level == "gradient"``) also see, every
step, each task's gradient of the group's shared parameters and return the
update direction for those parameters from :meth:`Weighting.shared_gradient`.
The trainer then backpropagates :meth:`Weighting.combine` into the task-specific
parameters only and writes the returned direction into the shared parameters'
gradients. It calls :meth:`Weighting.shared_gradient` first, then
:meth:`Weighting.combine`, so a scheme may compute this step's weights in the
former and use them in the latter. A group that shares no layer has no shared
gradient: the trainer then uses :meth:`Weighting.combine` alone, so every
gradient-level scheme falls back to its loss-level combination.

Conventions:

* weights are on the scale of the plain sum of the task losses (``equal``: every
  weight 1); schemes that normalise their weights make them sum to the number
  of tasks ``T``, unless the scheme's docstring says otherwise;
* :meth:`Weighting.weights` returns the weights of the last step on the
  scheme's device: for loss-level schemes the factor of each task loss, for
  gradient-level schemes the coefficient ``w_k`` of each task gradient in the
  shared update ``d = sum_k w_k g_k`` (exact: every scheme here returns a
  combination of the task gradients). The trainer logs their mean over each
  epoch as ``weight/<task>``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mtl_search.schemes import Scheme


@dataclass(frozen=True)
class SharedGradients:
    """Every task's gradient of the group's shared parameters, flattened.

    Args:
        flat: ``[T, P]``: row ``k`` is task ``k``'s gradient of all shared parameters,
            concatenated in ``model.shared_parameters()`` order.
        last_layer: the columns of ``flat`` holding the last shared layer's weight matrix
            (GradNorm's ``W``).
    """

    flat: torch.Tensor
    last_layer: slice


class Weighting(nn.Module, ABC):
    """Combines a group's per-task losses (and, optionally, gradients) into one update.

    A scheme is an ``nn.Module`` so that learned weights (e.g. uncertainty's
    log-variances) are trained by the same optimiser as the network, and so that
    its state (buffers, random generator) travels in checkpoints.

    Subclasses set ``scheme`` (their declaration in :data:`mtl_search.schemes.SCHEMES`, whose
    hyperparameters are the keyword arguments of ``__init__``) and implement :meth:`combine`
    and :meth:`weights`; gradient-level schemes also implement :meth:`shared_gradient`.
    Schemes that adapt between epochs override :meth:`end_epoch`.

    Args:
        tasks: the group's task names, in the order losses are given.
        seed: seeds the scheme's own random generator (:attr:`generator`).
    """

    #: The scheme's declaration (name, level, capturable, hyperparameters) in :data:`mtl_search.schemes.SCHEMES`.
    scheme: ClassVar[Scheme]

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__()
        if not tasks:
            raise ValueError(f"tasks must hold at least one task name, but got {tasks=}.")
        self.tasks = tuple(tasks)
        self.seed = seed
        # On the CPU whatever the device: a scheme draws a few numbers per step, and a CPU generator's
        # state is the same on every machine, so a checkpoint resumes anywhere.
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def name(self) -> str:
        return self.scheme.name

    @property
    def needs_task_gradients(self) -> bool:
        """Whether the trainer must hand the scheme every task's gradient of the shared parameters."""
        return self.scheme.needs_task_gradients

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar to backpropagate, from a vector of per-task losses.

        For a gradient-level scheme this trains the task-specific parameters only
        (and everything when the group shares no layer).
        """

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """The per-task weights of the last step (detached), for logging; see the module docstring."""

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        """The update direction ``[P]`` of the shared parameters (gradient-level schemes only).

        Args:
            losses: this step's per-task losses (detached).
            gradients: every task's gradient of the shared parameters.
        """
        raise NotImplementedError(f"{type(self).__name__} is a loss-level scheme: it has no shared_gradient")

    def end_epoch(self, epoch_losses: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Called after each epoch with the epoch's mean training loss per task."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class GramWeighting(Weighting):
    """A gradient-level scheme that weighs the tasks' shared gradients by solving a ``T x T`` problem.

    Subclasses implement :meth:`coefficients`: per-task weights ``w`` from the Gram
    matrix ``G G^T`` of the task gradients; the shared layers then move along
    ``sum_k w_k g_k``, and ``weight/<task>`` logs ``w``. Task-specific layers train
    on the plain sum of the losses.
    """

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(tasks, seed=seed)
        self.register_buffer("_weights", torch.ones(self.num_tasks))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum()

    def weights(self) -> torch.Tensor:
        return self._weights.clone()

    @abstractmethod
    def coefficients(self, products: torch.Tensor) -> torch.Tensor:
        """Per-task weights of the shared update, from ``products = G G^T`` (float64, CPU)."""

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        weights = self.coefficients(gram(gradients.flat))
        self._weights.copy_(weights)
        return combination(weights, gradients.flat)


def gram(flat: torch.Tensor) -> torch.Tensor:
    """``G G^T`` of the task gradients, in float64 on the CPU.

    The gradient-level schemes solve small ``T x T`` problems: doing them on the CPU
    costs one small device-to-host copy per step and keeps the solvers exact and simple.
    """
    return (flat @ flat.T).to("cpu", torch.float64)


def combination(weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``sum_k weights_k * flat_k``, with the weights moved to ``flat``'s device and dtype."""
    return weights.to(flat.device, flat.dtype) @ flat
