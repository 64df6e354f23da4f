"""The search: the spec's space as an Optuna define-by-run space, the scheduler, and the Ray Tune ``Tuner``.

``search.unit: pack`` (the default): a trial samples one configuration and trains
every candidate group's network under it (:mod:`mtl_search.train`); the first
trial runs the space's defaults, Optuna's TPE proposes the rest, and ASHA compares
trials directly (every trial trains the same groups). Its score is the search's
objective (:mod:`mtl_search.objective`).

``search.unit: group``: the group is a categorical hyperparameter (its string id).
Every candidate group is seeded with one trial through ``points_to_evaluate``
(those run first); Optuna's TPE proposes the rest; ASHA compares a trial only with
trials of its group. A group of one task has nothing to share or weigh, so for it
``sharing_depth`` and ``weighting`` are not sampled.
A weighting scheme's own hyperparameters (``dwa.temperature``,
``static.weight_<task>``, ...) are sampled only in trials that chose the scheme.

What a trial runs is :mod:`mtl_search.ray_train`; early stopping within a group
:mod:`mtl_search.scheduler`; ``trials.csv`` as trials end :mod:`mtl_search.recorder`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from mtl_search import storage
from mtl_search.config import ExperimentSpec
from mtl_search.data import PreparedData
from mtl_search.domain import Domain
from mtl_search.errors import Interrupted
from mtl_search.grouping import group_tasks
from mtl_search.leaderboard import trial_rows, trials_frame
from mtl_search.progress import Progress
from mtl_search.ray_session import tracking_callbacks
from mtl_search.ray_train import TRIAL_FUNCTIONS, DataRef, trial_resources
from mtl_search.recorder import TrialRecorder
from mtl_search.results import for_csv, read_trial_rows
from mtl_search.scheduler import GroupedASHAScheduler
from mtl_search.schemes import search_domains
from mtl_search.trial import TrialSettings
from mtl_search.tune_state import StateKeeper, repair, restore_deleted_checkpoints

#: Hyperparameters that mean nothing for a group of one task.
MULTI_TASK_ONLY = ("sharing_depth", "weighting")


def _suggest(trial: Any, name: str, domain: Domain) -> Any:
    if domain.kind == "choice":
        return trial.suggest_categorical(name, list(domain.values))
    if domain.kind == "int":
        return trial.suggest_int(name, domain.values[0], domain.values[1], log=domain.log)
    return trial.suggest_float(name, domain.values[0], domain.values[1], log=domain.log)


@dataclass(frozen=True)
class DefineByRunSpace:
    """An Optuna define-by-run space over the spec's hyperparameters (and, for ``unit: group``, the group).

    Called with an Optuna trial, it samples with ``trial.suggest_*`` and returns
    the constants, which ``OptunaSearch`` merges into the trial's config. A
    module-level class (not a closure) so the searcher's state can be pickled.

    With ``groups``, the group is the first hyperparameter; without (``unit: pack``),
    every trial trains every group and samples only the configuration.
    Right after the weighting, the chosen scheme's own hyperparameters are
    sampled (or fixed), under their trial-config keys ``<scheme>.<param>``:
    conditional parameters, absent from trials of other schemes.
    ``weighting_params`` holds the spec's overrides of their default domains.
    """

    domains: dict[str, Domain]
    groups: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    weighting_params: Mapping[str, Domain] = field(default_factory=dict)

    def __call__(self, trial: Any) -> dict[str, Any]:
        tasks = group_tasks(trial.suggest_categorical("group", list(self.groups))) if self.groups else self.tasks
        single = len(tasks) == 1
        constants: dict[str, Any] = {}
        for name, domain in self.domains.items():
            if single and name in MULTI_TASK_ONLY:
                continue
            if domain.is_constant:
                value = constants[name] = domain.values[0]
            else:
                value = _suggest(trial, name, domain)
            if name == "weighting":
                for key, scheme_domain in search_domains(value, tasks, self.weighting_params).items():
                    if scheme_domain.is_constant:
                        constants[key] = scheme_domain.values[0]
                    else:
                        _suggest(trial, key, scheme_domain)
        if single:
            constants["weighting"] = "equal"
            constants["sharing_depth"] = 0  # unused: one task shares its whole trunk with itself
        return constants


def seed_points(domains: dict[str, Domain], groups: Sequence[str], tasks: Sequence[str] = (),
                weighting_params: Mapping[str, Domain] | None = None) -> list[dict[str, Any]]:
    """Every sampled hyperparameter at its domain's default: one point per group, or (no ``groups``, ``unit: pack``)
    one point for the pack of all groups over ``tasks``.

    The default scheme's own hyperparameters are included only where that scheme
    samples them (Optuna ignores enqueued values that a trial never suggests, but
    a point should say only what the trial uses).
    """
    points = []
    for group in groups or [None]:
        members = group_tasks(group) if group is not None else tuple(tasks)
        single = len(members) == 1
        point: dict[str, Any] = {"group": group} if group is not None else {}
        for name, domain in domains.items():
            if single and name in MULTI_TASK_ONLY:
                continue
            value = domain.default()
            if not domain.is_constant:
                point[name] = value
            if name == "weighting":
                for key, scheme_domain in search_domains(value, members, weighting_params or {}).items():
                    if not scheme_domain.is_constant:
                        point[key] = scheme_domain.default()
        points.append(point)
    return points


@dataclass(frozen=True)
class SearchPlan:
    """Everything the search needs beyond the spec, resolved at run time.

    Args:
        groups: the candidate groups, in the order they get their seed trials.
        num_samples: trials in all (``spec.num_samples(groups)``).
        settings: what every trial shares (resolved GPUs, storage, seed, device options).
    """

    groups: list[str]
    num_samples: int
    settings: TrialSettings


def fit_interruptibly(tuner: tune.Tuner, result_dir: Path) -> tune.ResultGrid:
    """``tuner.fit()``, except that Ctrl-C or SIGTERM ends it as :class:`Interrupted` instead of a normal return.

    On SIGINT, Tune stops the loop, snapshots the experiment and returns as if it had finished (the running
    trial is stopped mid-training); it also leaves its SIGINT handler installed when no signal came, which
    would swallow a later Ctrl-C. Here SIGTERM takes Tune's graceful path too, the handler that was there
    before comes back either way, and a stop raises :class:`Interrupted` so no partial result is presented
    as final (``resume`` continues the stopped trial from its last checkpoint).
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()  # Tune installs no handler off the main thread; neither can this
    tune_catches = not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    before = signal.getsignal(signal.SIGINT)
    received: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.raise_signal(signal.SIGINT)  # Tune's handler: stop, snapshot, return

    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    # Tune's handler puts back the handler it replaced when (and only when) it fires.
    fired = tune_catches and signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, before)
    if fired:
        raise Interrupted(received[0] if received else signal.SIGINT, result_dir)
    return grid


def run_search(
    spec: ExperimentSpec,
    data: PreparedData,
    plan: SearchPlan,
    result_dir: Path,
    *,
    echo: Callable[[str], None] = print,
    verbose: bool = False,
    resume: bool = False,
) -> pd.DataFrame:
    """Run the Tune + Optuna search and return the trials table (also written to ``trials.csv``).

    With ``resume``, an interrupted search in ``result_dir`` continues where it stopped.
    """
    domains = spec.space.domains()
    max_epochs = spec.space.max_epochs
    # A pack trial trains every group: the space has no group, and one seed point (the defaults).
    searched = tuple(plan.groups) if spec.search.unit == "group" else ()
    tasks = tuple(data.tasks)
    searcher = OptunaSearch(
        space=DefineByRunSpace(domains, searched, tasks, spec.space.weighting_params),
        metric="score",
        mode="min",
        points_to_evaluate=seed_points(domains, searched, tasks, spec.space.weighting_params),
        sampler=optuna.samplers.TPESampler(n_startup_trials=spec.startup_trials(plan.num_samples), seed=spec.seed),
    )
    if spec.search.scheduler.type == "asha":
        scheduler: Any = GroupedASHAScheduler(
            time_attr="epoch", max_t=max_epochs, grace_period=spec.search.scheduler.grace_period,
            reduction_factor=spec.search.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    executor = spec.search.trial_executor
    trainable = tune.with_resources(
        tune.with_parameters(TRIAL_FUNCTIONS[executor], data=DataRef(ray.put(data)), settings=plan.settings),
        trial_resources(executor, plan.settings),
    )
    progress = Progress(plan.num_samples, {name: task.type for name, task in data.tasks.items()}, echo)
    trials_path = result_dir / storage.TRIALS_FILE
    recorder = TrialRecorder(trials_path, max_epochs=max_epochs, groups_of=plan.settings.trial_groups,
                             progress=progress)
    tune_path = result_dir / storage.TUNE_DIR
    keep_path = result_dir / storage.TUNE_STATE_DIR
    if resume:
        repaired = repair(tune_path, keep_path)
        if repaired:
            echo(f"resume: {repaired}")
    if resume and tune.Tuner.can_restore(str(tune_path)):
        for path in restore_deleted_checkpoints(tune_path):
            echo(f"resume: {path.parent.name[:40]}...: its last recorded checkpoint had been replaced by a newer "
                 f"one; continuing from the newer one")
        # Finished trials are kept as they are; unfinished and errored ones continue from their last
        # checkpoint; Optuna's state comes back with the experiment. (The run config, callbacks
        # included, is restored too: the recorder reloads trials.csv when the search starts.)
        tuner = tune.Tuner.restore(str(tune_path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                metric="score",
                mode="min",
                num_samples=plan.num_samples,
                max_concurrent_trials=spec.search.max_concurrent_trials,
                # An inline trial's process (torch already imported) can host the next trial. A Train
                # trial's cannot: an ASHA-stopped TorchTrainer.fit() never returns, so resetting its actor
                # for reuse waits forever; the actor must be killed (its Train run goes with it).
                reuse_actors=executor == "inline",
            ),
            run_config=tune.RunConfig(
                name=storage.TUNE_DIR,
                storage_path=str(result_dir),
                callbacks=[recorder, StateKeeper(tune_path, keep_path), *tracking_callbacks(spec, result_dir)],
                verbose=2 if verbose else 0,
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = fit_interruptibly(tuner, result_dir)
    # The recorder that ran may be a restored copy: trials.csv is the record. Add what no callback saw.
    rows = read_trial_rows(trials_path)
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id and trial_id not in rows:
            error = repr(result.error) if result.error else None
            config = result.config or {}
            groups = plan.settings.trial_groups(config)
            rows[trial_id] = trial_rows(trial_id, config, result.metrics, groups=groups, max_epochs=max_epochs,
                                        error=error)
    trials = trials_frame([row for trial in rows.values() for row in trial])
    storage.atomic_write_csv(result_dir / storage.TRIALS_FILE, for_csv(trials))
    return trials
