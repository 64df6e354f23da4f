"""Candidate strategies compared: trials, training time, and how good the grouping each puts first is.

For each dataset, runs ``exhaustive``, ``pairs`` and ``affinity`` with the same
fixed hyperparameters and one trial per trained group (so strategies differ
only in which groups they train), then looks up each strategy's top grouping in
exhaustive's ranking (which scores every grouping from trained networks):

- ``rank_under_exhaustive``: 1 means the strategy found exhaustive's best;
- ``gap_pct``: how much worse that grouping's validation score is than
  exhaustive's best, in percent.

    python benchmarks/grouping.py                      # all datasets (about 20 min on 2 cores)
    python benchmarks/grouping.py --datasets planted-2x3
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mtl_search.experiment import run_experiment
from mtl_search.ray_session import connect_ray
from mtl_search.spec_file import spec_from_dict

#: The networks the figures in docs/benchmarks.md were measured with (before issue 16 changed the defaults);
#: the planted latents are linear in the features, so the planted runs keep them too.
MEASURED_WITH = {"numeric_encoding": "standard", "lr_schedule": "constant"}
PLANTED_SPACE = {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal", "lr": 0.003,
                 "batch_size": 128, "epochs": 40, **MEASURED_WITH}
DATASETS: dict[str, dict[str, Any]] = {
    **{f"planted-2x3-seed{seed}": {
        # The regime of tests/test_planted_recovery.py: enough rows that a trunk of 8 units is the bottleneck.
        "data": {"source": "builtin:planted",
                 "params": {"clusters": 2, "tasks_per_cluster": 3, "rows": 8000, "seed": seed},
                 "split": {"valid": 0.3, "test": 0.15}},
        "space": PLANTED_SPACE} for seed in (0, 1, 2)},
    "planted-3x2": {
        "data": {"source": "builtin:planted", "params": {"clusters": 3, "tasks_per_cluster": 2, "seed": 0},
                 "split": {"valid": 0.3, "test": 0.15}},
        "space": PLANTED_SPACE},
    "census-5": {
        "data": {"source": "builtin:census_income", "drop": ["instance_weight"], "tasks": {
            "income": {"column": "income_gt_50k", "type": "binary"},
            "weeks": {"column": "weeks_worked_in_year", "type": "regression"},
            "worker": {"column": "class_of_worker", "type": "multiclass"},
            "marital": {"column": "marital_stat", "type": "multiclass"},
            "union": {"column": "member_of_a_labor_union", "type": "binary"}}},
        "space": {"depth": 2, "sharing_depth": 2, "width": 64, "head_sizes": "", "weighting": "equal",
                  "lr": 0.003, "batch_size": 512, "epochs": 12, **MEASURED_WITH}},
}
STRATEGIES = ("exhaustive", "pairs", "affinity")


def run(dataset: str, strategy: str, output: Path) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    spec = spec_from_dict({
        "name": f"{dataset}-{strategy}", "seed": 0, **DATASETS[dataset],
        "grouping": {"candidates": strategy, "top_k": 5, "affinity": {"epochs": 10}},
        # One trial per trained group: strategies differ only in which groups they train.
        "search": {"num_samples": "groups", "max_concurrent_trials": 2, "trial_executor": "inline",
                   "scheduler": {"type": "fifo"}},
        "baselines": [],  # reference rows would enter the rank lookup below
        "output": str(output),
    })
    started = time.time()
    result = run_experiment(spec, echo=lambda line: None)
    return result.trials, result.leaderboard, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    args = parser.parse_args()
    connect_ray(num_cpus=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            boards = {}
            for strategy in STRATEGIES:
                trials, board, wall = run(dataset, strategy, Path(tmp))
                boards[strategy] = board
                rows.append({"dataset": dataset, "strategy": strategy, "trials": len(trials),
                             "groups_trained": trials["group"].nunique(),
                             "train_loop_s": trials["train_loop_s"].sum(), "wall_s": wall,
                             "top": board["grouping"].iloc[0]})
            reference = boards["exhaustive"].set_index("grouping")
            best = reference["valid_score"].min()
            for row in rows:
                if row["dataset"] == dataset:
                    row["rank_under_exhaustive"] = int(reference.loc[row["top"], "rank"])
                    row["gap_pct"] = 100 * (reference.loc[row["top"], "valid_score"] - best) / best
            print(pd.DataFrame([r for r in rows if r["dataset"] == dataset]).to_string(index=False), flush=True)
    print(f"\nmachine: {platform.node()} ({platform.machine()}), Python {platform.python_version()}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
