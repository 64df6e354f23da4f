"""The multi-task network's shape for every depth and sharing depth."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtl_search.model import MultiTaskNet
from mtl_search.trial import Architecture

OUTPUTS = {"reg": 1, "bin": 1, "cls": 4}


@pytest.mark.parametrize(("depth", "sharing"), list(itertools.product([1, 2, 3], [0, 1, 2, 3, 4])))
@pytest.mark.parametrize("head_sizes", [(), (16,), (16, 8)])
def test_shapes_and_layer_counts(depth: int, sharing: int, head_sizes: tuple[int, ...]):
    net = MultiTaskNet(10, OUTPUTS, Architecture(depth, sharing, 32, head_sizes))
    out = net(torch.randn(7, 10))
    assert out["reg"].shape == (7,) and out["bin"].shape == (7,) and out["cls"].shape == (7, 4)
    shared = min(sharing, depth)
    assert net.sharing_depth == shared
    linear = lambda module: sum(isinstance(m, torch.nn.Linear) for m in module.modules())  # noqa: E731
    assert linear(net.trunk) == shared
    for task in OUTPUTS:
        assert linear(net.branches[task]) == depth - shared
        assert linear(net.heads[task]) == len(head_sizes) + 1
    assert len(net.shared_parameters()) == 2 * shared


def test_shared_trunk_couples_tasks_and_branches_do_not():
    net = MultiTaskNet(6, {"a": 1, "b": 1}, Architecture(depth=2, sharing_depth=1, width=8))
    out = net(torch.randn(5, 6))
    out["a"].sum().backward()
    assert all(p.grad is not None for p in net.trunk.parameters())
    assert all(p.grad is None for p in net.branches["b"].parameters())
    assert all(p.grad is None for p in net.heads["b"].parameters())


def test_one_task_shares_its_whole_trunk():
    net = MultiTaskNet(6, {"a": 1}, Architecture(depth=3, sharing_depth=0, width=8))
    assert net.sharing_depth == 3


@pytest.mark.parametrize("bad", [dict(depth=0), dict(sharing_depth=-1), dict(width=0), dict(dropout=1.0)])
def test_invalid_architecture_is_rejected(bad: dict):
    options = dict(depth=2, sharing_depth=1, width=8) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        Architecture(**options)
