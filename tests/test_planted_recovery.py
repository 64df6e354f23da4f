"""The whole search finds the grouping planted in synthetic data.

Two clusters of two tasks (mixed types): inside a cluster the tasks read out the
same hidden units and their labels are scarce, so training them together helps;
across clusters they need unrelated units and a trunk of 8 units cannot hold
both clusters' 6. `run` must rank the planted grouping a0+a1|b0+b1 first
among all 15 groupings.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_search.cli import main
from mtl_search.datasets.planted import planted_grouping


def test_run_ranks_the_planted_grouping_first(ray_local, write_spec, tmp_path: Path):
    spec = {
        "name": "planted",
        "seed": 0,
        "data": {"source": "builtin:planted", "params": {"clusters": 2, "tasks_per_cluster": 2, "seed": 0},
                 "split": {"valid": 0.3, "test": 0.15}},
        "space": {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal",
                  "lr": 0.003, "batch_size": 128, "epochs": 40},
        "search": {"num_samples": 15, "max_concurrent_trials": 2, "trial_executor": "inline"},
        "output": str(tmp_path / "results"),
    }
    assert main(["run", str(write_spec(spec))]) == 0
    board = pd.read_csv(tmp_path / "results" / "planted" / "leaderboard.csv")
    assert len(board) == 15
    assert board.loc[0, "grouping"] == planted_grouping(2, 2) == "a0+a1|b0+b1"
    ranks = board.set_index("grouping")["rank"]
    # Sharing across clusters loses to the planted grouping, and so does training every task alone.
    assert ranks["a0+a1+b0+b1"] > 1 and ranks["a0+b0|a1+b1"] > 1 and ranks["a0|a1|b0|b1"] > 1
