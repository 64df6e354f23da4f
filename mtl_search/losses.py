"""Task losses on tensors (PyTorch): what the networks train on and are selected by.

Per task: squared error on the standardised target (regression), binary
cross-entropy with logits (binary), cross-entropy (multiclass), each the mean
over the rows whose label is present (a task with no labelled row in a batch
has loss 0). :mod:`mtl_search.metrics` computes the same losses in NumPy for reporting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mtl_search.metrics import BINARY, MULTICLASS, REGRESSION, unknown_task_type

if TYPE_CHECKING:
    from mtl_search.packed import PackedNet


def row_losses(kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Every row's loss for one task (float32 outputs; class ids as integers or floats)."""
    if kind == REGRESSION:
        return (output - target) ** 2
    if kind == BINARY:
        return F.binary_cross_entropy_with_logits(output, target, reduction="none")
    if kind == MULTICLASS:
        return F.cross_entropy(output, target.long(), reduction="none")
    raise ValueError(unknown_task_type(kind))


def masked_loss(kind: str, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean loss over the rows whose label is present (0 when none is)."""
    per_row = row_losses(kind, output, target)
    weight = mask.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)


def batch_losses(kinds: Sequence[str], outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 label_weights: torch.Tensor) -> torch.Tensor:
    """Every task's masked mean loss on one batch, as :func:`masked_loss` computes it.

    The per-row losses of all tasks are stacked ``[tasks, rows]`` and masked, summed
    and divided in three ops for all tasks together (per row and per task the same
    arithmetic, and for a batch the same reduction order, so the same numbers).
    Outputs are cast to float32 first, so a bf16 forward pass still gives float32 losses.

    Args:
        kinds: each task's type, in order.
        outputs: each task's network output for the batch.
        targets: ``[tasks, rows]`` labels (class ids as floats).
        label_weights: ``[tasks, rows]``, 1 where a task's label is present, else 0.
    """
    rows = [row_losses(kind, output.float(), target) for kind, output, target in zip(kinds, outputs, targets,
                                                                                     strict=True)]
    return (torch.stack(rows) * label_weights).sum(dim=1) / label_weights.sum(dim=1).clamp_min(1.0)


def pack_losses(net: PackedNet, kinds: Sequence[str], outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                label_weights: torch.Tensor) -> torch.Tensor:
    """The ``(G, T)`` loss matrix of a pack on one batch: entry ``(g, t)`` is group ``g``'s masked mean loss on
    task ``t`` (0 where ``g`` does not hold ``t``), computed per task for all groups holding it at once.

    Per group the arithmetic is :func:`batch_losses`' (float32 even under bf16), so a group's losses are those
    of its separate network.

    Args:
        net: the pack (its tasks, the groups holding each, where each loss goes).
        kinds: each of ``net.tasks``' type.
        outputs: ``net``'s outputs, per task ``(G_t, units, m*B)``: ``m`` = 1, or a TabM pack's members, each
            member's ``B`` columns in turn; each member's loss counts ``1/m`` (TabM trains on their mean).
        targets: ``[T, B]`` labels (class ids as floats).
        label_weights: ``[T, B]``, 1 where a task's label is present, else 0.
    """
    per_task = []
    members = outputs[0].shape[-1] // max(1, targets.shape[1]) if outputs else 1
    if members > 1:
        targets, label_weights = targets.repeat(1, members), label_weights.repeat(1, members)
    for index, (kind, output) in enumerate(zip(kinds, outputs, strict=True)):
        output = output.float()
        target = targets[index].expand(output.shape[0], -1)
        rows = row_losses(kind, output if kind == MULTICLASS else output[:, 0], target)  # (G_t, m*B)
        weights = label_weights[index]
        per_task.append((rows * weights).sum(dim=1) / weights.sum().clamp_min(1.0))
    values = torch.cat(per_task)
    matrix = values.new_zeros(len(net.groups), len(net.tasks))
    return matrix.index_put((net.loss_rows, net.loss_columns), values)


def ensemble_mean(kind: str, output: torch.Tensor, members: int) -> torch.Tensor:
    """One prediction from ``members`` members' outputs ``(..., units, members*N)`` (each member's ``N`` columns
    in turn): ``(..., units, N)`` in the outputs' own space.

    Regression: the mean value. Binary: the logit of the mean probability. Multiclass: the log of the mean
    class probabilities (scores a softmax maps back to that mean). The probabilities are averaged, as TabM
    averages its members' predictions, in log space for stability.
    """
    if members == 1:
        return output
    output = output.float().unflatten(-1, (members, -1))  # (..., units, members, N)
    if kind == REGRESSION:
        return output.mean(dim=-2)
    if kind == BINARY:  # log(mean p) - log(mean (1 - p)); the log of the count cancels
        return (torch.logsumexp(F.logsigmoid(output), dim=-2) - torch.logsumexp(F.logsigmoid(-output), dim=-2))
    if kind == MULTICLASS:
        return torch.logsumexp(torch.log_softmax(output, dim=-3), dim=-2) - math.log(members)
    raise ValueError(unknown_task_type(kind))
