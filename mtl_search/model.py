"""The multi-task network: a shared trunk, per-task branches and per-task heads.

::

    x -> trunk (sharing_depth layers, shared) -> branch_t (depth - sharing_depth layers)
      -> head_t (head_sizes hidden layers) -> output_t

Hidden layers are ``Linear -> ReLU [-> Dropout]`` of ``width`` units.

Backbones
---------
``mlp``
    every layer an ``nn.Linear``.
``tabm``
    TabM (Gorishniy, Kotelnikov and Babenko, ICLR 2025): ``k`` implicit members that share
    every weight matrix. Each hidden layer is a BatchEnsemble layer (Wen et al., 2020),
    ``y_i = s_i * (W (r_i * x_i)) + b_i`` for member ``i``, with per-member input and
    output scalings ``r_i``, ``s_i`` (initialised to 1) and biases ``b_i``; each output
    layer is ``k`` independent linear layers. The members differ from the first layer
    on: there, TabM scales the *input* of member ``i`` by random signs; here the first
    layer scales its *output* instead (``s_i`` random signs, no ``r``), so the first
    layer's product ``W x`` is one for all members. That product reads the wide one-hot
    input and dominates a step's cost on a CPU (:mod:`mtl_search.packed`), so a TabM of
    ``k`` members costs about one network there, not ``k``. Members train on the mean
    of their losses and predict with the mean of their predictions (probabilities for
    classification, :func:`mtl_search.losses.ensemble_mean`).

A network of ``k`` members takes rows ``(n, D)`` and returns per task ``(k, n)`` or
``(k, n, classes)``: one prediction per member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtl_search.trial import Architecture


class BatchEnsembleLinear(nn.Module):
    """``k`` members sharing one weight matrix: member ``i`` maps ``x_i`` to ``s_i * (W (r_i * x_i)) + b_i``.

    Args:
        inputs, outputs: the layer's sizes.
        members: ``k``.
        first: the layer reading the network's input: no input scaling ``r``, and the output
            scaling ``s`` drawn as random signs (what makes the members differ from the start).

    Takes ``(k, n, inputs)`` (or ``(n, inputs)`` rows every member reads) and returns ``(k, n, outputs)``.
    """

    def __init__(self, inputs: int, outputs: int, members: int, *, first: bool) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(inputs)
        self.weight = nn.Parameter(torch.empty(outputs, inputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, outputs).uniform_(-bound, bound))
        self.r = None if first else nn.Parameter(torch.ones(members, inputs))
        scale = torch.ones(members, outputs)
        if first:
            scale = torch.where(torch.rand(members, outputs) < 0.5, -scale, scale)
        self.s = nn.Parameter(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r is not None:
            x = x * self.r[:, None]
        return (x @ self.weight.t()) * self.s[:, None] + self.bias[:, None]


class LinearEnsemble(nn.Module):
    """``k`` independent linear layers, member ``i`` applied to ``x_i``: ``(k, n, inputs) -> (k, n, outputs)``."""

    def __init__(self, inputs: int, outputs: int, members: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(inputs)
        self.weight = nn.Parameter(torch.empty(members, outputs, inputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None], x, self.weight.transpose(1, 2))


def _task_key(task: str) -> str:
    """The key a task's module or parameter is stored under: ``nn.ModuleDict`` and ``nn.ParameterDict``
    refuse a key that is also one of their attributes, and ``children``, ``train`` or ``values`` are
    fair task names."""
    return f"task_{task}"


class _ByTaskName:
    """Item access by task name for an ``nn.ModuleDict`` or ``nn.ParameterDict`` (stored under :func:`_task_key`)."""

    def __getitem__(self, task: str) -> Any:
        return super().__getitem__(_task_key(task))  # type: ignore[misc]

    def __setitem__(self, task: str, value: Any) -> None:
        super().__setitem__(_task_key(task), value)  # type: ignore[misc]

    def __contains__(self, task: object) -> bool:
        return isinstance(task, str) and super().__contains__(_task_key(task))  # type: ignore[misc]


class TaskModules(_ByTaskName, nn.ModuleDict):
    """Modules by task name, any task name."""


class TaskParameters(_ByTaskName, nn.ParameterDict):
    """Parameters by task name, any task name."""


def _hidden_stack(inputs: int, sizes: Sequence[int], architecture: Architecture, *, first: bool) -> nn.Sequential:
    """``Linear -> ReLU [-> Dropout]`` layers of ``sizes``; ``first``: the stack reads the network's input."""
    layers: list[nn.Module] = []
    for size in sizes:
        if architecture.backbone == "tabm":
            layers.append(BatchEnsembleLinear(inputs, size, architecture.members, first=first))
        else:
            layers.append(nn.Linear(inputs, size))
        layers.append(nn.ReLU())
        if architecture.dropout > 0:
            layers.append(nn.Dropout(architecture.dropout))
        inputs, first = size, False
    return nn.Sequential(*layers)


def _output_layer(inputs: int, units: int, architecture: Architecture) -> nn.Module:
    if architecture.backbone == "tabm":
        return LinearEnsemble(inputs, units, architecture.members)
    return nn.Linear(inputs, units)


class MultiTaskNet(nn.Module):
    """One network for a group of tasks.

    Args:
        num_inputs: encoded feature count.
        outputs: task name -> output units (1 for regression and binary, K for K classes).
        architecture: the network's shape.
    """

    def __init__(self, num_inputs: int, outputs: dict[str, int], architecture: Architecture) -> None:
        super().__init__()
        if not outputs:
            raise ValueError(f"outputs must name at least one task, but got {outputs=}.")
        self.architecture = architecture
        self.task_names = tuple(outputs)
        depth, width = architecture.depth, architecture.width
        shared = architecture.effective_sharing(len(outputs))
        self.sharing_depth = shared
        self.trunk = _hidden_stack(num_inputs, [width] * shared, architecture, first=True)
        trunk_out = width if shared else num_inputs
        branch_out = width if depth > shared else trunk_out
        head_out = architecture.head_sizes[-1] if architecture.head_sizes else branch_out
        self.branches = TaskModules(
            {task: _hidden_stack(trunk_out, [width] * (depth - shared), architecture, first=not shared)
             for task in outputs}
        )
        self.heads = TaskModules(
            {
                task: nn.Sequential(
                    _hidden_stack(branch_out, architecture.head_sizes, architecture, first=False),
                    _output_layer(head_out, units, architecture),
                )
                for task, units in outputs.items()
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs: ``(n,)`` for one unit, ``(n, K)`` for K classes; with TabM's ``k`` members a
        leading ``k`` dimension (one prediction per member)."""
        if self.architecture.backbone == "tabm":
            x = x.expand(self.architecture.members, *x.shape)
        shared = self.trunk(x)
        out = {}
        for task in self.task_names:
            y = self.heads[task](self.branches[task](shared))
            out[task] = y.squeeze(-1) if y.shape[-1] == 1 else y
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss flows through (empty when nothing is shared)."""
        return list(self.trunk.parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
