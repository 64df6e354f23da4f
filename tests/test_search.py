"""The Tune side: the define-by-run space, seed points, sample counts, and real Ray Tune runs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from mtl_search.config import spec_from_dict
from mtl_search.errors import SpecError
from mtl_search.search import MULTI_TASK_ONLY, DefineByRunSpace, resolve_num_samples, seed_points

from .conftest import planted_spec_dict

GROUPS = ["a", "b", "a+b"]


def domains():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"},
                           "space": {"weighting": {"choice": ["equal", "dwa"]}, "width": 16}})
    return spec.space.domains()


def test_define_by_run_samples_sharing_and_weighting_only_for_groups_of_several_tasks():
    space = DefineByRunSpace(domains(), tuple(GROUPS))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"single": set(), "multi": set()}
    for _ in range(30):
        trial = study.ask()
        constants = space(trial)
        kind = "single" if "+" not in trial.params["group"] else "multi"
        seen[kind] |= set(trial.params)
        assert constants["width"] == 16  # constants come back as values, not Optuna parameters
        if kind == "single":
            assert constants["weighting"] == "equal"
        study.tell(trial, 0.0)
    assert not set(MULTI_TASK_ONLY) & seen["single"]
    assert set(MULTI_TASK_ONLY) <= seen["multi"]
    assert "width" not in seen["multi"]


def test_seed_points_cover_every_group_with_defaults():
    points = seed_points(domains(), GROUPS)
    assert [p["group"] for p in points] == GROUPS
    assert points[0] == {"group": "a", "depth": 2, "lr": pytest.approx(1e-3), "head_sizes": ""}
    assert points[2]["weighting"] == "equal" and points[2]["sharing_depth"] == 1


def test_num_samples_must_cover_every_group():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}, "search": {"num_samples": 2}})
    with pytest.raises(SpecError, match=r"num_samples=2.*3 candidate groups"):
        resolve_num_samples(spec, GROUPS)
    auto = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}})
    assert resolve_num_samples(auto, GROUPS) == 6


def run(tmp_path: Path, **overrides) -> tuple[pd.DataFrame, Path]:
    from mtl_search.experiment import run_experiment

    spec = spec_from_dict(planted_spec_dict(tmp_path, **overrides))
    result = run_experiment(spec, echo=lambda line: None)
    return result.trials, result.result_dir


def test_inline_search_gives_every_group_a_trial_and_writes_results(ray_local, tmp_path: Path):
    trials, out = run(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1,
                                                   "tasks_per_cluster": 3},
                                   "space.lr": {"float": [1e-3, 1e-2], "log": True},
                                   "search.num_samples": 10})
    assert len(trials) == 10
    assert set(trials["group"]) == {"a0", "a1", "a2", "a0+a1", "a0+a2", "a1+a2", "a0+a1+a2"}
    assert (trials["status"] == "completed").all()
    assert trials["lr"].between(1e-3, 1e-2).all()
    assert (trials["train_loop_s"] > 0).all() and (trials["wall_s"] >= trials["train_loop_s"]).all()
    for name in ("config.yaml", "run.json", "trials.csv", "groups.csv", "leaderboard.csv"):
        assert (out / name).is_file(), name
    assert (out / "tune").is_dir()


def test_inline_trials_stopped_by_asha_are_recorded(ray_local, tmp_path: Path):
    trials, _ = run(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 1},
                                 "space.lr": {"choice": [0.03, 1e-5, 2e-5, 3e-5, 4e-5, 5e-5]}, "space.epochs": 6,
                                 "search.num_samples": 6,
                                 "search.scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}})
    assert len(trials) == 6
    assert set(trials["status"]) <= {"completed", "stopped"}
    assert (trials["status"] == "stopped").any()
    stopped = trials[trials["status"] == "stopped"]
    assert (stopped["epochs_run"] < 6).all() and stopped["score"].notna().all()
