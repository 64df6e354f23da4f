"""The multi-task network: a shared trunk, per-task branches and per-task heads.

::

    x -> trunk (sharing_depth layers, shared) -> branch_t (depth - sharing_depth layers)
      -> head_t (head_sizes hidden layers) -> output_t

Hidden layers are ``Linear -> ReLU [-> Dropout]`` of ``width`` units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl_search.trial import Architecture


def _hidden_stack(inputs: int, sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(inputs, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        inputs = size
    return nn.Sequential(*layers)


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
        depth, width, dropout = architecture.depth, architecture.width, architecture.dropout
        shared = architecture.effective_sharing(len(outputs))
        self.sharing_depth = shared
        self.trunk = _hidden_stack(num_inputs, [width] * shared, dropout)
        trunk_out = width if shared else num_inputs
        branch_out = width if depth > shared else trunk_out
        head_out = architecture.head_sizes[-1] if architecture.head_sizes else branch_out
        self.branches = nn.ModuleDict(
            {task: _hidden_stack(trunk_out, [width] * (depth - shared), dropout) for task in outputs}
        )
        self.heads = nn.ModuleDict(
            {
                task: nn.Sequential(
                    _hidden_stack(branch_out, architecture.head_sizes, dropout),
                    nn.Linear(head_out, units),
                )
                for task, units in outputs.items()
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs: shape ``(n,)`` for one unit, ``(n, K)`` for K classes."""
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
