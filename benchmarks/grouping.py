"""Candidate strategies compared on planted tables: groups trained, wall time, where the planted grouping
lands, and how well estimated group losses order the groups.

Each strategy runs the same fixed network (no hyperparameter search: one configuration, one pack trial
that trains every candidate group), so strategies differ only in which groups they train:

- ``planted-7-seedN``: 7 tasks, two planted clusters of three mixed-type tasks (regression, binary and
  multiclass in each) and one task that shares with nobody; ``exhaustive`` trains all 127 groups and is
  the reference the others' estimates are scored against;
- ``planted-12-seedN``: 12 tasks in four clusters of three (4,095 groups: no exhaustive reference, and
  ``pairs`` ranks exactly only up to 10 tasks).

Printed per strategy and seed:

- ``groups``: groups trained (singletons included); ``wall_s``: the whole run;
- ``planted_rank``: the planted grouping's rank on the strategy's own leaderboard (``-``: not on it);
- ``rho_own``: mean per-task Spearman correlation of estimated and trained validation losses over the
  groups the run trained (``estimate``; run.json's ``estimate_rank_correlation``);
- ``rho_all``: the same over all 127 groups exhaustive trained (7 tasks; ``pairs``' estimates of its
  untrained groups, ``estimate``'s estimates of every group it asked about).

    python benchmarks/grouping.py                                  # every dataset (about 25 min on 2 cores)
    python benchmarks/grouping.py --datasets planted-7-seed0 --strategies affinity estimate
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mtl_search.datasets.planted import planted_grouping
from mtl_search.estimate import rank_agreement
from mtl_search.experiment import ExperimentResult, read_measurements, run_experiment
from mtl_search.leaderboard import task_values
from mtl_search.ray_session import connect_ray
from mtl_search.results import NLOSS, VALID, column
from mtl_search.spec_file import spec_from_dict

#: A trunk of 8 units is the bottleneck the planted clusters were measured against, on the features as the
#: generator made them, with a constant learning rate.
PLANTED_SPACE = {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal", "lr": 0.003,
                 "batch_size": 128, "epochs": 40, "numeric_encoding": "standard", "lr_schedule": "constant"}
SIZES = {7: [3, 3, 1], 12: [3, 3, 3, 3]}
#: Groupings proposed per strategy: at most 7 + 5 x 3 = 22 groups of 7 tasks, 12 + 3 x 6 = 30 of 12.
TOP_K = {7: 5, 12: 3}
DATASETS: dict[str, dict[str, Any]] = {
    f"planted-{tasks}-seed{seed}": {
        "tasks": tasks,
        "data": {"source": "builtin:planted",
                 "params": {"sizes": SIZES[tasks], "latent_dim": 8, "rows": 8000, "seed": seed},
                 "split": {"valid": 0.3, "test": 0.15}},
    }
    for tasks, seeds in ((7, range(5)), (12, range(3))) for seed in seeds
}
STRATEGIES = ("exhaustive", "pairs", "affinity", "estimate")


def run(dataset: str, strategy: str, output: Path) -> tuple[ExperimentResult, float]:
    """One strategy on one dataset, with the fixed network; the result and its wall time."""
    tasks = DATASETS[dataset]["tasks"]
    spec = spec_from_dict({
        "name": f"{dataset}-{strategy}", "seed": 0, "data": DATASETS[dataset]["data"], "space": PLANTED_SPACE,
        "grouping": {"candidates": strategy, "top_k": TOP_K[tasks], "affinity": {"epochs": 10}},
        "search": {"unit": "pack", "num_samples": 1, "trial_executor": "inline", "scheduler": {"type": "fifo"}},
        "baselines": [],
        "output": str(output),
    })
    started = time.time()
    result = run_experiment(spec, echo=lambda line: None)
    return result, time.time() - started


def group_losses(by_group: pd.DataFrame, *, estimated: bool) -> dict[str, dict[str, float]]:
    """Per-task validation nloss of the trained (or, with ``estimated``, the estimated) rows of groups.csv."""
    rows = by_group[by_group["estimated"].astype(bool) == estimated]
    return task_values(rows, lambda t: column(VALID, t, NLOSS))


def measure(dataset: str, strategies: list[str], output: Path) -> list[dict[str, Any]]:
    tasks = DATASETS[dataset]["tasks"]
    planted = planted_grouping(sizes=SIZES[tasks])
    rows, truth = [], None
    for strategy in strategies:
        if tasks > 10 and strategy in ("exhaustive", "pairs"):
            continue  # 4,095 groups; pairs ranks exactly only up to 10 tasks (12 + 66 + 1 = 79 groups otherwise)
        result, wall = run(dataset, strategy, output)
        board = result.leaderboard.set_index("grouping")
        rank = int(board.loc[planted, "rank"]) if planted in board.index else "-"
        row: dict[str, Any] = {
            "dataset": dataset, "strategy": strategy, "groups": result.trials["group"].nunique(),
            "wall_s": round(wall, 1), "planted_rank": rank,
            "rank1": result.leaderboard.loc[0, "grouping"], "rho_own": "", "rho_all": ""}
        estimates = None
        if strategy == "exhaustive":
            truth = group_losses(result.groups, estimated=False)
        elif strategy == "pairs":
            estimates = group_losses(result.groups, estimated=True)
        elif strategy == "estimate":
            measured = read_measurements(result.result_dir, with_estimates=True)
            estimates = measured.estimates if measured is not None else {}
            row["rho_own"] = round(rank_agreement(estimates, group_losses(result.groups, estimated=False)), 2)
        if estimates is not None and truth is not None:
            row["rho_all"] = round(rank_agreement(estimates, truth), 2)
        print(" | ".join(str(v) for v in row.values()), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES),
                        help="exhaustive first: it is the reference rho_all is scored against")
    parser.add_argument("--output", type=Path, help="keep the result directories here (default: a temporary one)")
    args = parser.parse_args()
    connect_ray(num_cpus=2)
    print(f"machine: {platform.node()} ({platform.machine()}), Python {platform.python_version()}")
    print("dataset | strategy | groups | wall_s | planted_rank | rank1 | rho_own | rho_all", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            rows += measure(dataset, args.strategies, args.output or Path(tmp))
    table = pd.DataFrame(rows)
    table["first"] = table["planted_rank"] == 1
    table["tasks"] = table["dataset"].str.split("-").str[1]
    summary = table.groupby(["tasks", "strategy"], sort=False).agg(
        seeds=("first", "size"), planted_first=("first", "sum"), groups=("groups", "mean"), wall_s=("wall_s", "mean"))
    print("\n" + summary.to_string(float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
