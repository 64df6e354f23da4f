"""Work beside the search that runs as plain Ray tasks: the all-task measuring run and confirmation retraining.

Each task holds one trial's resources (``cpus_per_worker`` CPUs, the resolved GPU
share) and trains with plain PyTorch (:mod:`mtl_search.affinity`,
:func:`mtl_search.train.fit`) on data it receives through the object store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from mtl_search.affinity import run_all_tasks
from mtl_search.config import ExperimentSpec
from mtl_search.data import PreparedData
from mtl_search.estimate import GroupLossEstimator
from mtl_search.grouping import CandidateStrategy
from mtl_search.progress import clock
from mtl_search.ray_train import DataRef, trial_device
from mtl_search.train import fit
from mtl_search.trial import TrialParams, TrialSettings

#: One retraining job: the groups (one pack), their hyperparameters (a trial config) and the seed.
Job = tuple[tuple[str, ...], dict[str, Any], int]


@dataclass
class Measurements:
    """What the all-task run measured: the affinity matrix and, for a strategy that estimates group losses,
    the estimate of every group its proposal asked about (group -> task -> estimated validation nloss)."""

    affinity: np.ndarray
    estimates: dict[str, dict[str, float]] = field(default_factory=dict)


def measure_task(data: DataRef, params: TrialParams, settings: TrialSettings, every: int,
                 strategy: CandidateStrategy) -> Measurements:
    """Ray task body: the all-task run with a trial's threads and device; affinity, and estimates if
    ``strategy`` needs them (its proposal runs here, next to the network, asking for the groups it reaches)."""
    torch.set_num_threads(settings.threads)
    prepared = data.get()
    tasks = list(prepared.tasks)
    device = trial_device(settings)
    run = run_all_tasks(prepared, tasks, params, device=device, seed=settings.seed, every=every)
    if not strategy.needs_estimates:
        return Measurements(run.affinity)
    estimator = GroupLossEstimator(run.model, prepared.encoded(params.numeric_encoding), tasks, device=device,
                                   seed=settings.seed)
    strategy.propose(tasks, run.affinity, estimator)
    return Measurements(run.affinity, estimator.estimates)


def confirm_task(data: DataRef, groups: tuple[str, ...], config: dict[str, Any], seed: int,
                 settings: TrialSettings) -> dict[str, dict[str, Any]]:
    """Ray task body: retrain a pack of networks with ``seed``; each group's metrics at its best epoch."""
    torch.set_num_threads(settings.threads)
    result = fit(data.get(), list(groups), TrialParams.from_config(config), device=trial_device(settings), seed=seed,
                 options=settings.train, pack_size=settings.pack_size)
    return result.networks


def _remote(function: Callable[..., Any], settings: TrialSettings) -> Any:
    return ray.remote(function).options(num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker)


def run_measurements(spec: ExperimentSpec, data: PreparedData, settings: TrialSettings, *,
                     echo: Callable[[str], None] = print) -> Measurements:
    """Measure inter-task affinity in one all-task run (a Ray task), and estimate group losses from it when the
    spec's strategy needs them."""
    epochs = spec.grouping.affinity.epochs or spec.space.max_epochs
    params = TrialParams.from_config({**spec.space.defaults(), "weighting": "equal", "epochs": epochs})
    echo(f"affinity: one all-task network ({params.depth} x {params.width}, every layer shared), {epochs} epochs, "
         f"lookahead every {spec.grouping.affinity.every} step(s)")
    started = time.time()
    strategy = spec.grouping.strategy()
    measured = ray.get(_remote(measure_task, settings).remote(DataRef(ray.put(data)), params, settings,
                                                              spec.grouping.affinity.every, strategy))
    estimated = f"; {len(measured.estimates)} groups' losses estimated" if strategy.needs_estimates else ""
    echo(f"affinity: measured in {time.time() - started:.1f} s{estimated}")
    return measured


def retrain(data: PreparedData, jobs: Sequence[Job], settings: TrialSettings,
            echo: Callable[[str], None] | None = None) -> list[dict[str, dict[str, Any]]]:
    """Retrain (groups, config, seed) jobs, one pack each, as Ray tasks holding one trial's resources each.

    Returns, per job in order, group -> that network's metrics at its best epoch. With ``echo``, one line per
    finished pack (count, groups, seed, best validation score, elapsed and remaining time).
    """
    task = _remote(confirm_task, settings)
    data_ref = DataRef(ray.put(data))
    refs = [task.remote(data_ref, groups, config, seed, settings) for groups, config, seed in jobs]
    if echo is None:
        return ray.get(refs)
    started, pending, width = time.time(), list(refs), len(str(len(refs)))
    results: dict[int, dict[str, dict[str, Any]]] = {}
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        position = refs.index(finished[0])
        groups, _, seed = jobs[position]
        networks = results[position] = ray.get(finished[0])
        done, elapsed = len(refs) - len(pending), time.time() - started
        scores = [m["score"] for m in networks.values() if math.isfinite(m.get("score", math.nan))]
        outcome = f"best valid score {min(scores):.4f}" if scores else "no network scored"
        shown = groups[0] if len(groups) == 1 else f"{len(groups)} networks"
        echo(f"  [{done:>{width}}/{len(refs)}] {shown:<24} seed {seed}: {outcome} | {clock(elapsed)} elapsed, "
             f"~{clock(elapsed / done * len(pending))} left")
    return [results[position] for position in range(len(refs))]
