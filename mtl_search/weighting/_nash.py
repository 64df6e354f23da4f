"""Nash-MTL, multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron, Kawaguchi,
Chechik & Fetaya, "Multi-Task Learning as a Bargaining Game", ICML 2022)."""

from __future__ import annotations

import numpy as np
import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import GramWeighting


class NashMTL(GramWeighting):
    """The Nash bargaining solution: ``d = sum_i alpha_i g_i`` with ``(G G^T) alpha = 1 / alpha``.

    ``alpha > 0`` is the unique minimiser of the strictly convex
    ``F(alpha) = 0.5 alpha^T M alpha - sum_i log alpha_i`` (its gradient vanishes exactly
    when ``M alpha = 1 / alpha``), found by a damped Newton method on the ``T x T``
    problem instead of the paper's sequence of convex programs, so no solver
    dependency. As in the authors' implementation, ``M = G G^T`` is divided by its
    Frobenius norm first (``alpha`` then does not depend on the gradients' scale)
    and the task-specific layers train on ``sum_i alpha_i L_i``.

    ``weight/<task>`` logs ``alpha``; the weights do not sum to a fixed value (for
    ``T`` orthogonal gradients of equal size each is ``T^(1/4)``). When no
    bargaining solution exists (e.g. two exactly opposite gradients) or a task's
    gradient is zero, the affected weights keep their previous values (zero for a
    zero gradient). No hyperparameters. Not implemented: the paper's
    ``update_weights_every`` and gradient-norm clipping.
    """

    scheme = SCHEMES["nash_mtl"]
    #: Newton iterations per step (at most) and the relative residual that ends them.
    max_iterations = 50
    tolerance = 1e-8

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self._weights * self.held(losses)).sum()

    def coefficients(self, group: int, products: torch.Tensor) -> torch.Tensor:
        """``alpha`` from group ``group``'s Gram matrix ``G G^T`` (float64); the previous weights where unsolvable."""
        dots = products.numpy()
        alpha = self._weights[group, self.members(group)].cpu().double().numpy().copy()
        scale = float(np.linalg.norm(dots))
        if scale == 0.0:
            return torch.from_numpy(alpha)
        dots = dots / scale
        active = np.nonzero(dots.diagonal() > 1e-12)[0]
        alpha[np.setdiff1d(np.arange(dots.shape[0]), active)] = 0.0
        solved = bargaining_solution(dots[np.ix_(active, active)], self.max_iterations, self.tolerance)
        if solved is not None:
            alpha[active] = solved
        return torch.from_numpy(alpha)



def bargaining_solution(dots: np.ndarray, max_iterations: int = 50, tolerance: float = 1e-8) -> np.ndarray | None:
    """``alpha > 0`` with ``dots @ alpha = 1 / alpha``, or None when Newton does not converge.

    Damped Newton on ``F(alpha) = 0.5 alpha^T dots alpha - sum log alpha``, starting from
    ``1 / sqrt(diag(dots))`` (the solution when the gradients are orthogonal).
    """
    if dots.shape[0] == 0:
        return np.zeros(0)

    def objective(alpha: np.ndarray) -> float:
        return 0.5 * float(alpha @ dots @ alpha) - float(np.log(alpha).sum())

    alpha = 1.0 / np.sqrt(dots.diagonal())
    value = objective(alpha)
    for _ in range(max_iterations):
        gradient = dots @ alpha - 1.0 / alpha
        residual = float(np.abs(gradient * alpha).max())  # relative residual of alpha_i (M alpha)_i = 1
        if residual < tolerance:
            return alpha
        hessian = dots + np.diag(1.0 / alpha**2)
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return None
        size = 1.0
        while True:
            candidate = alpha - size * step
            if np.all(candidate > 0):
                new_value = objective(candidate)
                # (slack for rounding: close to the solution F changes by less than its last digits)
                if new_value <= value - 1e-4 * size * float(gradient @ step) + 1e-12 * abs(value):
                    break
            size /= 2
            if size < 1e-12:  # no descent left: solved up to rounding, or F is unbounded (no solution)
                return alpha if residual < 1e-6 else None
        alpha, value = candidate, new_value
    return None
