"""Group losses estimated without training the groups (``grouping.candidates: estimate``). Plain PyTorch.

In the spirit of Grad-TAG (Li, Sharma and Zhang, KDD 2024: estimate the loss of any subset of tasks from
one all-task model by a first-order approximation), from the all-task network of the affinity run
(:func:`mtl_search.affinity.run_all_tasks`, every trunk layer shared, weights ``θ*``):

1. Each task's outputs are linearised in the weights, ``f_t(x; θ* + δ) ≈ f_t(x; θ*) + J_t(x) δ``. With more
   than :data:`MAX_DIMENSIONS` weights, ``J_t`` is multiplied by a fixed random sparse projection (a count
   sketch: each weight adds, with a random sign, into one of that many buckets; it keeps inner products
   in expectation, like Grad-TAG's Gaussian projection of gradients, at the cost of reading ``J_t`` once).
2. Each task's *training* loss is expanded to second order in ``δ`` around 0: its gradient ``g_t`` and its
   Gauss-Newton curvature ``H_t`` (exact for the linearised outputs: the loss's own Hessian in ``δ``).
3. Training a group ``G`` from ``θ*`` on its tasks' mean loss, with a ridge penalty ``λ/2 |δ|²``, then has a
   closed form (one Newton step): ``δ_G(λ) = -(mean_G H_t + λ I)⁻¹ mean_G g_t``.
4. Task ``t``'s estimated loss in ``G`` is its exact loss on the *validation* rows under the linearised
   outputs ``f_t + J_t δ_G(λ)``, divided by its trivial loss (the ``nloss`` trained networks report).
   ``λ`` is chosen per group from a grid scaled to the group's curvature (the value whose mean estimated
   validation loss over the group is lowest), as a search tunes each group's regularisation.

Why it ranks groups: tasks whose gradients and curvature point the same way pool their labels in one step
and generalise better together; a task grouped with unrelated ones gets a share of the step that ignores it
(the mean loss halves its weight against the penalty). Measured on planted tables in docs/benchmarks.md
(rank correlation of estimated and trained group losses, and how often the planted grouping comes first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call, jacrev, vmap

from mtl_search.data import PreparedData
from mtl_search.grouping import TaskValues, group_tasks
from mtl_search.losses import row_losses
from mtl_search.metrics import MULTICLASS
from mtl_search.model import MultiTaskNet
from mtl_search.step import to_device

#: The most dimensions ``δ`` has: a network with more weights is linearised in a random subspace of this size.
#: Measured on the planted 12-task tables (720 weights): a 512-dimensional subspace lost the planted grouping
#: from the estimate's top 5 on one seed of three, the full 720 kept it first or second on all three. An
#: estimate costs one symmetric eigendecomposition of this size (float64: 35 ms at 720, 90 ms at 1,024 on
#: 2 cores).
MAX_DIMENSIONS = 1024
#: The most labelled rows per task and split the estimate reads (a seeded sample beyond it).
MAX_ROWS = 4096
#: Ridge strengths tried per group, in units of the group's mean curvature ``trace(H_G) / dimensions``.
RIDGE_GRID = tuple(float(v) for v in np.logspace(-3, 1, 9))


def _outputs(model: MultiTaskNet, task: str, kind: str, weights: Mapping[str, torch.Tensor],
             x: torch.Tensor) -> torch.Tensor:
    """Task ``task``'s outputs as ``(rows, units)``."""
    out = functional_call(model, dict(weights), (x,))[task]
    return out if kind == MULTICLASS else out[:, None]


def _loss(kind: str, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss over rows of ``(rows, units, *batch)`` outputs: one value per trailing batch entry."""
    if kind == MULTICLASS:
        log_p = torch.log_softmax(outputs, dim=1)
        index = y.long().reshape(-1, 1, *([1] * (outputs.dim() - 2))).expand(-1, 1, *outputs.shape[2:])
        return -log_p.gather(1, index).squeeze(1).mean(dim=0)
    target = y.reshape(-1, *([1] * (outputs.dim() - 2)))
    return row_losses(kind, outputs[:, 0], target.expand_as(outputs[:, 0])).mean(dim=0)


def _expand(kind: str, base: torch.Tensor, jac: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian at ``δ = 0`` of the mean loss of the linearised outputs ``base + jac @ δ``:
    ``mean_r J_rᵀ ℓ'(z_r)`` and ``mean_r J_rᵀ ℓ''(z_r) J_r`` (exact, as the outputs are linear in ``δ``), with
    each row's output derivatives (``units`` of them) from autograd and one matrix product for the sum."""
    rows, units, dimensions = jac.shape
    if rows == 0:
        return jac.new_zeros(dimensions), jac.new_zeros(dimensions, dimensions)

    def row_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _loss(kind, outputs[None], target[None])

    first = vmap(torch.func.grad(row_loss))(base, y)  # rows x units
    second = vmap(torch.func.hessian(row_loss))(base, y)  # rows x units x units
    gradient = torch.einsum("ru,rud->d", first, jac) / rows
    weighted = torch.einsum("ruv,rvd->rud", second, jac)
    curvature = jac.reshape(-1, dimensions).T @ weighted.reshape(-1, dimensions) / rows
    return gradient, curvature


class _CountSketch:
    """A fixed random map of the last axis from ``count`` to ``dimensions``: weight ``i`` adds ``sign[i]``
    times its value into bucket ``bucket[i]``."""

    def __init__(self, count: int, dimensions: int, generator: torch.Generator, device: torch.device) -> None:
        self.dimensions = dimensions
        self.bucket = torch.randint(dimensions, (count,), generator=generator).to(device)
        self.sign = (torch.randint(2, (count,), generator=generator) * 2 - 1).float().to(device)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(*values.shape[:-1], self.dimensions)
        return out.index_add_(values.dim() - 1, self.bucket, values * self.sign)


class GroupLossEstimator(Mapping[str, Mapping[str, float]]):
    """Estimated validation ``nloss`` of each task of any group, from one all-task network (module docstring).

    A mapping from group id to task to estimate that computes each group on first lookup
    (``estimator["a0+a1"]``) and caches it; iterating lists the groups estimated so far.

    Args:
        model: the trained all-task network (its tasks' heads and the shared trunk).
        data: the prepared data, encoded as the network was trained.
        tasks: the tasks to estimate (each must have a head in ``model``).
        device: where to compute.
        seed: seeds the row samples and the random projection.
        chunk: rows per Jacobian batch (memory: ``chunk x units x weights`` floats).
    """

    def __init__(self, model: MultiTaskNet, data: PreparedData, tasks: Sequence[str], *,
                 device: str | torch.device = "cpu", seed: int = 0, chunk: int | None = None) -> None:
        device = torch.device(device)
        weights = {name: p.detach() for name, p in model.named_parameters()}
        count = sum(p.numel() for p in weights.values())
        generator = torch.Generator().manual_seed(seed)
        self.dimensions = min(count, MAX_DIMENSIONS)
        projection = None if count <= MAX_DIMENSIONS else _CountSketch(count, MAX_DIMENSIONS, generator, device)
        self.tasks = list(tasks)
        self.kinds = {t: data.tasks[t].type for t in tasks}
        self._trivial = {t: data.splits["valid"].trivial_loss[t] for t in tasks}
        self._gradient: dict[str, torch.Tensor] = {}
        self._curvature: dict[str, torch.Tensor] = {}
        self._valid: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        splits = {name: to_device(data.splits[name], self.tasks, device) for name in ("train", "valid")}
        for task in self.tasks:
            units = data.tasks[task].outputs
            rows_per_chunk = chunk or max(1, 2**24 // max(1, units * count))
            for name, split in splits.items():
                rows = split.mask[task].nonzero().squeeze(1)
                if len(rows) > MAX_ROWS:
                    rows = rows[torch.randperm(len(rows), generator=generator)[:MAX_ROWS].to(rows.device)]
                x, y = split.x[rows], split.y[task][rows]
                base, jac = self._linearise(model, task, weights, x, projection, rows_per_chunk)
                if name == "valid":
                    self._valid[task] = (base, jac, y)
                    continue

                self._gradient[task], self._curvature[task] = _expand(self.kinds[task], base, jac, y)
        self._grid = torch.tensor(RIDGE_GRID, device=device, dtype=torch.float64)
        self._cache: dict[str, dict[str, float]] = {}

    def _linearise(self, model: MultiTaskNet, task: str, weights: Mapping[str, torch.Tensor], x: torch.Tensor,
                   projection: _CountSketch | None, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs ``(rows, units)`` at ``θ*`` and their Jacobian ``(rows, units, dimensions)``."""
        kind = self.kinds[task]

        def one_row(w: Mapping[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            return _outputs(model, task, kind, w, row[None])[0]

        with torch.no_grad():
            base = _outputs(model, task, kind, weights, x)
        parts = []
        for start in range(0, len(x), chunk):
            jac = vmap(jacrev(one_row), in_dims=(None, 0))(weights, x[start:start + chunk])
            flat = torch.cat([jac[name].reshape(*jac[name].shape[:2], -1) for name in weights], dim=2)
            parts.append(flat if projection is None else projection(flat))
        jacobian = torch.cat(parts) if parts else torch.zeros(0, base.shape[1], self.dimensions, device=x.device)
        return base, jacobian

    def estimate(self, group: str) -> dict[str, float]:
        """Each task of ``group``: its estimated validation nloss when the group trains together."""
        if group not in self._cache:
            members = group_tasks(group)
            unknown = sorted(set(members) - set(self.tasks))
            if unknown:
                raise ValueError(f"no estimate for task(s) {unknown}; known: {', '.join(self.tasks)}")
            self._cache[group] = self._estimate(members)
        return self._cache[group]

    @torch.no_grad()
    def _estimate(self, members: Sequence[str]) -> dict[str, float]:
        gradient = torch.stack([self._gradient[t] for t in members]).mean(dim=0).double()
        curvature = torch.stack([self._curvature[t] for t in members]).mean(dim=0).double()
        curvature = (curvature + curvature.T) / 2  # float32 LAPACK fails on the heads' exact zeros; float64 does not
        scale = torch.diagonal(curvature).mean().clamp_min(1e-12)
        values, vectors = torch.linalg.eigh(curvature)
        # Every ridge strength at once: δ(λ) = -Q (Qᵀg / (Λ + λ)), one column per λ.
        steps = (-vectors @ ((vectors.T @ gradient)[:, None] / (values.clamp_min(0)[:, None] + scale * self._grid))
                 ).float()
        losses = torch.stack([_loss(self.kinds[t], self._valid[t][0][..., None] + self._valid[t][1] @ steps,
                                    self._valid[t][2]) / self._trivial[t] for t in members])  # tasks x λ
        best = int(torch.argmin(losses.mean(dim=0)))
        return {t: float(losses[i, best]) for i, t in enumerate(members)}

    def __getitem__(self, group: str) -> dict[str, float]:
        return self.estimate(group)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cache))

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def estimates(self) -> dict[str, dict[str, float]]:
        """Every group estimated so far: group id -> task -> estimated validation nloss."""
        return dict(self._cache)


def rank_agreement(estimates: TaskValues, trained: TaskValues) -> float:
    """How well estimates order groups: per task, the Spearman correlation between the estimated and the
    trained validation losses of the groups that hold it (trained groups with a finite loss and an estimate),
    averaged over tasks with at least three such groups; NaN when no task has three."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for group, losses in trained.items():
        for task, value in losses.items():
            guess = estimates.get(group, {}).get(task)
            if guess is not None and np.isfinite(value) and np.isfinite(guess):
                pairs.setdefault(task, []).append((guess, value))
    correlations = [float(pd.DataFrame(values).corr(method="spearman").iloc[0, 1]) for values in pairs.values()
                    if len(values) >= 3]
    correlations = [c for c in correlations if np.isfinite(c)]
    return float(np.mean(correlations)) if correlations else math.nan
