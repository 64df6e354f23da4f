"""The multi-task network's shape for every depth and sharing depth."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtl_search.model import BatchEnsembleLinear, LinearEnsemble, MultiTaskNet
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


@pytest.mark.parametrize(("depth", "sharing"), list(itertools.product([1, 2, 3], [0, 1, 2, 3, 4])))
@pytest.mark.parametrize("head_sizes", [(), (16,)])
def test_tabm_shapes_and_layers_for_every_depth_and_sharing(depth: int, sharing: int, head_sizes: tuple[int, ...]):
    members = 3
    net = MultiTaskNet(10, OUTPUTS, Architecture(depth, sharing, 32, head_sizes, backbone="tabm", members=members))
    out = net(torch.randn(7, 10))
    assert out["reg"].shape == (members, 7) and out["bin"].shape == (members, 7) and out["cls"].shape == (members, 7, 4)
    shared = min(sharing, depth)
    ensemble = lambda module: [m for m in module.modules() if isinstance(m, BatchEnsembleLinear)]  # noqa: E731
    assert len(ensemble(net.trunk)) == shared and not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    # Exactly one layer per task path reads the input: no input scaling there, random-sign output scaling.
    first = [m for m in net.modules() if isinstance(m, BatchEnsembleLinear) and m.r is None]
    assert len(first) == (1 if shared else len(OUTPUTS))
    assert all(set(m.s.detach().abs().flatten().tolist()) == {1.0} for m in first)
    for task in OUTPUTS:
        assert len(ensemble(net.branches[task])) == depth - shared
        assert isinstance(net.heads[task][1], LinearEnsemble) and len(ensemble(net.heads[task])) == len(head_sizes)
    assert len(net.shared_parameters()) == 4 * shared - (1 if shared else 0)  # W, b, s (+ r after the first)


def test_tabm_members_predict_differently_and_train_on_their_own_rows():
    torch.manual_seed(0)
    net = MultiTaskNet(6, {"a": 1}, Architecture(depth=2, sharing_depth=1, width=16, backbone="tabm", members=4))
    out = net(torch.randn(5, 6))["a"]
    assert not torch.allclose(out[0], out[1])
    out[0].sum().backward()  # member 0's loss reaches member 0's own parameters only
    head = net.heads["a"][1]
    assert head.weight.grad[0].abs().sum() > 0 and head.weight.grad[1:].abs().sum() == 0


@pytest.mark.parametrize("bad", [dict(depth=0), dict(sharing_depth=-1), dict(width=0), dict(dropout=1.0),
                                 dict(backbone="resnet"), dict(members=0, backbone="tabm"), dict(members=2)])
def test_invalid_architecture_is_rejected(bad: dict):
    options = dict(depth=2, sharing_depth=1, width=8) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        Architecture(**options)


def test_any_task_name_works_even_one_that_is_a_module_attribute():
    from mtl_search.packed import PackedNet

    outputs = {"children": 1, "train": 3, "values": 1, "keys": 2}  # names nn.ModuleDict/ParameterDict refuse
    net = MultiTaskNet(5, outputs, Architecture(2, 1, 8, ()))
    out = net(torch.randn(4, 5))
    assert {t: tuple(v.shape) for t, v in out.items()} == {"children": (4,), "train": (4, 3), "values": (4,),
                                                            "keys": (4, 2)}
    assert "children" in net.heads and "parents" not in net.heads
    packed = PackedNet(5, [("children", "train"), ("values", "keys")], outputs, Architecture(2, 1, 8, ()))
    assert packed.out_weight["train"].shape[-2] == 3 and "keys" in packed.out_weight
