"""The whole search finds the grouping planted in synthetic data.

Two clusters of two tasks (mixed types): inside a cluster the tasks read out the
same hidden units and their labels are scarce, so training them together helps;
across clusters they need unrelated units and a trunk of 8 units cannot hold
both clusters' 6. `run` must rank the planted grouping a0+a1|b0+b1 first
among all 15 groupings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mtl_search.cli import main
from mtl_search.datasets.planted import planted_grouping
from mtl_search.experiment import run_experiment
from mtl_search.spec_file import spec_from_dict

#: The planted clusters are ReLU units of linear directions of the features, and a trunk of 8 units is the
#: bottleneck they were measured against: the networks read the features as the generator made them, with
#: the constant learning rate these tests were calibrated with.
PLANTED_NETWORK = {"numeric_encoding": "standard", "lr_schedule": "constant"}


def test_run_ranks_the_planted_grouping_first(ray_local, write_spec, tmp_path: Path):
    spec = {
        "name": "planted",
        "seed": 0,
        "data": {"source": "builtin:planted", "params": {"clusters": 2, "tasks_per_cluster": 2, "seed": 0},
                 "split": {"valid": 0.3, "test": 0.15}},
        "space": {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal",
                  "lr": 0.003, "batch_size": 128, "epochs": 40, **PLANTED_NETWORK},
        # The space is one configuration: one pack trial trains all 15 groups under it.
        "search": {"unit": "pack", "num_samples": 1, "trial_executor": "inline"},
        "output": str(tmp_path / "results"),
    }
    assert main(["run", str(write_spec(spec))]) == 0
    board = pd.read_csv(tmp_path / "results" / "planted" / "leaderboard.csv")
    board = board[~board["baseline"]]
    assert len(board) == 15
    assert board.loc[0, "grouping"] == planted_grouping(2, 2) == "a0+a1|b0+b1"
    ranks = board.set_index("grouping")["rank"]
    # Sharing across clusters loses to the planted grouping, and so does training every task alone.
    assert ranks["a0+a1+b0+b1"] > 1 and ranks["a0+b0|a1+b1"] > 1 and ranks["a0|a1|b0|b1"] > 1


def planted_2x3_spec(tmp_path: Path, strategy: str, seed: int) -> dict:
    """Six tasks in two clusters of three; more rows than the 2 x 2 case so a trunk of 8 is the bottleneck."""
    return {
        "name": f"planted-{strategy}-{seed}",
        "seed": 0,
        "data": {"source": "builtin:planted",
                 "params": {"clusters": 2, "tasks_per_cluster": 3, "rows": 8000, "seed": seed},
                 "split": {"valid": 0.3, "test": 0.15}},
        "grouping": {"candidates": strategy, "top_k": 5, "affinity": {"epochs": 10}},
        "space": {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal",
                  "lr": 0.003, "batch_size": 128, "epochs": 40, **PLANTED_NETWORK},
        # One configuration (the space is constant): one pack trial trains every candidate group.
        "search": {"unit": "pack", "num_samples": 1, "trial_executor": "inline", "scheduler": {"type": "fifo"}},
        "baselines": [],
        "output": str(tmp_path / "results"),
    }


PLANTED_2X3 = "a0+a1+a2|b0+b1+b2"


def test_affinity_finds_the_planted_grouping_with_a_quarter_of_the_groups(ray_local, tmp_path: Path):
    firsts = []
    for seed in (0, 1, 2):
        spec = spec_from_dict(planted_2x3_spec(tmp_path, "affinity", seed))
        result = run_experiment(spec, echo=lambda line: None)
        assert result.trials["group"].nunique() <= (2**6 - 1) // 4  # at most a quarter of exhaustive's 63
        firsts.append(result.leaderboard.loc[0, "grouping"])
    assert firsts.count(PLANTED_2X3) >= 2, firsts


@pytest.mark.parametrize("strategy", ["exhaustive", "pairs"])
def test_exhaustive_and_pairs_find_the_planted_grouping(ray_local, tmp_path: Path, strategy: str):
    result = run_experiment(spec_from_dict(planted_2x3_spec(tmp_path, strategy, seed=1)), echo=lambda line: None)
    assert result.trials["group"].nunique() == {"exhaustive": 63, "pairs": 6 + 15 + 1}[strategy]
    assert result.leaderboard.loc[0, "grouping"] == PLANTED_2X3
    if strategy == "pairs":  # the planted triples were never trained: their losses are estimated from pairs
        assert bool(result.leaderboard.loc[0, "estimated"])


def test_estimate_finds_the_planted_grouping_and_its_estimates_replay_on_resume(ray_local, tmp_path: Path):
    from mtl_search.experiment import read_measurements

    spec = spec_from_dict(planted_2x3_spec(tmp_path, "estimate", seed=1))
    result = run_experiment(spec, echo=lambda line: None)
    trained = set(result.trials["group"])
    assert len(trained) <= 6 + 5 * 3  # singletons and at most three groups per proposed grouping
    assert result.leaderboard.loc[0, "grouping"] == PLANTED_2X3
    assert not result.leaderboard["estimated"].astype(bool).any()  # estimates choose; only training ranks
    info = json.loads((result.result_dir / "run.json").read_text())
    assert -1.0 <= info["estimate_rank_correlation"] <= 1.0
    # estimates.csv holds every group the proposal asked about, so a resumed run proposes the same groups.
    measured = read_measurements(result.result_dir, with_estimates=True)
    assert measured is not None and len(measured.estimates) == 2**6 - 1
    tasks = ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert set(spec.grouping.strategy().propose(tasks, measured.affinity, measured.estimates)) == trained
