"""Task losses on tensors: masked means per task, and the batched form a training step uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_search.losses import batch_losses, ensemble_mean, masked_loss
from mtl_search.metrics import BINARY, MULTICLASS, REGRESSION, evaluate_task


@pytest.mark.parametrize("kind", ["regression", "binary", "multiclass"])
def test_masked_rows_do_not_count(kind: str):
    torch.manual_seed(0)
    output = torch.randn(6, 3) if kind == "multiclass" else torch.randn(6)
    target = torch.tensor([0, 1, 2, 0, 1, 2]) if kind == "multiclass" else torch.rand(6).round()
    mask = torch.tensor([True, True, True, False, False, False])
    garbage = target.clone()
    garbage[3:] = 0 if kind != "regression" else 1e6
    full = masked_loss(kind, output, target, mask)
    assert masked_loss(kind, output, garbage, mask).item() == pytest.approx(full.item())
    assert full.item() == pytest.approx(masked_loss(kind, output[:3], target[:3], mask[:3]).item())


def test_no_labelled_rows_gives_zero_loss_not_nan():
    loss = masked_loss("regression", torch.randn(4), torch.randn(4), torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0


@pytest.mark.parametrize("kind", [REGRESSION, BINARY, MULTICLASS])
def test_the_training_loss_is_the_reported_loss(kind: str):
    """What the networks train on (torch) and what the metrics report (NumPy) are one loss."""
    generator = torch.Generator().manual_seed(3)
    output = torch.randn(40, 5, generator=generator) if kind == MULTICLASS else torch.randn(40, generator=generator)
    if kind == MULTICLASS:
        target = torch.randint(0, 5, (40,), generator=generator)
    elif kind == BINARY:
        target = torch.randint(0, 2, (40,), generator=generator).float()
    else:
        target = torch.randn(40, generator=generator)
    mask = torch.rand(40, generator=generator) > 0.3
    reported = evaluate_task(kind, output.numpy(), target.numpy(), mask.numpy())["loss"]
    assert masked_loss(kind, output, target, mask).item() == pytest.approx(reported, rel=1e-5)
    assert np.isfinite(reported)


def test_batch_losses_equal_masked_loss_per_task():
    generator = torch.Generator().manual_seed(0)
    rows = 50
    kinds = [REGRESSION, BINARY, MULTICLASS]
    outputs = [torch.randn(rows, generator=generator), torch.randn(rows, generator=generator),
               torch.randn(rows, 4, generator=generator)]
    labels = [torch.randn(rows, generator=generator), torch.randint(0, 2, (rows,), generator=generator).float(),
              torch.randint(0, 4, (rows,), generator=generator)]
    masks = [torch.rand(rows, generator=generator) > p for p in (0.2, 0.5, 0.9)]
    masks.append(torch.zeros(rows, dtype=torch.bool))  # a task with no label in the batch: loss 0
    kinds.append(REGRESSION)
    outputs.append(torch.randn(rows, generator=generator))
    labels.append(torch.randn(rows, generator=generator))
    got = batch_losses(kinds, outputs, torch.stack([y.float() for y in labels]),
                       torch.stack([m.float() for m in masks]))
    expected = torch.stack([masked_loss(k, o, y, m) for k, o, y, m in zip(kinds, outputs, labels, masks, strict=True)])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert got[-1] == 0
    # bf16 outputs still give float32 losses.
    assert batch_losses(kinds, [o.bfloat16() for o in outputs], torch.stack([y.float() for y in labels]),
                        torch.stack([m.float() for m in masks])).dtype == torch.float32


@pytest.mark.parametrize("kind", ["regression", "binary", "multiclass"])
def test_ensemble_mean_averages_the_members_predictions(kind: str):
    members, rows, units = 4, 6, 3 if kind == "multiclass" else 1
    output = torch.randn(2, units, members * rows) * 3  # two groups, member-major columns
    got = ensemble_mean(kind, output, members)
    assert got.shape == (2, units, rows)
    each = output.view(2, units, members, rows)
    if kind == "regression":
        expected = each.mean(dim=2)
        torch.testing.assert_close(got, expected)
    elif kind == "binary":
        torch.testing.assert_close(torch.sigmoid(got), torch.sigmoid(each).mean(dim=2))
    else:
        torch.testing.assert_close(torch.softmax(got, dim=1), torch.softmax(each, dim=1).mean(dim=2))
    assert ensemble_mean(kind, output, 1) is output
