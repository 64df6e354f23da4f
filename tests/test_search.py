"""The Tune side: the define-by-run space, seed points, sample counts, and real Ray Tune runs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest

from mtl_search.search import (
    MULTI_TASK_ONLY,
    DefineByRunSpace,
    seed_points,
)
from mtl_search.spec_file import spec_from_dict
from mtl_search.tune_state import restore_deleted_checkpoints

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


SCHEME_SPACE = {"weighting": {"choice": ["equal", "dwa", "gradnorm", "static"]}, "width": 16,
                "weighting_params": {"dwa.temperature": {"float": [1, 4]}, "gradnorm.alpha": {"float": [0.5, 2.5]}}}


def scheme_space(groups=("a", "b", "a+b")) -> DefineByRunSpace:
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}, "space": SCHEME_SPACE})
    return DefineByRunSpace(spec.space.domains(), tuple(groups), weighting_params=spec.space.weighting_params)


def test_a_schemes_own_hyperparameters_are_sampled_only_when_it_is_chosen():
    space = scheme_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(80):
        trial = study.ask()
        constants = space(trial)
        params = trial.params
        scheme = params.get("weighting", constants.get("weighting"))
        seen.add(scheme)
        own = {key for key in {**params, **constants} if "." in key}
        expected = {"dwa": {"dwa.temperature"}, "gradnorm": {"gradnorm.alpha", "gradnorm.lr"},
                    "static": {"static.weight_a", "static.weight_b"}}.get(scheme, set())
        assert own == (expected if "+" in params["group"] else set()), (params, constants)
        if scheme == "dwa":
            assert 1.0 <= params["dwa.temperature"] <= 4.0
        if scheme == "gradnorm":
            assert 0.5 <= params["gradnorm.alpha"] <= 2.5
            assert constants["gradnorm.lr"] == 0.025  # not ranged in the spec: the scheme's default, fixed
            assert "gradnorm.lr" not in params
        if scheme == "static":
            assert all(0.1 <= params[f"static.weight_{t}"] <= 10.0 for t in "ab")
        study.tell(trial, 0.0)
    assert seen == {"equal", "dwa", "gradnorm", "static"}


def test_a_pack_space_samples_one_configuration_for_every_group():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}, "space": SCHEME_SPACE})
    space = DefineByRunSpace(spec.space.domains(), (), ("a", "b", "c"), spec.space.weighting_params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        constants = space(trial)
        assert "group" not in trial.params and {"sharing_depth", "weighting"} <= {*trial.params, *constants}
        if trial.params["weighting"] == "static":  # one raw weight per task of the run, normalised per group
            assert {k for k in trial.params if "." in k} == {"static.weight_a", "static.weight_b", "static.weight_c"}
        seen.add(trial.params["weighting"])
        study.tell(trial, 0.0)
    assert "static" in seen
    (point,) = seed_points(spec.space.domains(), (), ("a", "b"), spec.space.weighting_params)
    assert "group" not in point and point["weighting"] == "equal" and "sharing_depth" in point


def test_seed_points_set_scheme_hyperparameters_only_where_they_are_sampled():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"},
                           "space": {**SCHEME_SPACE, "weighting": {"choice": ["static", "dwa"]},
                                     "weighting_params": {"dwa.temperature": {"float": [1, 4]}}}})
    points = seed_points(spec.space.domains(), ["a", "a+b"], weighting_params=spec.space.weighting_params)
    assert not any("." in key for key in points[0])
    assert points[1]["weighting"] == "static"
    assert {k: v for k, v in points[1].items() if "." in k} == {"static.weight_a": 1.0, "static.weight_b": 1.0}
    # Optuna runs an enqueued point as given, the scheme's values included.
    study = optuna.create_study()
    study.enqueue_trial(points[1])
    trial = study.ask()
    space = DefineByRunSpace(spec.space.domains(), ("a", "a+b"), weighting_params=spec.space.weighting_params)
    space(trial)
    assert trial.params["static.weight_a"] == 1.0 and trial.params["weighting"] == "static"


def run(tmp_path: Path, **overrides) -> tuple[pd.DataFrame, Path]:
    from mtl_search.experiment import run_experiment

    spec = spec_from_dict(planted_spec_dict(tmp_path, **overrides))
    result = run_experiment(spec, echo=lambda line: None)
    return result.trials, result.result_dir


@pytest.mark.parametrize(("unit", "samples", "rows"), [("pack", 3, 3 * 7), ("group", 10, 10)])
def test_inline_search_gives_every_group_a_trial_and_writes_results(ray_local, tmp_path: Path, unit: str,
                                                                    samples: int, rows: int):
    trials, out = run(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1,
                                                   "tasks_per_cluster": 3},
                                   "space.lr": {"float": [1e-3, 1e-2], "log": True},
                                   "search.unit": unit, "search.num_samples": samples})
    assert len(trials) == rows and trials["trial_id"].nunique() == samples
    assert set(trials["group"]) == {"a0", "a1", "a2", "a0+a1", "a0+a2", "a1+a2", "a0+a1+a2"}
    if unit == "pack":  # every group under every configuration, the trial's configuration on every row
        assert (trials.groupby("group")["trial_id"].nunique() == samples).all()
        assert (trials.groupby("trial_id")["lr"].nunique() == 1).all()
    assert (trials["status"] == "completed").all()
    assert trials["lr"].between(1e-3, 1e-2).all()
    assert (trials["train_loop_s"] > 0).all() and (trials["wall_s"] >= trials["train_loop_s"]).all()
    for name in ("config.yaml", "run.json", "trials.csv", "groups.csv", "leaderboard.csv"):
        assert (out / name).is_file(), name
    assert (out / "tune").is_dir()


def test_inline_trials_stopped_by_asha_are_recorded(ray_local, tmp_path: Path):
    trials, _ = run(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 1},
                                 "space.lr": {"choice": [0.03, 1e-5, 2e-5, 3e-5, 4e-5, 5e-5]}, "space.epochs": 6,
                                 "search.num_samples": 6, "search.startup_trials": 6,  # sampled at random: bad lrs
                                 "search.scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}})
    assert len(trials) == 6
    assert set(trials["status"]) <= {"completed", "stopped"}
    assert (trials["status"] == "stopped").any()
    stopped = trials[trials["status"] == "stopped"]
    assert (stopped["epochs_run"] < 6).all() and stopped["score"].notna().all()


def test_conditional_scheme_hyperparameters_in_a_real_search(ray_local, tmp_path: Path):
    """Real Ray Tune + OptunaSearch: a scheme's own hyperparameters appear only on its trials, in range."""
    # Three tasks: 7 groups in every trial. The seed trial uses the first choice (dwa, at the middle of its
    # temperature range); TPE proposes the rest (seeded, so the same trials every run).
    trials, out = run(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 3},
                                   "space.weighting": {"choice": ["dwa", "gradnorm", "equal"]},
                                   "space.weighting_params": {"dwa.temperature": {"float": [1, 4]},
                                                              "gradnorm.alpha": {"float": [0.5, 2.5]}},
                                   "search.num_samples": 12, "search.scheduler": {"type": "fifo"}})
    assert len(trials) == 12 * 7 and (trials["status"] == "completed").all()
    multi = trials[trials["n_tasks"] > 1]
    for scheme, column, (low, high) in (("dwa", "dwa.temperature", (1, 4)), ("gradnorm", "gradnorm.alpha", (0.5, 2.5))):
        own = trials["weighting"].eq(scheme) & trials["n_tasks"].gt(1)
        assert own.any(), f"no {scheme} trial to check (seeded search: change num_samples)"
        assert trials.loc[own, column].between(low, high).all()
        assert trials.loc[~own, column].isna().all()
    assert (trials.loc[trials["weighting"].eq("gradnorm"), "gradnorm.lr"] == 0.025).all()
    assert trials.loc[~trials["weighting"].eq("gradnorm"), "gradnorm.lr"].isna().all()
    assert (trials.loc[trials["n_tasks"] == 1, "weighting"] == "equal").all()
    # Every scheme's final weights reach trials.csv.
    for _, row in multi.iterrows():
        assert all(pd.notna(row[f"weight_{task}"]) for task in row["group"].split("+"))
    written = pd.read_csv(out / "trials.csv")
    assert {"dwa.temperature", "gradnorm.alpha"} <= set(written.columns)


@pytest.mark.parametrize("tracking", ["mlflow", "tensorboard"])
def test_tracking_logs_every_trial(ray_local, tmp_path: Path, tracking: str):
    trials, out = run(tmp_path, **{"data.params": {"rows": 300, "features": 8, "latent_dim": 2, "clusters": 1,
                                                   "tasks_per_cluster": 2},
                                   "search.num_samples": 2, "tracking": tracking})
    assert len(trials) == 2 * 3  # two trials of the pack of 3 groups
    if tracking == "mlflow":
        import mlflow

        client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
        experiment = client.get_experiment_by_name("planted")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == trials["trial_id"].nunique() == 2
        assert all("score" in run.data.metrics for run in runs)
    else:
        events = list((out / "tune").glob("*/events.out.tfevents.*"))
        assert len(events) == trials["trial_id"].nunique() == 2


def test_tpe_models_the_scores_within_a_small_budget():
    # Optuna's default of 10 random trials would leave a search of 8 configurations without TPE.
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}})
    assert [spec.startup_trials(n) for n in (1, 3, 8, 30, 40)] == [1, 1, 2, 10, 10]
    chosen = spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}, "search": {"startup_trials": 6}})
    assert chosen.startup_trials(8) == 6


def test_a_checkpoint_the_last_snapshot_names_but_tune_deleted_is_put_back(tmp_path: Path):
    """The state a run killed mid-checkpoint leaves (seen in a kill/resume test): Tune's experiment
    snapshot names checkpoint_000000 of a trial, whose folder holds only the newer checkpoint_000001."""
    trial = tmp_path / "inline_trial_ab12_3_lr=0.01"
    (trial / "checkpoint_000001").mkdir(parents=True)
    (trial / "checkpoint_000001" / "state.pt").write_bytes(b"newest")
    (tmp_path / "untouched_trial" / "checkpoint_000004").mkdir(parents=True)
    manager = {"_type": "CLOUDPICKLE_FALLBACK",
               "value": pickle.dumps({"latest": f"{trial}/checkpoint_000000"}).hex()}
    snapshot = {"trial_data": [
        [json.dumps({"relative_logdir": trial.name}), json.dumps({"checkpoint_manager": manager})],
        [json.dumps({"relative_logdir": "untouched_trial"}),
         json.dumps({"last_result": {"checkpoint_dir_name": "checkpoint_000004"}})],
        [json.dumps({"relative_logdir": "never_checkpointed"}), json.dumps({"checkpoint_manager": manager})],
    ]}
    (tmp_path / "experiment_state-2026-12-02_14-00-00.json").write_text(json.dumps(snapshot))
    restored = restore_deleted_checkpoints(tmp_path)
    assert restored == [trial / "checkpoint_000000"]
    assert (trial / "checkpoint_000000" / "state.pt").read_bytes() == b"newest"
    assert restore_deleted_checkpoints(tmp_path) == []  # nothing left to put back
