"""Trials as real Ray Train jobs (TorchTrainer) inside a real Ray Tune search."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mtl_search.config import TrainSpec
from mtl_search.data import PreparedData
from mtl_search.experiment import run_experiment
from mtl_search.ray_session import resolve_gpus
from mtl_search.ray_train import _fit_from_config, trial_resources, worker_resources
from mtl_search.spec_file import spec_from_dict
from mtl_search.trial import TrialSettings

from .conftest import planted_spec_dict


def test_trial_resources():
    # A TorchTrainer trial is only a driver: its workers hold the CPUs, so it asks for none.
    assert trial_resources("train", TrialSettings(cpus_per_worker=2, gpus_per_worker=1)) == {"cpu": 0, "memory": 1}
    assert trial_resources("inline", TrialSettings(cpus_per_worker=2, gpus_per_worker=0)) == {"cpu": 2}
    assert trial_resources("inline", TrialSettings(cpus_per_worker=1, gpus_per_worker=0.25)) == {"cpu": 1,
                                                                                                "gpu": 0.25}


def test_fractional_gpus_per_worker_become_trial_and_worker_shares(tmp_path: Path):
    quarter = spec_from_dict(planted_spec_dict(tmp_path, **{"resources.gpus_per_worker": 0.25}))
    assert resolve_gpus(quarter) == 0.25
    settings = TrialSettings.from_spec(quarter, gpus_per_worker=resolve_gpus(quarter))
    assert trial_resources("inline", settings) == {"cpu": 1, "gpu": 0.25}
    assert worker_resources(settings) == {"CPU": 1.0, "GPU": 0.25}
    assert worker_resources(TrialSettings(cpus_per_worker=2, gpus_per_worker=0)) == {"CPU": 2.0}


def test_trial_settings_travel_beside_the_sampled_config(planted_data: PreparedData):
    config = {"group": "a0+a1", "depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal",
              "lr": 0.01, "epochs": 1, "batch_size": 64, "weight_decay": 0.0, "dropout": 0.0}
    threads = torch.get_num_threads()
    try:
        # The trial function hands the device options to fit: `on` on a CPU fails with the reason.
        with pytest.raises(ValueError, match="cuda_graphs is 'on'"):
            _fit_from_config(config, TrialSettings(train=TrainSpec(cuda_graphs="on")), planted_data, "cpu",
                             lambda metrics, state: None)
        reports = []
        _fit_from_config(config, TrialSettings(cpus_per_worker=1, train=TrainSpec(amp="bf16")), planted_data, "cpu",
                         lambda metrics, state: reports.append(metrics))
        assert reports[-1]["status"] == "completed" and reports[-1]["threads"] == 1
    finally:
        torch.set_num_threads(threads)


def small_train_spec(tmp_path: Path, **overrides):
    base = {"data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 2},
            "search.trial_executor": "train", "search.num_samples": 3, "space.epochs": 3}
    return spec_from_dict(planted_spec_dict(tmp_path, **(base | overrides)))


def test_search_with_torchtrainer_trials(ray_local, tmp_path: Path):
    result = run_experiment(small_train_spec(tmp_path, **{"search.num_samples": 2}), echo=lambda line: None)
    trials = result.trials
    assert sorted(trials["group"]) == ["a0", "a0", "a0+a1", "a0+a1", "a1", "a1"]  # 2 packs of every group
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
    """DDP over the packed module: every network of the pack trains on two workers."""
    spec = small_train_spec(tmp_path, **{"search.num_samples": 1, "search.max_concurrent_trials": 1,
                                         "space.epochs": 2, "resources.workers_per_trial": 2})
    trials = run_experiment(spec, echo=lambda line: None).trials
    assert len(trials) == 3
    assert (trials["status"] == "completed").all(), trials["reason"]
    assert (trials["score"] < 1.5).all()


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
