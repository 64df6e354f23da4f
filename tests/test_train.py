"""The plain-PyTorch training loop: learning, reporting, divergence and resuming, for one network (a pack of one
group) and for packs. That a pack trains each group exactly as alone: ``test_packed.py``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtl_search.data import PreparedData
from mtl_search.grouping import group_id
from mtl_search.results import network_key
from mtl_search.schedule import lr_factor
from mtl_search.step import to_device
from mtl_search.train import TrainingLoop, fit, predict, split_packs
from mtl_search.trial import TrialParams
from mtl_search.weighting import WEIGHTINGS


def params(**changes) -> TrialParams:
    base = dict(depth=2, sharing_depth=1, width=32, head_sizes=(16,), weighting="equal", lr=3e-3, epochs=12,
                batch_size=64)
    return TrialParams(**(base | changes))


TASKS = ["a0", "a1", "b0", "b1"]


def one(tasks: list[str]) -> list[str]:
    """The group id of ``tasks``, as a pack of one network."""
    return [group_id(tasks)]


def network(report: dict) -> dict:
    """The metrics of a report's only network."""
    (metrics,) = report["networks"].values()
    return metrics


def test_training_lowers_the_loss_and_beats_the_trivial_predictor(planted_data: PreparedData):
    reports = []
    result = fit(planted_data, one(TASKS), params(), report=lambda metrics, state: reports.append(metrics))
    assert [r["epoch"] for r in reports] == list(range(1, 13))
    for task in TASKS:
        assert network(reports[-1])[f"train_loss/{task}"] < 0.8 * network(reports[0])[f"train_loss/{task}"]
    assert result.status == "completed" and result.epochs_run == 12
    assert result.score < 0.9  # mean normalised validation loss: 1 is the trivial predictor
    scores = [network(r)["epoch_score"] for r in reports]
    assert result.score == pytest.approx(min(scores))
    assert network(reports[-1])["best_epoch"] == scores.index(min(scores)) + 1


def test_report_holds_the_documented_metrics(planted_data: PreparedData):
    reports = []
    fit(planted_data, one(["a0", "b0"]), params(epochs=2), report=lambda metrics, state: reports.append(metrics))
    for key in ("epoch", "score", "train_loop_s", "threads", "cuda_graph", "status", "reason", "networks"):
        assert key in reports[-1], key
    last = network(reports[-1])
    for key in ("score", "epoch_score", "best_epoch", "params", "sharing_depth", "status", "test/score",
                "valid/a0/nloss", "valid/a0/rmse", "test/b0/accuracy", "test/b0/macro_f1", "train_loss/a0",
                "weight/b0"):
        assert key in last, key
    assert reports[-1]["status"] == last["status"] == "completed" and reports[0]["status"] == "running"
    assert reports[-1]["score"] == last["score"]  # a trial of one network scores that network
    # The score is the mean normalised validation loss at the best epoch.
    mean_nloss = (last["valid/a0/nloss"] + last["valid/b0/nloss"]) / 2
    assert last["score"] == pytest.approx(mean_nloss, rel=1e-4)


def test_normalised_loss_uses_the_trivial_predictor(planted_data: PreparedData):
    reports = []
    fit(planted_data, one(["a1"]), params(epochs=1), report=lambda metrics, state: reports.append(metrics))
    metrics = network(reports[-1])
    trivial = planted_data.splits["valid"].trivial_loss["a1"]
    assert metrics["valid/a1/nloss"] == pytest.approx(metrics["valid/a1/loss"] / trivial)


def test_a_diverging_trial_ends_with_a_reason(planted_data: PreparedData):
    reports = []
    result = fit(planted_data, one(["a0", "b1"]), params(lr=1e30, epochs=5),
                 report=lambda metrics, state: reports.append(metrics))
    assert result.status == "diverged"
    assert "non-finite" in result.metrics["reason"] and "non-finite" in network(reports[-1])["reason"]
    assert math.isnan(result.score) and math.isnan(reports[-1]["score"])
    assert reports[-1]["status"] == "diverged" and len(reports) == result.epochs_run


@pytest.mark.parametrize("weighting", ["dwa", "gradnorm", "rlw"])  # loss history; extra state; random draws
def test_resuming_from_a_reported_state_continues_exactly(planted_data: PreparedData, weighting: str):
    states, reports = {}, []

    def keep(metrics, state):
        reports.append(metrics)
        states[metrics["epoch"]] = copy.deepcopy(state())

    groups = ["a0+a1", "b0+b1", "a0+b0+b1", "a1"]
    trial = params(epochs=4, weighting=weighting, lr_schedule="cosine", grad_clip=0.5)  # the schedule resumes too
    fit(planted_data, groups, trial, report=keep)
    resumed = []
    fit(planted_data, groups, trial, initial_state=states[2],
        report=lambda metrics, state: resumed.append(metrics))
    assert [r["epoch"] for r in resumed] == [3, 4]
    assert resumed[-1]["score"] == pytest.approx(reports[-1]["score"], rel=1e-6)
    for group in map(network_key, groups):
        for key in ("epoch_score", "score", "train_loss/a0", "weight/a0"):
            if key in reports[-1]["networks"][group]:
                assert resumed[-1]["networks"][group][key] == pytest.approx(reports[-1]["networks"][group][key],
                                                                            rel=1e-6), (group, key)


def test_same_seed_same_result(planted_data: PreparedData):
    first = fit(planted_data, one(TASKS), params(epochs=3), seed=7)
    second = fit(planted_data, one(TASKS), params(epochs=3), seed=7)
    other = fit(planted_data, one(TASKS), params(epochs=3), seed=8)
    assert first.score == second.score
    assert first.score != other.score


@pytest.mark.parametrize("backbone", ["mlp", "tabm"])
def test_predict_is_chunked_and_side_effect_free(planted_data: PreparedData, backbone: str,
                                                 monkeypatch: pytest.MonkeyPatch):
    from mtl_search import train
    from mtl_search.packed import PackedNet
    from mtl_search.trial import Architecture

    architecture = Architecture(1, 1, 8, dropout=0.5, backbone=backbone, members=4 if backbone == "tabm" else 1)
    net = PackedNet(planted_data.num_features, [("a0",), ("a0", "b0")], {"a0": 1, "b0": 3}, architecture)
    net.train()
    valid = to_device(planted_data.splits["valid"], list(planted_data.tasks), torch.device("cpu"))
    rows, kinds = valid.x.shape[0], ["regression", "multiclass"]
    out = predict(net, valid, kinds)
    assert net.training and out[0].shape == (2, 1, rows) and out[1].shape == (1, 3, rows)
    assert torch.equal(out[0], predict(net, valid, kinds)[0])  # evaluation mode: dropout off
    monkeypatch.setattr(train, "_EVAL_CHUNK", 7)  # chunks average their own members before joining
    for whole, chunked in zip(out, predict(net, valid, kinds), strict=True):
        torch.testing.assert_close(chunked, whole)


def test_packs_split_in_order():
    assert split_packs(["a", "b", "c"], None) == [["a", "b", "c"]]
    assert split_packs(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="pack_size must be >= 1"):
        split_packs(["a"], 0)


def test_a_trial_in_several_packs_trains_every_network_and_scores_the_best_grouping(planted_data: PreparedData):
    groups = ["a0", "a1", "b0", "b1", "a0+a1", "b0+b1"]
    whole = fit(planted_data, groups, params(epochs=2))
    halves = fit(planted_data, groups, params(epochs=2), pack_size=4)
    assert set(halves.networks) == set(groups)
    for group in groups:  # groups share nothing: splitting the pack changes no network
        assert halves.networks[group]["score"] == pytest.approx(whole.networks[group]["score"], rel=1e-5)
    best = min(sum(whole.networks[g]["score"] * len(g.split("+")) for g in grouping) / 4
               for grouping in (["a0", "a1", "b0", "b1"], ["a0+a1", "b0", "b1"], ["a0", "a1", "b0+b1"],
                                ["a0+a1", "b0+b1"]))
    assert whole.score == pytest.approx(best, rel=1e-9)
    mean = fit(planted_data, groups, params(epochs=2), objective="mean")
    assert mean.score == pytest.approx(sum(n["score"] for n in whole.networks.values()) / 6, rel=1e-6)


def test_unknown_task_is_rejected(planted_data: PreparedData):
    with pytest.raises(ValueError, match="unknown task"):
        fit(planted_data, ["a0+zz"], params(epochs=1))


MIXED = ["a0", "a1", "b0"]  # regression, binary, multiclass


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_every_weighting_trains_a_mixed_task_group(planted_data: PreparedData, weighting: str):
    """The registry's contract through the trainer: finite losses, a falling loss, weights logged per epoch."""
    reports = []
    result = fit(planted_data, one(MIXED), params(weighting=weighting, epochs=8),
                 report=lambda metrics, state: reports.append(network(metrics)))
    assert result.status == "completed" and math.isfinite(result.score) and result.score < 1.0
    for report in reports:
        assert all(math.isfinite(report[f"train_loss/{t}"]) for t in MIXED)
        assert all(math.isfinite(report[f"weight/{t}"]) for t in MIXED)
        assert sum(report[f"weight/{t}"] for t in MIXED) > 0
    first, last = reports[0], reports[-1]
    total = lambda r: sum(r[f"train_loss/{t}"] for t in MIXED)  # noqa: E731
    assert total(last) < 0.9 * total(first)


def test_gradient_weights_change_the_shared_update_only_as_documented(planted_data: PreparedData):
    # CAGrad with c = 0 is the average gradient on the scale of `equal`: the same training, up to rounding.
    equal = fit(planted_data, one(MIXED), params(epochs=2))
    cagrad = fit(planted_data, one(MIXED), params(epochs=2, weighting="cagrad", weighting_params={"c": 0.0}))
    assert cagrad.score == pytest.approx(equal.score, rel=1e-4)
    assert network(cagrad.metrics)["train_loss/b0"] == pytest.approx(network(equal.metrics)["train_loss/b0"],
                                                                     rel=1e-4)
    # With conflict-averse steering the update differs.
    steered = fit(planted_data, one(MIXED), params(epochs=2, weighting="cagrad", weighting_params={"c": 0.9}))
    assert steered.score != pytest.approx(equal.score, rel=1e-4)


@pytest.mark.parametrize("weighting", ["pcgrad", "imtl"])
def test_gradient_schemes_without_shared_layers_train_like_their_loss(planted_data: PreparedData, weighting: str):
    equal = fit(planted_data, one(MIXED), params(epochs=2, sharing_depth=0))
    other = fit(planted_data, one(MIXED), params(epochs=2, sharing_depth=0, weighting=weighting))
    assert other.score == equal.score
    assert all(network(other.metrics)[f"weight/{t}"] == 1.0 for t in MIXED)


def test_gradient_step_writes_each_groups_direction_into_its_trunk(planted_data: PreparedData):
    from mtl_search.losses import pack_losses
    from mtl_search.packed import PackedNet
    from mtl_search.step import gradient_step, shared_layout, to_device
    from mtl_search.weighting import make_weighting

    torch.manual_seed(0)
    groups = [("a0", "a1", "b0"), ("b0",), ("a1", "b0")]
    net = PackedNet(planted_data.num_features, groups, {t: planted_data.tasks[t].outputs for t in MIXED},
                    params(depth=2, sharing_depth=2).architecture())
    split = to_device(planted_data.splits["train"], MIXED, torch.device("cpu"))
    index = torch.arange(128)
    kinds = [planted_data.tasks[t].type for t in MIXED]

    def losses() -> torch.Tensor:
        return pack_losses(net, kinds, net(split.x[index]), split.targets[:, index], split.label_weights[:, index])

    scheme = make_weighting("pcgrad", MIXED, groups)
    layout = shared_layout(net, scheme)
    assert layout is not None and layout.groups.tolist() == [0, 2]  # the one-task group is not steered
    assert layout.parameters == net.shared_parameters()
    per_row = [p[0].numel() for p in layout.parameters]
    assert layout.last_layer == slice(sum(per_row[:2]), sum(per_row[:3]))  # the last trunk weight matrix
    gradient_step(scheme, losses(), layout)
    got = {g: torch.cat([p.grad[g].reshape(-1) for p in layout.parameters]) for g in range(3)}
    head_grad = net.out_weight["b0"].grad.clone()
    weights = scheme.weights()
    for g in (0, 2):  # a steered trunk: sum_k w_k g_k with the weights the scheme reports
        expected = torch.zeros_like(got[g])
        for k in range(3):
            if weights[g, k]:
                net.zero_grad()
                losses()[g, k].backward()
                expected += weights[g, k] * torch.cat([p.grad[g].reshape(-1) for p in layout.parameters])
        assert torch.allclose(got[g], expected, atol=1e-6), g
    net.zero_grad()
    losses()[1].sum().backward()  # the one-task group trains plainly
    assert torch.allclose(got[1], torch.cat([p.grad[1].reshape(-1) for p in layout.parameters]), atol=1e-6)
    # Task-specific layers: the scheme's combined loss (PCGrad: the plain sum, i.e. each head its own loss).
    assert torch.allclose(head_grad, torch.autograd.grad(losses()[:, 2].sum(), net.out_weight["b0"])[0], atol=1e-6)


def test_gradient_schemes_refuse_data_parallel_training(planted_data: PreparedData):
    from mtl_search.step import Distributed

    with pytest.raises(ValueError, match=r"'pcgrad'.*data-parallel.*workers_per_trial"):
        fit(planted_data, one(MIXED), params(weighting="pcgrad"), distributed=Distributed(rank=0, world_size=2))


def test_trial_params_collect_the_chosen_schemes_hyperparameters():
    config = {"depth": 2, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "static", "lr": 0.01,
              "epochs": 2, "batch_size": 32, "weight_decay": 0.0, "dropout": 0.0, "dwa.temperature": 3.0,
              "static.weight_a0": 2.0, "static.weight_b0": 0.5}
    assert TrialParams.from_config(config).weighting_params == {"weight_a0": 2.0, "weight_b0": 0.5}
    assert TrialParams.from_config({**config, "weighting": "dwa"}).weighting_params == {"temperature": 3.0}
    assert TrialParams.from_config({**config, "weighting": "equal"}).weighting_params == {}


def test_a_state_saved_after_the_last_epoch_reports_the_final_metrics_again(planted_data: PreparedData):
    states, reports = {}, []

    def keep(metrics, state):
        reports.append(metrics)
        states[metrics["epoch"]] = copy.deepcopy(state())

    fit(planted_data, ["a0", "a0+b0"], params(epochs=3), report=keep)
    again = []
    result = fit(planted_data, ["a0", "a0+b0"], params(epochs=3), initial_state=states[3],
                 report=lambda metrics, state: again.append(metrics))
    assert len(again) == 1 and again[0]["epoch"] == 3 and again[0]["status"] == "completed"
    assert again[0]["score"] == reports[-1]["score"] and result.score == reports[-1]["score"]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_the_learning_rate_follows_the_schedule_step_by_step(planted_data: PreparedData, schedule: str):
    trial = params(epochs=8, lr=1e-2, lr_schedule=schedule)
    loop = TrainingLoop(planted_data, ["a0+a1", "b0"], trial)
    seen = []
    loop.optimizer.register_step_pre_hook(lambda optimizer, *_: seen.append(float(optimizer.param_groups[0]["lr"])))
    for _ in range(trial.epochs):
        loop.run_epoch()
    total = trial.epochs * loop.steps
    assert seen == pytest.approx([1e-2 * lr_factor(schedule, step, total) for step in range(total)])
    if schedule != "constant":
        assert seen[0] < seen[loop.steps] and seen[-1] < 0.1 * max(seen)  # warms up, then decays towards 0


def test_a_pack_out_of_patience_stops_and_keeps_its_best_epochs(planted_data: PreparedData):
    # lr 0: the first epoch sets each network's best score and no later epoch can beat it.
    reports = []
    result = fit(planted_data, ["a0+a1", "b0", "b1"], params(epochs=6, lr=0.0, patience=2),
                 report=lambda metrics, state: reports.append(metrics))
    assert [r["epoch"] for r in reports] == [1, 2, 3] and result.epochs_run == 3
    assert reports[-1]["status"] == "completed"
    for metrics in reports[-1]["networks"].values():
        assert metrics["status"] == "completed" and metrics["best_epoch"] == 1 and "patience" in metrics["reason"]
    improving = fit(planted_data, ["a0+a1"], params(epochs=3, patience=2))
    assert improving.epochs_run == 3  # a network still improving is not stopped
