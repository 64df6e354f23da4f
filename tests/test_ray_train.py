"""Trials as real Ray Train jobs (TorchTrainer) inside a real Ray Tune search."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mtl_search.config import spec_from_dict
from mtl_search.experiment import run_experiment
from mtl_search.ray_train import trial_resources

from .conftest import planted_spec_dict


def test_trial_resources():
    # A TorchTrainer trial is only a driver: its workers hold the CPUs, so it asks for none.
    assert trial_resources("train", cpus_per_worker=2, gpus_per_worker=1) == {"cpu": 0, "memory": 1}
    assert trial_resources("inline", cpus_per_worker=2, gpus_per_worker=0) == {"cpu": 2}
    assert trial_resources("inline", cpus_per_worker=1, gpus_per_worker=0.25) == {"cpu": 1, "gpu": 0.25}


def small_train_spec(tmp_path: Path, **overrides):
    base = {"data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 2},
            "search.trial_executor": "train", "search.num_samples": 3, "space.epochs": 3}
    return spec_from_dict(planted_spec_dict(tmp_path, **(base | overrides)))


def test_search_with_torchtrainer_trials(ray_local, tmp_path: Path):
    result = run_experiment(small_train_spec(tmp_path), echo=lambda line: None)
    trials = result.trials
    assert sorted(trials["group"]) == ["a0", "a0+a1", "a1"]
    assert (trials["status"] == "completed").all(), trials[["status", "reason"]]
    assert (trials["epochs_run"] == 3).all()
    # Each trial ran as its own Train run, named after the Tune trial.
    runs = {p.name for p in (result.result_dir / "train").iterdir()}
    assert runs == {f"train-{trial_id}" for trial_id in trials["trial_id"]}
    # Ray overhead is visible: wall time includes worker start-up, the loop time does not.
    assert (trials["overhead_s"] > 0).all() and (trials["train_loop_s"] > 0).all()
    board = pd.read_csv(result.result_dir / "leaderboard.csv")
    assert set(board["grouping"]) == {"a0+a1", "a0|a1"}


def test_trials_stopped_by_asha_end_and_free_their_workers(ray_local, tmp_path: Path):
    """An ASHA-stopped TorchTrainer trial must not hang the search (its actor is killed, not reused)."""
    spec = small_train_spec(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1,
                                                         "tasks_per_cluster": 1},
                                         "space.lr": {"choice": [0.03, 1e-5, 2e-5, 3e-5]}, "space.epochs": 6,
                                         "search.num_samples": 4,
                                         "search.scheduler": {"type": "asha", "grace_period": 1,
                                                              "reduction_factor": 2}})
    trials = run_experiment(spec, echo=lambda line: None).trials
    assert len(trials) == 4
    assert set(trials["status"]) <= {"completed", "stopped"}, trials[["status", "reason"]]
    assert (trials["status"] == "stopped").any()
    assert (trials["status"] == "completed").any()  # at least the group's seed trial


def test_two_data_parallel_workers_per_trial(ray_local, tmp_path: Path):
    spec = small_train_spec(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1,
                                                         "tasks_per_cluster": 1},
                                         "search.num_samples": 1, "search.max_concurrent_trials": 1,
                                         "space.epochs": 2, "resources.workers_per_trial": 2})
    trials = run_experiment(spec, echo=lambda line: None).trials
    assert len(trials) == 1
    assert trials.loc[0, "status"] == "completed", trials.loc[0, "reason"]
    assert trials.loc[0, "score"] < 1.5


@pytest.mark.parametrize("executor", ["inline", "train"])
def test_torch_threads_follow_cpus_per_worker(ray_local, tmp_path: Path, executor: str):
    """Each trial trains with as many torch threads as CPUs it holds, so concurrent trials do not oversubscribe."""
    spec = small_train_spec(tmp_path, **{"data.params": {"rows": 300, "features": 8, "clusters": 1,
                                                         "tasks_per_cluster": 1},
                                         "search.trial_executor": executor, "search.num_samples": 1,
                                         "search.max_concurrent_trials": 1, "space.epochs": 1,
                                         "resources.cpus_per_worker": 2})
    trials = run_experiment(spec, echo=lambda line: None).trials
    assert trials.loc[0, "status"] == "completed", trials.loc[0, "reason"]
    assert trials.loc[0, "threads"] == 2
