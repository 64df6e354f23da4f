"""The contract every loss-weighting scheme follows, for a pack of groups trained at once.

A scheme weighs the task losses of every group of a pack (:mod:`mtl_search.packed`)
at once: losses come as a ``[G, T]`` matrix (row ``g`` the pack's group ``g``,
column ``t`` the pack's task ``t``; entries of tasks a group does not hold are
ignored), and every learned or adaptive quantity is kept per group (uncertainty's
log-variances, DWA's loss history, GradNorm's weights, RLW's random draws). Groups
share nothing, so a group's weights are exactly those it would get trained alone:
a pack of one group is one network's scheme.

Two kinds of scheme share one base class:

*Loss-level* schemes (``Scheme.level == "loss"``) turn the loss matrix into one
scalar with :meth:`Weighting.combine` (the sum over groups of each group's
combination); the trainer backpropagates it into every parameter.

*Gradient-level* schemes (``Scheme.level == "gradient"``) also see, every step,
each task's gradient of each multi-task group's shared parameters and return
those parameters' update directions from :meth:`Weighting.shared_gradient`. The
trainer backpropagates :meth:`Weighting.combine` for everything else and writes
the returned directions into the shared parameters' gradients. It calls
:meth:`Weighting.shared_gradient` first, then :meth:`Weighting.combine`, so a
scheme may compute this step's weights in the former and use them in the latter.
A group that shares no layer has no shared gradient: for it every
gradient-level scheme falls back to its loss-level combination.

Conventions:

* a group of one task trains plainly (weight 1), whatever the scheme: every
  scheme reduces to that, so its state for such a group never moves;
* weights are on the scale of the plain sum of the group's task losses (``equal``:
  every weight 1); schemes that normalise their weights make them sum to the
  group's number of tasks, unless the scheme's docstring says otherwise;
* :meth:`Weighting.weights` returns the ``[G, T]`` weights of the last step on the
  scheme's device (0 where a group does not hold a task): for loss-level schemes
  the factor of each task loss, for gradient-level schemes the coefficient
  ``w_k`` of each task gradient in the shared update ``d = sum_k w_k g_k``. The
  trainer logs their mean over each epoch as ``weight/<task>``.
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
    """Every task's gradient of the shared parameters of the pack's steered groups, flattened.

    Args:
        flat: ``[S, T, P]``: ``flat[i, t]`` is task ``t``'s gradient of group ``groups[i]``'s shared
            parameters, concatenated (zero for a task the group does not hold).
        groups: ``[S]`` the pack indices of the steered groups (multi-task groups that share layers).
        last_layer: the columns of ``flat`` holding the last shared layer's weight matrix (GradNorm's ``W``).
    """

    flat: torch.Tensor
    groups: torch.Tensor
    last_layer: slice


class Weighting(nn.Module, ABC):
    """Combines the per-task losses (and, optionally, gradients) of a pack's groups into one update.

    A scheme is an ``nn.Module`` so that learned weights (e.g. uncertainty's
    log-variances) are trained by the same optimiser as the networks, and so that
    its state (buffers, random generators) travels in checkpoints.

    Subclasses set ``scheme`` (their declaration in :data:`mtl_search.schemes.SCHEMES`, whose
    hyperparameters are the keyword arguments of ``__init__``) and implement :meth:`combine`
    and :meth:`weights`; gradient-level schemes also implement :meth:`shared_gradient`.

    Args:
        tasks: the pack's task names: the columns of every loss matrix.
        groups: each group's tasks (a subset of ``tasks``); default: one group of all of them.
        seed: seeds each group's own random generator (:attr:`generators`), as a group trained alone would be.
    """

    #: The scheme's declaration (name, level, capturable, hyperparameters) in :data:`mtl_search.schemes.SCHEMES`.
    scheme: ClassVar[Scheme]

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *,
                 seed: int = 0) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct task names, at least one, but got tasks={self.tasks}.")
        for group in groups or ():
            if not group or not set(group) <= set(self.tasks):
                raise ValueError(f"each group must hold some of tasks={self.tasks}, but got group={tuple(group)}.")
        # Each group's tasks in the pack's order: its losses, weights and draws follow that order.
        self.groups = (self.tasks,) if groups is None else tuple(
            tuple(task for task in self.tasks if task in group) for group in groups)
        self.seed = seed
        membership = torch.tensor([[task in group for task in self.tasks] for group in self.groups])
        self.register_buffer("membership", membership, persistent=False)
        self.register_buffer("sizes", membership.sum(dim=1, keepdim=True).to(torch.float32), persistent=False)
        # Groups of one task train plainly; the scheme proper weighs the others.
        self.register_buffer("weighed", membership & (membership.sum(dim=1, keepdim=True) > 1), persistent=False)
        # On the CPU whatever the device: a scheme draws a few numbers per step, and a CPU generator's
        # state is the same on every machine, so a checkpoint resumes anywhere. One per group: a group's
        # draws are those it would make trained alone.
        self.generators = [torch.Generator().manual_seed(seed) for _ in self.groups]

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

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def held(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` where a group holds the task, else 0 (NaN-safe: a diverged entry elsewhere stays out)."""
        return torch.where(self.membership, values, torch.zeros((), dtype=values.dtype, device=values.device))

    def plain_weights(self) -> torch.Tensor:
        """``[G, T]``: 1 where a group holds the task (the weights of ``equal``), else 0."""
        return self.membership.to(torch.float32)

    def members(self, group: int) -> torch.Tensor:
        """The task columns group ``group`` holds."""
        return self.membership[group].nonzero().flatten()

    @abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar to backpropagate, from the ``[G, T]`` loss matrix.

        For a gradient-level scheme this trains everything but the steered groups' shared parameters.
        """

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """The ``[G, T]`` per-task weights of the last step (detached), for logging; see the module docstring."""

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        """The update directions ``[S, P]`` of the steered groups' shared parameters (gradient-level schemes only).

        Args:
            losses: this step's ``[G, T]`` losses (detached).
            gradients: every task's gradient of each steered group's shared parameters.
        """
        raise NotImplementedError(f"{type(self).__name__} is a loss-level scheme: it has no shared_gradient")

    def end_epoch(self, epoch_losses: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Called after each epoch with the epoch's ``[G, T]`` mean training losses."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"generators": [generator.get_state() for generator in self.generators]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)


class GramWeighting(Weighting):
    """A gradient-level scheme that weighs each group's shared task gradients by solving a small problem.

    Subclasses implement :meth:`coefficients`: a group's per-task weights ``w`` from the
    Gram matrix ``G G^T`` of its task gradients; its shared layers then move along
    ``sum_k w_k g_k``, and ``weight/<task>`` logs ``w``. Task-specific layers train on
    the plain sum of the losses (:meth:`combine`, which subclasses may change).
    """

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *,
                 seed: int = 0) -> None:
        super().__init__(tasks, groups, seed=seed)
        self.register_buffer("_weights", self.plain_weights())

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return self.held(losses).sum()

    def weights(self) -> torch.Tensor:
        return self._weights.clone()

    @abstractmethod
    def coefficients(self, group: int, products: torch.Tensor) -> torch.Tensor:
        """Weights of group ``group``'s tasks in its shared update, from ``products = G G^T`` of its tasks'
        gradients (float64, CPU, in its task order)."""

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        products = gram(gradients.flat)
        weights = torch.zeros(len(gradients.groups), self.num_tasks, dtype=torch.float64)
        for row, group in enumerate(gradients.groups.tolist()):
            members = self.members(group).cpu()
            weights[row, members] = self.coefficients(group, products[row][members][:, members])
        self._weights[gradients.groups] = weights.to(self._weights)
        return combination(weights, gradients.flat)


def gram(flat: torch.Tensor) -> torch.Tensor:
    """``G G^T`` of every steered group's task gradients (``[S, T, T]``), in float64 on the CPU.

    The gradient-level schemes solve small ``T x T`` problems: doing them on the CPU
    costs one small device-to-host copy per step and keeps the solvers exact and simple.
    """
    return torch.bmm(flat, flat.transpose(1, 2)).to("cpu", torch.float64)


def combination(weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``[S, P]``: for each steered group ``sum_k weights_k * flat_k``, weights moved to ``flat``'s device and dtype."""
    return torch.bmm(weights.to(flat.device, flat.dtype).unsqueeze(1), flat).squeeze(1)
