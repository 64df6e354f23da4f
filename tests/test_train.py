"""The plain-PyTorch training loop: learning, reporting, divergence and resuming."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtl_search.data import PreparedData
from mtl_search.train import TrialParams, fit, predict
from mtl_search.weighting import WEIGHTINGS


def params(**changes) -> TrialParams:
    base = dict(depth=2, sharing_depth=1, width=32, head_sizes=(16,), weighting="equal", lr=3e-3, epochs=12,
                batch_size=64)
    return TrialParams(**(base | changes))


TASKS = ["a0", "a1", "b0", "b1"]


def test_training_lowers_the_loss_and_beats_the_trivial_predictor(planted_data: PreparedData):
    reports = []
    result = fit(planted_data, TASKS, params(), report=lambda metrics, state: reports.append(metrics))
    assert [r["epoch"] for r in reports] == list(range(1, 13))
    for task in TASKS:
        assert reports[-1][f"train_loss/{task}"] < 0.8 * reports[0][f"train_loss/{task}"]
    assert result.status == "completed" and result.epochs_run == 12
    assert result.score < 0.9  # mean normalised validation loss: 1 is the trivial predictor
    scores = [r["epoch_score"] for r in reports]
    assert result.score == pytest.approx(min(scores))
    assert reports[-1]["best_epoch"] == scores.index(min(scores)) + 1


def test_report_holds_the_documented_metrics(planted_data: PreparedData):
    reports = []
    fit(planted_data, ["a0", "b0"], params(epochs=2), report=lambda metrics, state: reports.append(metrics))
    last = reports[-1]
    for key in ("epoch", "score", "epoch_score", "best_epoch", "train_loop_s", "params", "sharing_depth",
                "status", "test/score", "valid/a0/nloss", "valid/a0/rmse", "test/b0/accuracy",
                "test/b0/macro_f1", "train_loss/a0", "weight/b0"):
        assert key in last, key
    assert last["status"] == "completed" and reports[0]["status"] == "running"
    # The score is the mean normalised validation loss at the best epoch.
    mean_nloss = (last["valid/a0/nloss"] + last["valid/b0/nloss"]) / 2
    assert last["score"] == pytest.approx(mean_nloss, rel=1e-4)


def test_normalised_loss_uses_the_trivial_predictor(planted_data: PreparedData):
    reports = []
    fit(planted_data, ["a1"], params(epochs=1), report=lambda metrics, state: reports.append(metrics))
    metrics = reports[-1]
    trivial = planted_data.splits["valid"].trivial_loss["a1"]
    assert metrics["valid/a1/nloss"] == pytest.approx(metrics["valid/a1/loss"] / trivial)


def test_a_diverging_trial_ends_with_a_reason(planted_data: PreparedData):
    reports = []
    result = fit(planted_data, ["a0", "b1"], params(lr=1e30, epochs=5),
                 report=lambda metrics, state: reports.append(metrics))
    assert result.status == "diverged"
    assert "non-finite" in result.reason
    assert math.isnan(result.score) and math.isnan(reports[-1]["score"])
    assert reports[-1]["status"] == "diverged" and len(reports) == result.epochs_run


def test_resuming_from_a_reported_state_continues_exactly(planted_data: PreparedData):
    states, reports = {}, []

    def keep(metrics, state):
        reports.append(metrics)
        states[metrics["epoch"]] = copy.deepcopy(state())

    fit(planted_data, TASKS, params(epochs=4, weighting="dwa"), report=keep)
    resumed = []
    fit(planted_data, TASKS, params(epochs=4, weighting="dwa"), initial_state=states[2],
        report=lambda metrics, state: resumed.append(metrics))
    assert [r["epoch"] for r in resumed] == [3, 4]
    for key in ("epoch_score", "score", "train_loss/a0", "weight/b0"):
        assert resumed[-1][key] == pytest.approx(reports[-1][key], rel=1e-6), key


def test_same_seed_same_result(planted_data: PreparedData):
    first = fit(planted_data, TASKS, params(epochs=3), seed=7)
    second = fit(planted_data, TASKS, params(epochs=3), seed=7)
    other = fit(planted_data, TASKS, params(epochs=3), seed=8)
    assert first.score == second.score
    assert first.score != other.score


def test_predict_is_chunked_and_side_effect_free(planted_data: PreparedData):
    from mtl_search.model import Architecture, MultiTaskNet

    net = MultiTaskNet(planted_data.num_features, {"a0": 1}, Architecture(1, 1, 8, dropout=0.5))
    net.train()
    x = torch.as_tensor(planted_data.splits["valid"].x)
    out = predict(net, x)
    assert net.training and out["a0"].shape == (x.shape[0],)
    assert torch.equal(out["a0"], predict(net, x)["a0"])  # evaluation mode: dropout off


def test_unknown_task_is_rejected(planted_data: PreparedData):
    with pytest.raises(ValueError, match="unknown task"):
        fit(planted_data, ["a0", "zz"], params(epochs=1))


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_every_weighting_trains_a_mixed_task_group(planted_data: PreparedData, weighting: str):
    reports = []
    result = fit(planted_data, ["a0", "a1", "b0"], params(weighting=weighting, epochs=8),
                 report=lambda metrics, state: reports.append(metrics))
    assert result.status == "completed" and math.isfinite(result.score) and result.score < 1.0
    first, last = reports[0], reports[-1]
    total = lambda r: sum(r[f"train_loss/{t}"] for t in ("a0", "a1", "b0"))  # noqa: E731
    assert total(last) < total(first)
    assert all(math.isfinite(last[f"weight/{t}"]) and last[f"weight/{t}"] > 0 for t in ("a0", "a1", "b0"))
