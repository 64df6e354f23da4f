"""One experiment end to end: spec -> data -> candidate groups -> search -> CSVs.

This is the single driver path: ``run`` calls it on a local Ray, and a job
submitted to a cluster runs the same ``run`` command there.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtl_search import __version__, storage
from mtl_search.config import ExperimentSpec, TaskSpec
from mtl_search.data import PreparedData, prepare
from mtl_search.grouping import make_strategy
from mtl_search.leaderboard import best_per_group, format_top, rank_groupings

Echo = Callable[[str], None]


@dataclass
class ExperimentResult:
    """What a finished experiment wrote."""

    result_dir: Path
    trials: pd.DataFrame
    groups: pd.DataFrame
    leaderboard: pd.DataFrame
    wall_s: float


def candidate_groups(spec: ExperimentSpec, data: PreparedData) -> list[str]:
    """The groups the search will train, from the spec's candidate strategy."""
    strategy = make_strategy(spec.grouping.candidates, max_group_size=spec.grouping.max_group_size)
    return strategy.propose(list(data.tasks))


def resolved_spec(spec: ExperimentSpec, data: PreparedData) -> ExperimentSpec:
    """The spec with the tasks that were actually used written out (a builtin's defaults included)."""
    tasks = {name: TaskSpec(column=t.column, type=t.type) for name, t in data.tasks.items()}  # type: ignore[arg-type]
    return spec.model_copy(update={"data": spec.data.model_copy(update={"tasks": tasks})})


def write_tables(result_dir: Path, trials: pd.DataFrame, data: PreparedData,
                 groups: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``groups.csv`` and ``leaderboard.csv`` from the trials table."""
    task_types = {name: task.type for name, task in data.tasks.items()}
    by_group = best_per_group(trials, task_types, groups)
    board = rank_groupings(by_group, task_types)
    storage.atomic_write_csv(result_dir / storage.GROUPS_FILE, by_group)
    storage.atomic_write_csv(result_dir / storage.LEADERBOARD_FILE, board)
    return by_group, board


def run_experiment(
    spec: ExperimentSpec,
    *,
    overwrite: bool = False,
    address: str | None = None,
    verbose: bool = False,
    echo: Echo = print,
) -> ExperimentResult:
    """Run the whole experiment a spec describes and write its result directory.

    Raises:
        UserError: the spec, the data or the result directory is unusable (before any training).
    """
    from mtl_search import search  # Ray is imported only when a search actually runs

    started = time.time()
    data = prepare(spec)
    groups = candidate_groups(spec, data)
    num_samples = search.resolve_num_samples(spec, groups)
    result_dir = storage.prepare_result_dir(spec.result_dir(), overwrite=overwrite)
    storage.atomic_write_text(result_dir / storage.CONFIG_FILE, resolved_spec(spec, data).to_yaml())
    echo(data.summary())

    search.connect_ray(address, verbose=verbose)
    plan = search.SearchPlan(groups=groups, num_samples=num_samples, gpus_per_worker=search.resolve_gpus(spec))
    echo(f"search: {len(groups)} candidate groups, {num_samples} trials, {spec.search.max_concurrent_trials} at a "
         f"time, executor {spec.search.trial_executor}, {plan.gpus_per_worker:g} GPU per worker")
    echo(f"results: {result_dir}")
    trials = search.run_search(spec, data, plan, result_dir, echo=echo, verbose=verbose)
    by_group, board = write_tables(result_dir, trials, data, groups)
    wall = time.time() - started
    _write_run_info(result_dir, spec, plan, trials, wall)

    failed = int((~trials["status"].isin(("completed", "stopped"))).sum()) if len(trials) else 0
    echo("")
    echo(f"{len(trials)} trials in {wall / 60:.1f} min ({failed} failed); top groupings "
         "(ranked by validation; test_score is held-out):")
    echo(format_top(board))
    echo(f"\nleaderboard: {result_dir / storage.LEADERBOARD_FILE}")
    return ExperimentResult(result_dir, trials, by_group, board, wall)


def _write_run_info(result_dir: Path, spec: ExperimentSpec, plan: object, trials: pd.DataFrame,
                    wall: float) -> None:
    import ray
    import torch

    ok = trials[trials["status"].isin(("completed", "stopped"))] if len(trials) else trials
    info = {
        "mtl_search_version": __version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall, 2),
        "trials": len(trials),
        "trials_failed": int(len(trials) - len(ok)),
        "trial_executor": spec.search.trial_executor,
        "gpus_per_worker": getattr(plan, "gpus_per_worker", None),
        "median_trial_wall_s": _median(ok, "wall_s"),
        "median_train_loop_s": _median(ok, "train_loop_s"),
        "median_overhead_s": _median(ok, "overhead_s"),
    }
    storage.atomic_write_text(result_dir / storage.RUN_FILE, json.dumps(info, indent=2) + "\n")


def _median(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame or frame.empty:
        return None
    value = frame[column].astype(float).median()
    return None if pd.isna(value) else round(float(value), 3)
