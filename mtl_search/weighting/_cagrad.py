"""Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent
for Multi-task Learning", NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import GramWeighting


class CAGrad(GramWeighting):
    """The shared update that most improves a group's worst task, within a ball around the average gradient.

    With ``g_0`` the average task gradient, CAGrad takes
    ``d = argmax_d min_i g_i . d`` subject to ``|d - g_0| <= c |g_0|``. Through its
    dual, ``w* = argmin_{w in simplex} g_w . g_0 + c |g_0| |g_w|`` with
    ``g_w = sum_i w_i g_i``, and ``d = g_0 + (c |g_0| / |g_w*|) g_w*``. The dual is
    solved on the ``T x T`` Gram matrix by projected gradient descent, warm-started
    from the previous step's ``w*``.

    The update is returned on the scale of ``equal`` (times ``T``), so ``c = 0`` gives
    ``T g_0 = sum_i g_i``, plain equal weighting; the paper's optional rescaling by
    ``1 / (1 + c^2)`` is left out (AdamW is insensitive to it).
    ``weight/<task>`` logs the coefficients ``w_k = 1 + T (c |g_0| / |g_w*|) w*_k``
    of ``d = sum_k w_k g_k``. Task-specific layers train on the plain sum of the losses.

    Hyperparameters:
        c: radius of the ball, relative to ``|g_0|``, in ``[0, 1)`` (the paper's convergence
            guarantee needs ``c < 1``). Default 0.4 (the paper's setting for NYUv2 and Cityscapes).
    """

    scheme = SCHEMES["cagrad"]
    #: Projected-gradient iterations of the dual per step (at most), and the change that ends them early.
    max_iterations = 100
    tolerance = 1e-9

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *, seed: int = 0,
                 c: float = 0.4) -> None:
        super().__init__(tasks, groups, seed=seed)
        self.scheme.check({"c": c})
        self.c = float(c)
        dual = self.membership.to(torch.float64) / self.membership.sum(dim=1, keepdim=True)
        self.register_buffer("_dual", dual)  # each group's last w*, on its tasks

    def coefficients(self, group: int, products: torch.Tensor) -> torch.Tensor:
        """``w`` with ``d = sum_k w_k g_k`` (scale of ``equal``), from group ``group``'s Gram matrix (float64)."""
        tasks = products.shape[0]
        members = self.members(group)
        # Plain Python floats: for a T x T problem they cost less than NumPy's or torch's per-call overhead.
        dots = products.tolist()
        mean_dots = [sum(row) / tasks for row in dots]  # g_i . g_0
        radius = self.c * math.sqrt(max(sum(mean_dots) / tasks, 0.0))  # c |g_0|
        if radius == 0.0:
            return torch.ones(tasks, dtype=products.dtype)
        dual = solve_dual(dots, mean_dots, radius, self._dual[group, members].tolist(), self.max_iterations,
                          self.tolerance)
        self._dual[group, members] = torch.tensor(dual, dtype=torch.float64, device=self._dual.device)
        norm = math.sqrt(max(_quadratic(dots, dual), 0.0))  # |g_w|
        if norm == 0.0:  # a combination of the gradients cancels: no conflict-averse direction to add
            return torch.ones(tasks, dtype=products.dtype)
        return 1.0 + tasks * (radius / norm) * torch.tensor(dual, dtype=products.dtype)



Vector = list[float]


def _quadratic(dots: list[Vector], w: Vector) -> float:
    return sum(w[i] * dots[i][k] * w[k] for i in range(len(w)) for k in range(len(w)))


def _objective(dots: list[Vector], mean_dots: Vector, radius: float, w: Vector) -> tuple[float, Vector]:
    """``g_w . g_0 + radius |g_w|`` and its gradient in ``w``."""
    dots_w = [sum(row[k] * w[k] for k in range(len(w))) for row in dots]
    norm = math.sqrt(max(sum(a * b for a, b in zip(w, dots_w, strict=True)), 1e-30))
    value = sum(a * b for a, b in zip(w, mean_dots, strict=True)) + radius * norm
    return value, [m + radius * d / norm for m, d in zip(mean_dots, dots_w, strict=True)]


def solve_dual(dots: list[Vector], mean_dots: Vector, radius: float, start: Vector, max_iterations: int,
               tolerance: float) -> Vector:
    """Minimise the CAGrad dual over the simplex: projected gradient descent with backtracking.

    Args:
        dots: the Gram matrix ``G G^T``; ``mean_dots``: ``g_i . g_0``; ``radius``: ``c |g_0|``;
        start: the first iterate (projected onto the simplex first).
    """
    w = project_to_simplex(start)
    value, grad = _objective(dots, mean_dots, radius, w)
    step = 1.0 / max(max(dots[i][i] for i in range(len(w))), 1e-30)
    for _ in range(max_iterations):
        while True:
            candidate = project_to_simplex([x - step * g for x, g in zip(w, grad, strict=True)])
            change = [c - x for c, x in zip(candidate, w, strict=True)]
            new_value, new_grad = _objective(dots, mean_dots, radius, candidate)
            bound = (value + sum(g * d for g, d in zip(grad, change, strict=True))
                     + sum(d * d for d in change) / (2 * step))
            if new_value <= bound or step < 1e-30:  # sufficient decrease (the gradient step's quadratic bound)
                break
            step /= 2
        w, value, grad = candidate, new_value, new_grad
        step *= 2  # let the step grow back after backtracking
        if max(abs(d) for d in change) < tolerance:
            break
    return w


def project_to_simplex(v: Vector) -> Vector:
    """The Euclidean projection of ``v`` onto ``{w >= 0, sum w = 1}`` (sort-based)."""
    total, shift = 0.0, 0.0
    for rank, value in enumerate(sorted(v, reverse=True), start=1):
        total += value
        if value - (total - 1.0) / rank > 0:
            shift = (total - 1.0) / rank
    return [max(x - shift, 0.0) for x in v]
