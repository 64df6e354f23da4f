"""Inter-task affinity by lookahead, measured in one all-task training run. Plain PyTorch, no Ray.

Fifty et al. 2021, "Efficiently Identifying Task Groupings for Multi-Task
Learning" (NeurIPS): while one network with a fully shared trunk trains on all
tasks, every few steps and for each task i, take one gradient step on task i's
loss alone in the shared parameters and see how every task's loss on the same
batch changes:

    Z(i -> j) = 1 - L_j(shared - lr * grad_shared L_i) / L_j(shared)

Positive means a step for task i also helps task j. ``Z`` is averaged over the
measured steps (pairs with no labelled rows for j in a batch are skipped).

mtl_search then divides each column by its diagonal, ``Z(i -> j) / Z(j -> j)``:
the share of task j's own-step improvement that a step on task i gives it. Raw
values scale with each task's loss and gradient size (a regression task's can be
ten times a binary task's), so without this a grouping score is dominated by
whichever tasks have the largest losses. On planted-cluster data the normalised
matrix puts the planted grouping in the top two groupings on every seed tried,
the raw one did not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from mtl_search.data import PreparedData
from mtl_search.losses import masked_loss
from mtl_search.model import MultiTaskNet
from mtl_search.step import to_device
from mtl_search.trial import Architecture, TrialParams


@dataclass
class AllTaskRun:
    """What the all-task measuring run leaves: the affinity matrix and the trained network (every trunk
    layer shared), which :mod:`mtl_search.estimate` linearises."""

    affinity: np.ndarray
    model: MultiTaskNet


def run_all_tasks(
    data: PreparedData,
    tasks: Sequence[str],
    params: TrialParams,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    every: int = 5,
    lookahead_lr: float | None = None,
    normalise: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AllTaskRun:
    """Train one all-task network, measuring the ``T x T`` lookahead affinity matrix as it trains.

    Args:
        data: prepared arrays.
        tasks: the tasks, in matrix order (row = the task whose step is taken).
        params: network shape and optimiser settings; every trunk layer is shared.
        device: where to train.
        seed: seeds initialisation and batch order.
        every: measure on every ``every``-th step (the measurement costs about
            ``T`` extra backward and forward passes).
        lookahead_lr: step size of the lookahead (default: ``params.lr``).
        normalise: divide each column by its diagonal (see the module docstring).
        progress: called after each epoch with (epoch, epochs).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, but got {every=}.")
    device = torch.device(device)
    torch.manual_seed(seed)
    data = data.encoded(params.numeric_encoding)
    info = {t: data.tasks[t] for t in tasks}
    architecture = Architecture(params.depth, params.depth, params.width, params.head_sizes, params.dropout)
    model = MultiTaskNet(data.num_features, {t: i.outputs for t, i in info.items()}, architecture).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    step_size = params.lr if lookahead_lr is None else lookahead_lr
    generator = torch.Generator(device=device).manual_seed(seed)
    train = to_device(data.splits["train"], tasks, device)
    x, y, mask = train.x, train.y, train.mask
    shared = dict(model.trunk.named_parameters(prefix="trunk"))
    count = len(tasks)
    totals = torch.zeros(count, count, device=device)
    counts = torch.zeros(count, count, device=device)

    def losses_of(outputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        return torch.stack([masked_loss(info[t].type, outputs[t], y[t][index], mask[t][index]) for t in tasks])

    step = 0
    for epoch in range(params.epochs):
        model.train()
        order = torch.randperm(x.shape[0], generator=generator, device=device)
        for start in range(0, x.shape[0], params.batch_size):
            index = order[start:start + params.batch_size]
            losses = losses_of(model(x[index]), index)
            if step % every == 0 and shared:
                _accumulate(model, shared, losses, lambda out, index=index: losses_of(out, index), x[index],
                            step_size, totals, counts)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            step += 1
        if progress is not None:
            progress(epoch + 1, params.epochs)
    affinity = (totals / counts.clamp_min(1)).cpu().numpy().astype(np.float64)
    affinity[counts.cpu().numpy() == 0] = math.nan
    if normalise:
        own = np.diag(affinity).copy()
        # A task whose own step does not lower its loss has no scale to compare against.
        affinity = np.where(own[None, :] > 0, affinity / np.where(own > 0, own, 1.0)[None, :], math.nan)
    return AllTaskRun(affinity, model.eval())


def _accumulate(
    model: MultiTaskNet,
    shared: dict[str, torch.nn.Parameter],
    losses: torch.Tensor,
    losses_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batch: torch.Tensor,
    step_size: float,
    totals: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Add one step's ``1 - L_j(after a step on i) / L_j(before)`` for every pair (i, j)."""
    names, tensors = list(shared), list(shared.values())
    before = losses.detach()
    valid_target = before > 0  # a task with no labelled row in this batch has loss 0: nothing to compare
    for i in range(losses.shape[0]):
        if not valid_target[i]:
            continue
        grads = torch.autograd.grad(losses[i], tensors, retain_graph=True, allow_unused=True)
        with torch.no_grad():
            moved = {name: tensor - step_size * grad if grad is not None else tensor
                     for name, tensor, grad in zip(names, tensors, grads, strict=True)}
            after = losses_of(functional_call(model, moved, (batch,), strict=False))
        ratio = torch.where(valid_target, 1 - after / before.clamp_min(1e-12), torch.zeros_like(after))
        totals[i] += ratio
        counts[i] += valid_target.to(counts.dtype)
