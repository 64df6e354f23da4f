"""IMTL-G, impartial gradient balancing (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards
Impartial Multi-task Learning", ICLR 2021)."""

from __future__ import annotations

import numpy as np
import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import GramWeighting


class IMTL(GramWeighting):
    """The shared update whose projections on every task's unit gradient are equal (IMTL-G).

    With ``u_i = g_i / |g_i|``, IMTL-G finds ``alpha`` with ``sum_i alpha_i = 1`` such that
    ``d = sum_i alpha_i g_i`` has ``d . u_1 = d . u_i`` for every task: no task's
    direction is favoured, whatever the gradients' sizes. In closed form, with
    ``D`` the rows ``g_1 - g_i`` and ``U`` the rows ``u_1 - u_i`` (``i = 2..T``),
    ``alpha_{2..T} = g_1 U^T (D U^T)^{-1}`` and ``alpha_1 = 1 - sum alpha_{2..T}``;
    computed here from the ``T x T`` Gram matrix. The gradients are those of the
    shared parameters (the paper also allows the shared representation).

    The update is returned on the scale of ``equal``: ``weight/<task>`` logs
    ``w = T * alpha``, which sum to ``T``. Tasks whose gradient is zero in a step
    get weight 0; if the system is singular (parallel gradients) the least-squares
    solution is used. Task-specific layers train on the plain sum of the losses
    (the paper's loss-scale part, IMTL-L, is not included). No hyperparameters.
    """

    scheme = SCHEMES["imtl"]

    def coefficients(self, group: int, products: torch.Tensor) -> torch.Tensor:
        """``T * alpha`` from group ``group``'s Gram matrix ``G G^T`` (float64)."""
        dots = products.numpy()
        tasks = dots.shape[0]
        norms = np.sqrt(np.maximum(dots.diagonal(), 0.0))
        active = np.nonzero(norms > 1e-12 * max(float(norms.max()), 1e-300))[0]
        alpha = np.zeros(tasks)
        if active.size == 1:
            alpha[active] = 1.0
        elif active.size > 1:
            alpha[active] = impartial_alpha(dots[np.ix_(active, active)], norms[active])
        if not np.all(np.isfinite(alpha)):
            alpha = np.full(tasks, 1.0 / tasks)
        return torch.from_numpy(tasks * alpha)



def impartial_alpha(dots: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """IMTL-G's ``alpha`` (summing to 1) from the Gram matrix of non-zero gradients and their norms."""
    to_units = dots / norms[None, :]  # [i, j] = g_i . u_j
    first_u = to_units[0, 0] - to_units[0, 1:]  # g_1 . (u_1 - u_j)
    # [j, k] = (g_1 - g_j) . (u_1 - u_k), for j, k = 2..T
    system = (to_units[0, 0] - to_units[0, 1:][None, :]) - (to_units[1:, 0][:, None] - to_units[1:, 1:])
    # alpha_rest (a row) solves alpha_rest @ system = first_u
    rest = np.linalg.lstsq(system.T, first_u, rcond=None)[0]
    return np.concatenate([[1.0 - rest.sum()], rest])
