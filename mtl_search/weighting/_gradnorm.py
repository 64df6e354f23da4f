"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting._base import SharedGradients, Weighting, combination


class GradNorm(Weighting):
    """Learns loss weights that balance the tasks' gradient norms by their training rates.

    Per group, with ``W`` the last shared layer's weight matrix, ``G_i = |grad_W w_i L_i|``,
    ``G_bar`` their mean, ``L~_i = L_i(t) / L_i(0)`` (the first step's loss) and
    ``r_i = L~_i / mean_j L~_j`` (the relative inverse training rate: higher for a
    task that trains slower), the target norm is ``G_bar * r_i^alpha``, taken as a
    constant, and the weights descend ``L_grad = sum_i |G_i - G_bar r_i^alpha|``.
    After each update the weights are renormalised to sum to ``T`` (the paper's
    ``sum w_i = T``). A slower task's weight therefore grows.

    The network itself trains on ``sum_i w_i L_i`` with this step's weights (the
    weights are *not* trained by the task loss, which would only shrink them): the
    shared update is ``sum_i w_i g_i`` and ``weight/<task>`` logs ``w``. The weights
    take a plain gradient step of size ``lr`` on ``L_grad / G_bar`` (dividing by the
    constant ``G_bar`` makes the step independent of the gradients' scale, so one
    ``lr`` suits every network); they are kept positive (clamped at ``1e-3`` before
    renormalising). A group that shares no layer keeps weights 1.

    Hyperparameters:
        alpha: asymmetry ``alpha >= 0``: 0 pulls all gradient norms together, larger values
            favour slow tasks more. Default 1.5 (the paper's NYUv2 setting).
        lr: step size of the weights. Default 0.025.
    """

    scheme = SCHEMES["gradnorm"]
    min_weight = 1e-3

    def __init__(self, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *, seed: int = 0,
                 alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks, groups, seed=seed)
        self.scheme.check({"alpha": alpha, "lr": lr})
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.register_buffer("_weights", self.plain_weights())  # for the next step
        self.register_buffer("_used", self.plain_weights())  # this step's
        self.register_buffer("_initial_losses", torch.ones(self.num_groups, self.num_tasks))
        self._started = False

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self._used * self.held(losses)).sum()

    def weights(self) -> torch.Tensor:
        return self._used.clone()

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        rows = gradients.groups.to(self._weights.device)
        losses = losses.detach().to(self._weights)[rows]
        if not self._started:
            self._initial_losses[rows] = losses.clamp_min(1e-12)
            self._started = True
        self._used.copy_(self._weights)
        norms = gradients.flat[:, :, gradients.last_layer].norm(dim=2).to(self._weights)
        self.update(rows, losses, norms)
        return combination(self._used[rows], gradients.flat)

    def update(self, rows: torch.Tensor, losses: torch.Tensor, gradient_norms: torch.Tensor) -> None:
        """One GradNorm step of the weights of groups ``rows`` from their losses and ``|grad_W L_i|`` (unweighted)."""
        held = self.membership[rows]
        count = held.sum(dim=1, keepdim=True)
        weights = self._weights[rows]
        weighted = weights * gradient_norms  # G_i
        mean = (weighted * held).sum(dim=1, keepdim=True).div(count).clamp_min(1e-12)
        ratios = torch.where(held, losses / self._initial_losses[rows], torch.zeros_like(losses))
        target = mean * (ratios / ratios.sum(dim=1, keepdim=True).div(count).clamp_min(1e-12)) ** self.alpha
        grad = torch.sign(weighted - target) * gradient_norms / mean
        updated = torch.where(held, (weights - self.lr * grad).clamp_min(self.min_weight), torch.zeros_like(weights))
        self._weights[rows] = count * updated / updated.sum(dim=1, keepdim=True)

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "started": self._started}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self._started = bool(state["started"])
