"""A pack trains every group exactly as that group's separate network would be trained alone.

The reference here is written independently of the pack: one
:class:`mtl_search.model.MultiTaskNet` per group, its own AdamW, its losses per task
(:func:`mtl_search.losses.batch_losses`) and, for a gradient-level scheme, its
per-task gradients of its trunk taken one task at a time. Both sides start from the
same weights (each group's network built after ``torch.manual_seed(seed)``, as the
pack builds its groups) and train on the same batches; afterwards every group's
parameters must agree to 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mtl_search.config import NUMERIC_ENCODINGS
from mtl_search.data import PreparedData, prepare
from mtl_search.grouping import group_tasks
from mtl_search.losses import batch_losses
from mtl_search.model import MultiTaskNet
from mtl_search.packed import PackedNet
from mtl_search.spec_file import spec_from_dict
from mtl_search.step import nonzero_lists, to_device
from mtl_search.train import Network, TrainingLoop, _train_and_score, predict
from mtl_search.trial import Architecture, TrialParams
from mtl_search.weighting import WEIGHTINGS, SharedGradients, make_weighting

#: One single-task group and three multi-task groups; regression, binary and multiclass tasks, labels missing.
GROUPS = ["a1", "a0+b0", "a0+a1+b0+b1", "a1+b1"]
SEED = 3


def params(**changes) -> TrialParams:
    base = dict(depth=2, sharing_depth=1, width=16, head_sizes=(8,), weighting="equal", lr=1e-2, epochs=2,
                batch_size=64)
    return TrialParams(**(base | changes))


class Alone:
    """One group's network trained alone, the way a separate network trains (the reference)."""

    def __init__(self, data: PreparedData, group: str, trial: TrialParams) -> None:
        self.tasks = [t for t in data.tasks if t in group_tasks(group)]  # the pack's task order
        torch.manual_seed(SEED)
        self.net = MultiTaskNet(data.num_features, {t: data.tasks[t].outputs for t in self.tasks},
                                trial.architecture())
        self.scheme = make_weighting(trial.weighting, self.tasks, seed=SEED, **trial.weighting_params)
        self.kinds = [data.tasks[t].type for t in self.tasks]
        self.split = to_device(data.splits["train"], self.tasks, torch.device("cpu"))
        self.shared = self.net.shared_parameters()
        self.steered = self.scheme.needs_task_gradients and bool(self.shared) and len(self.tasks) > 1
        self.optimizer = torch.optim.AdamW([*self.net.parameters(), *self.scheme.parameters()], lr=trial.lr,
                                           weight_decay=trial.weight_decay, foreach=True)
        self.sums = torch.zeros(len(self.tasks))
        self.grad_clip = trial.grad_clip
        self.members = trial.architecture().members

    def step(self, index: torch.Tensor) -> None:
        out = self.net(self.split.x[index])
        targets, weights = self.split.targets[:, index], self.split.label_weights[:, index]
        if self.members == 1:
            losses = batch_losses(self.kinds, [out[t] for t in self.tasks], targets, weights)
        else:  # TabM: each member's losses on the batch, averaged over the members
            losses = torch.stack([batch_losses(self.kinds, [out[t][member] for t in self.tasks], targets, weights)
                                  for member in range(self.members)]).mean(dim=0)
        self.optimizer.zero_grad(set_to_none=True)
        if self.steered:
            rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[k], self.shared, retain_graph=True)])
                    for k in range(len(self.tasks))]
            sizes = [p.numel() for p in self.shared]
            names = [name for name, _ in self.net.trunk.named_parameters()]
            at = max(i for i, name in enumerate(names) if name.endswith("weight"))
            last = slice(sum(sizes[:at]), sum(sizes[:at + 1]))  # the last trunk weight matrix
            direction = self.scheme.shared_gradient(
                losses.detach()[None], SharedGradients(torch.stack(rows)[None], torch.tensor([0]), last))[0]
            ids = {id(p) for p in self.shared}
            others = [p for p in (*self.net.parameters(), *self.scheme.parameters()) if id(p) not in ids]
            self.scheme.combine(losses[None]).backward(inputs=others)
            for parameter, part in zip(self.shared, direction.split(sizes), strict=True):
                parameter.grad = part.view_as(parameter).clone()
        else:
            self.scheme.combine(losses[None]).backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.optimizer.step()
        self.sums += losses.detach()


def batches(data: PreparedData, count: int, size: int) -> list[torch.Tensor]:
    order = torch.randperm(data.splits["train"].rows, generator=torch.Generator().manual_seed(0))
    return [order[i * size:(i + 1) * size] for i in range(count)]


def assert_same_networks(loop: TrainingLoop, alone: list[Alone], skip: set[int] = frozenset()) -> None:
    for index, reference in enumerate(alone):
        if index in skip:
            continue
        packed = loop.net.export_group(index)
        for (name, got), expected in zip(packed.state_dict().items(), reference.net.state_dict().values(),
                                         strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=f"{GROUPS[index]} {name}")


@pytest.mark.parametrize("backbone", ["mlp", "tabm"])
@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_a_pack_trains_each_group_exactly_as_alone(planted_data: PreparedData, weighting: str, backbone: str):
    trial = params(weighting=weighting, weight_decay=0.01, backbone=backbone, members=3)
    loop = TrainingLoop(planted_data, GROUPS, trial, seed=SEED)
    alone = [Alone(planted_data, group, trial) for group in GROUPS]
    assert_same_networks(loop, alone)  # the same initial weights
    for _ in range(2):  # two epochs of four steps: DWA's weights move after the second
        loop.step.loss_sums.zero_()
        for reference in alone:
            reference.sums.zero_()
        for index in batches(planted_data, 4, 64):
            loop.step(index)
            for reference in alone:
                reference.step(index)
        loop.weighting.end_epoch(loop.step.loss_sums / 4)
        for g, reference in enumerate(alone):
            reference.scheme.end_epoch((reference.sums / 4)[None])
            columns = [loop.net.tasks.index(t) for t in reference.tasks]
            torch.testing.assert_close(loop.weighting.weights()[g, columns], reference.scheme.weights()[0],
                                       rtol=1e-5, atol=1e-6)
    assert_same_networks(loop, alone)


@pytest.mark.parametrize("backbone", ["mlp", "tabm"])
@pytest.mark.parametrize("sharing", [0, 2])
def test_no_sharing_and_full_sharing_also_train_as_alone(planted_data: PreparedData, sharing: int, backbone: str):
    trial = params(sharing_depth=sharing, weighting="uncertainty", head_sizes=(), backbone=backbone, members=2)
    train_both_and_compare(planted_data, trial)


@pytest.mark.parametrize("weighting", ["equal", "pcgrad"])
def test_gradient_clipping_clips_each_network_as_alone(planted_data: PreparedData, weighting: str):
    # A small bound, so every network's update is clipped, each by its own gradient's norm.
    train_both_and_compare(planted_data, params(weighting=weighting, grad_clip=0.05))


def train_both_and_compare(data: PreparedData, trial: TrialParams) -> TrainingLoop:
    """Three steps of the pack and of each group alone on the same batches; the networks must agree."""
    loop = TrainingLoop(data, GROUPS, trial, seed=SEED)
    alone = [Alone(data, group, trial) for group in GROUPS]
    for index in batches(data, 3, 64):
        loop.step(index)
        for reference in alone:
            reference.step(index)
    assert_same_networks(loop, alone)
    return loop


@pytest.mark.parametrize("backbone", ["mlp", "tabm"])
def test_each_group_has_its_separate_networks_parameter_count(planted_data: PreparedData, backbone: str):
    for sharing in (0, 1, 2):
        trial = params(sharing_depth=sharing, head_sizes=(8, 4), backbone=backbone, members=3)
        net = PackedNet(planted_data.num_features, [group_tasks(g) for g in GROUPS],
                        {t: info.outputs for t, info in planted_data.tasks.items()}, trial.architecture())
        for index, group in enumerate(GROUPS):
            separate = MultiTaskNet(planted_data.num_features,
                                    {t: planted_data.tasks[t].outputs for t in group_tasks(group)},
                                    trial.architecture())
            assert net.group_parameter_count(index) == separate.num_parameters(), (sharing, group)
        assert sum(p.numel() for p in net.parameters()) == sum(net.group_parameter_count(g) for g in range(4))


def test_a_pack_of_one_group_is_its_network(planted_data: PreparedData):
    torch.manual_seed(0)
    alone = MultiTaskNet(planted_data.num_features, {"a0": 1, "b0": 3}, Architecture(2, 1, 8, (4,)))
    net = PackedNet(planted_data.num_features, [("a0", "b0")], {"a0": 1, "b0": 3}, Architecture(2, 1, 8, (4,)))
    net.load_group(0, alone)
    x = torch.as_tensor(planted_data.splits["valid"].x[:50])
    expected = alone(x)
    out = net(x)
    torch.testing.assert_close(out[0][0, 0], expected["a0"])
    torch.testing.assert_close(out[1][0].t(), expected["b0"])


@pytest.mark.parametrize(("depth", "sharing"), [(d, s) for d in (1, 2, 3) for s in range(d + 2)])
def test_a_tabm_pack_gives_each_groups_member_outputs_for_every_depth_and_sharing(
        planted_data: PreparedData, depth: int, sharing: int):
    members, rows = 3, 20
    architecture = Architecture(depth, sharing, 8, (4,), backbone="tabm", members=members)
    groups, outputs = [("a0",), ("a0", "b0"), ("b0", "b1")], {"a0": 1, "b0": 3, "b1": 1}
    net = PackedNet(planted_data.num_features, groups, outputs, architecture)
    separate = []
    for index in range(len(groups)):
        torch.manual_seed(index)
        separate.append(net.group_network(index))
        net.load_group(index, separate[-1])
    x = torch.as_tensor(planted_data.splits["valid"].x[:rows])
    out = dict(zip(net.tasks, net(x), strict=True))
    for index, group in enumerate(groups):
        expected = separate[index](x)
        for task in group:
            row = net.task_groups(task).tolist().index(index)
            got = out[task][row]  # (units, members * rows), member-major columns
            assert got.shape == (outputs[task], members * rows)
            got = got.view(outputs[task], members, rows).permute(1, 2, 0)  # (members, rows, units)
            torch.testing.assert_close(got.squeeze(-1) if outputs[task] == 1 else got, expected[task])


def one_hot_rows(rows: int = 96, seed: int = 0) -> torch.Tensor:
    """Rows like an encoded table: three one-hot blocks of 6 columns, then 3 numeric columns (some exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = [torch.nn.functional.one_hot(torch.randint(0, 6, (rows,), generator=generator), 6) for _ in range(3)]
    numeric = torch.randn(rows, 3, generator=generator)
    numeric[::7, 1] = 0.0  # a row with fewer non-zeros than the others
    return torch.cat([*blocks, torch.zeros(rows, 30), numeric], dim=1).float()


def test_sparse_rows_give_the_dense_outputs_and_gradients():
    x = one_hot_rows()
    columns, values = nonzero_lists(x)
    assert columns.shape == values.shape == (96, 6)
    torch.testing.assert_close(torch.zeros_like(x).scatter_add_(1, columns, values), x)
    architecture = Architecture(2, 1, 16, (8,))
    net = PackedNet(x.shape[1], [("a", "b"), ("b",)], {"a": 1, "b": 3}, architecture)
    dense, sparse = net(x), net(columns, values)
    dense_grads = torch.autograd.grad(sum(o.square().sum() for o in dense), list(net.parameters()))
    sparse_grads = torch.autograd.grad(sum(o.square().sum() for o in sparse), list(net.parameters()))
    for got, expected in zip([*sparse, *sparse_grads], [*dense, *dense_grads], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dense_features_stay_dense():
    assert nonzero_lists(torch.randn(10, 8)) is None
    assert nonzero_lists(one_hot_rows()) is not None


@pytest.mark.parametrize("backbone", ["mlp", "tabm"])
def test_a_pack_reading_sparse_rows_trains_each_group_as_alone(planted_data: PreparedData, backbone: str):
    x = one_hot_rows(planted_data.splits["train"].rows, seed=1).numpy()
    train = planted_data.splits["train"]
    data = replace(planted_data, feature_names=[f"f{i}" for i in range(x.shape[1])],
                   splits={**planted_data.splits, "train": replace(train, x=x)})
    loop = train_both_and_compare(data, params(weighting="pcgrad", backbone=backbone, members=2))
    assert loop.train.nonzeros is not None  # the pack read (columns, values); the reference read dense rows


def poison(loop: TrainingLoop, group: int) -> None:
    with torch.no_grad():
        net = loop.net.export_group(group)
        for parameter in net.parameters():
            parameter.fill_(math.nan)
        loop.net.load_group(group, net)


@pytest.mark.parametrize("weighting", ["equal", "uncertainty", "pcgrad"])
def test_a_diverging_group_does_not_disturb_the_others(planted_data: PreparedData, weighting: str):
    trial = params(weighting=weighting)
    clean = TrainingLoop(planted_data, GROUPS, trial, seed=SEED)
    broken = TrainingLoop(planted_data, GROUPS, trial, seed=SEED)
    poison(broken, 1)
    for index in batches(planted_data, 3, 64):
        clean.step(index)
        broken.step(index)
    for group in (0, 2, 3):
        pairs = zip(broken.net.export_group(group).parameters(), clean.net.export_group(group).parameters(),
                    strict=True)
        for got, expected in pairs:
            assert torch.equal(got, expected), GROUPS[group]
    # The trainer sees it after the epoch: the group is marked diverged and frozen, the rest are scored.
    networks = {group: Network() for group in GROUPS}
    evaluated = {split: to_device(planted_data.splits[split], list(planted_data.tasks), torch.device("cpu"))
                 for split in ("valid", "test")}
    trivial = planted_data.splits["valid"].trivial_loss
    _train_and_score(planted_data, broken, networks, evaluated, trivial, epoch=0)
    assert networks["a0+b0"].status == "diverged" and "non-finite" in networks["a0+b0"].reason
    assert not broken.live[1] and broken.live[[0, 2, 3]].all()
    assert all(math.isfinite(networks[g].score) for g in ("a1", "a0+a1+b0+b1", "a1+b1"))


@pytest.fixture(scope="module")
def every_encoding() -> PreparedData:
    """Planted data prepared with every numeric encoding (a searched ``space.numeric_encoding``)."""
    return prepare(spec_from_dict({"name": "t", "data": {"source": "builtin:planted",
                                                         "params": {"rows": 300, "features": 12}},
                                   "space": {"numeric_encoding": {"choice": list(NUMERIC_ENCODINGS)}}}))


@pytest.mark.parametrize("encoding", NUMERIC_ENCODINGS)
@pytest.mark.parametrize("backbone", ["mlp", "tabm"])
def test_every_encoding_and_backbone_gives_each_groups_outputs_for_every_depth_and_sharing(
        every_encoding: PreparedData, encoding: str, backbone: str):
    data = every_encoding.encoded(encoding)
    rows = data.splits["valid"].rows
    for depth, sharing in [(d, s) for d in (1, 2, 3) for s in range(d + 1)]:
        trial = params(depth=depth, sharing_depth=sharing, numeric_encoding=encoding, backbone=backbone, members=2)
        loop = TrainingLoop(every_encoding, ["a0", "a0+b0", "a1+b0+b1"], trial, seed=0)
        assert loop.net.num_inputs == data.num_features  # the trial reads its own encoding's features
        valid = to_device(data.splits["valid"], list(data.tasks), torch.device("cpu")).select(loop.net.tasks)
        outputs = dict(zip(loop.net.tasks, predict(loop.net, valid, loop.kinds), strict=True))
        for task, output in outputs.items():
            assert output.shape == (len(loop.net.task_groups(task)), data.tasks[task].outputs, rows)
            assert torch.isfinite(output).all()
