"""PCGrad, gradient surgery (Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020)."""

from __future__ import annotations

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import GramWeighting


class PCGrad(GramWeighting):
    """Projects away the conflicting part of each task's gradient of a group's shared layers.

    For each task ``i``, starting from ``g_i' = g_i``, and for each other task
    ``j`` in a random order: if ``g_i' . g_j < 0`` (the gradients conflict),
    ``g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j`` (the projection onto the normal
    plane of ``g_j``). The shared update is ``sum_i g_i'``; non-conflicting
    gradients are left alone, so without conflict PCGrad is ``equal``.

    Every ``g_i'`` is a combination of the original gradients, so the surgery runs
    on the ``T x T`` Gram matrix and the update is ``sum_k w_k g_k`` exactly;
    ``weight/<task>`` logs these ``w_k`` (1 each without conflict, lower for a
    task whose gradient others' projections removed). Task-specific layers train
    on the plain sum of the losses. The random order comes from the group's
    generator, seeded with the trial's seed. No hyperparameters.
    """

    scheme = SCHEMES["pcgrad"]

    def coefficients(self, group: int, products: torch.Tensor) -> torch.Tensor:
        """The update's weights: ``sum_i g_i' = sum_k (sum_i C[i, k]) g_k``."""
        return self.projections(group, products).sum(dim=0)

    def projections(self, group: int, products: torch.Tensor) -> torch.Tensor:
        """``C`` with ``g_i' = sum_k C[i, k] g_k``, from the Gram matrix ``products = G G^T`` of group ``group``."""
        tasks = products.shape[0]
        # Plain Python floats: T is small, and per-element torch calls would cost more than the maths.
        dots = products.tolist()
        coefficients = [[float(i == k) for k in range(tasks)] for i in range(tasks)]
        for i in range(tasks):
            row = coefficients[i]
            for j in torch.randperm(tasks, generator=self.generators[group]).tolist():
                if j == i or dots[j][j] <= 0:
                    continue
                dot = sum(row[k] * dots[k][j] for k in range(tasks))  # g_i' . g_j
                if dot < 0:
                    row[j] -= dot / dots[j][j]
        return torch.tensor(coefficients, dtype=products.dtype)
