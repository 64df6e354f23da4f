"""Loss-weighting schemes: the registry contract and each scheme's maths."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_search.weighting import DWA, WEIGHTINGS, Equal, Uncertainty, Weighting, make_weighting

TASKS = ["a", "b", "c"]


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_contract(name: str):
    scheme = make_weighting(name, TASKS)
    assert isinstance(scheme, Weighting) and scheme.name == name
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    total = scheme.combine(losses)
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    assert losses.grad is not None and torch.all(losses.grad > 0)
    weights = scheme.weights()
    assert weights.shape == (3,) and not weights.requires_grad and torch.all(weights > 0)
    scheme.end_epoch(torch.tensor([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_one_task_is_plain_training(name: str):
    scheme = make_weighting(name, ["a"])
    assert isinstance(scheme, Equal)
    assert scheme.combine(torch.tensor([2.5])).item() == 2.5


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="dwa, equal, uncertainty"):
        make_weighting("magic", TASKS)


def test_equal_is_the_sum():
    assert Equal(TASKS).combine(torch.tensor([1.0, 2.0, 3.0])).item() == 6.0


def test_uncertainty_matches_the_closed_form():
    scheme = Uncertainty(TASKS)
    with torch.no_grad():
        scheme.log_vars.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
    losses = torch.tensor([1.0, 2.0, 3.0])
    log_vars = [0.0, math.log(2.0), -1.0]
    expected = sum(0.5 * math.exp(-s) * loss + 0.5 * s for s, loss in zip(log_vars, [1, 2, 3], strict=True))
    assert scheme.combine(losses).item() == pytest.approx(expected)
    assert scheme.weights().tolist() == pytest.approx([0.5, 0.25, 0.5 * math.e])


def test_uncertainty_learns_smaller_weight_for_larger_loss():
    scheme = Uncertainty(["small", "large"])
    optimiser = torch.optim.SGD(scheme.parameters(), lr=0.1)
    for _ in range(200):
        optimiser.zero_grad()
        scheme.combine(torch.tensor([0.1, 10.0])).backward()
        optimiser.step()
    small, large = scheme.weights().tolist()
    # The optimum is s_i = log L_i, i.e. weight 0.5 / L_i.
    assert small == pytest.approx(0.5 / 0.1, rel=0.05) and large == pytest.approx(0.5 / 10.0, rel=0.05)


def test_dwa_follows_the_formula_from_stored_loss_ratios():
    scheme = DWA(TASKS, temperature=2.0)
    assert scheme.weights().tolist() == [1.0, 1.0, 1.0]
    scheme.end_epoch(torch.tensor([1.0, 1.0, 1.0]))
    assert scheme.weights().tolist() == [1.0, 1.0, 1.0]  # still the first two epochs
    scheme.end_epoch(torch.tensor([0.5, 1.0, 2.0]))
    ratios = torch.tensor([0.5, 1.0, 2.0])
    expected = 3 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
    assert scheme.weights().tolist() == pytest.approx(expected.tolist())
    assert scheme.weights().sum().item() == pytest.approx(3.0)
    losses = torch.tensor([1.0, 1.0, 1.0])
    assert scheme.combine(losses).item() == pytest.approx(3.0)
    scheme.end_epoch(torch.tensor([0.5, 0.5, 2.0]))  # ratios now use the last two epochs only
    ratios = torch.tensor([1.0, 0.5, 1.0])
    expected = 3 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
    assert scheme.weights().tolist() == pytest.approx(expected.tolist())


def test_dwa_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        DWA(TASKS, temperature=0)
