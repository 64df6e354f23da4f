"""The only Ray Tune code: the spec's space as an Optuna define-by-run space,
the scheduler, the Tuner, and callbacks that record and show trials as they end.

The group is a categorical hyperparameter (its string id). Every candidate
group is seeded with one trial through ``points_to_evaluate`` (those run
first); Optuna's TPE proposes the rest. A group of one task has nothing to
share or weigh, so for it ``sharing_depth`` and ``weighting`` are not sampled.
A weighting scheme's own hyperparameters (``dwa.temperature``,
``static.weight_<task>``, ...) are sampled only in trials that chose the scheme.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from mtl_search import storage
from mtl_search.config import Domain, ExperimentSpec
from mtl_search.data import PreparedData
from mtl_search.grouping import group_tasks
from mtl_search.leaderboard import best_per_group, rank_groupings, trial_row, trials_frame

#: Hyperparameters that mean nothing for a group of one task.
MULTI_TASK_ONLY = ("sharing_depth", "weighting")
#: Ray Train's controller polls its workers this often (seconds). Ray's default
#: (2 s) makes every per-epoch report cost about 1.9 s; measured here, 0.05 s cuts that to 0.055 s.
TRAIN_POLL_INTERVAL_S = "0.05"

log = logging.getLogger(__name__)


def _weighting_domains(scheme: str, tasks: Sequence[str], overrides: Mapping[str, Domain]) -> dict[str, Domain]:
    from mtl_search.weighting import search_domains  # lazy: pulls in torch

    return search_domains(scheme, tasks, overrides)


def _suggest(trial: Any, name: str, domain: Domain) -> Any:
    if domain.kind == "choice":
        return trial.suggest_categorical(name, list(domain.values))
    if domain.kind == "int":
        return trial.suggest_int(name, domain.values[0], domain.values[1], log=domain.log)
    return trial.suggest_float(name, domain.values[0], domain.values[1], log=domain.log)


@dataclass(frozen=True)
class DefineByRunSpace:
    """An Optuna define-by-run space over the group and the spec's hyperparameters.

    Called with an Optuna trial, it samples with ``trial.suggest_*`` and returns
    the constants, which ``OptunaSearch`` merges into the trial's config. A
    module-level class (not a closure) so the searcher's state can be pickled.

    Right after the weighting, the chosen scheme's own hyperparameters are
    sampled (or fixed), under their trial-config keys ``<scheme>.<param>``:
    conditional parameters, absent from trials of other schemes.
    ``weighting_params`` holds the spec's overrides of their default domains.
    """

    domains: dict[str, Domain]
    groups: tuple[str, ...]
    weighting_params: Mapping[str, Domain] = field(default_factory=dict)

    def __call__(self, trial: Any) -> dict[str, Any]:
        group = trial.suggest_categorical("group", list(self.groups))
        tasks = group_tasks(group)
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
                for key, scheme_domain in _weighting_domains(value, tasks, self.weighting_params).items():
                    if scheme_domain.is_constant:
                        constants[key] = scheme_domain.values[0]
                    else:
                        _suggest(trial, key, scheme_domain)
        if single:
            constants["weighting"] = "equal"
            constants["sharing_depth"] = 0  # unused: one task shares its whole trunk with itself
        return constants


def seed_points(domains: dict[str, Domain], groups: Sequence[str],
                weighting_params: Mapping[str, Domain] | None = None) -> list[dict[str, Any]]:
    """One point per group with every sampled hyperparameter at its domain's default.

    The default scheme's own hyperparameters are included only where that scheme
    samples them (Optuna ignores enqueued values that a trial never suggests, but
    a point should say only what the trial uses).
    """
    points = []
    for group in groups:
        tasks = group_tasks(group)
        single = len(tasks) == 1
        point: dict[str, Any] = {"group": group}
        for name, domain in domains.items():
            if single and name in MULTI_TASK_ONLY:
                continue
            value = domain.default()
            if not domain.is_constant:
                point[name] = value
            if name == "weighting":
                for key, scheme_domain in _weighting_domains(value, tasks, weighting_params or {}).items():
                    if not scheme_domain.is_constant:
                        point[key] = scheme_domain.default()
        points.append(point)
    return points


@dataclass(frozen=True)
class SearchPlan:
    """Everything the search needs beyond the spec, resolved at run time."""

    groups: list[str]
    num_samples: int
    gpus_per_worker: float


def resolve_num_samples(spec: ExperimentSpec, groups: Sequence[str]) -> int:
    """``search.num_samples``: ``auto`` is twice the candidate groups, ``groups`` one trial per group.

    Raises:
        SpecError: fewer samples than groups (every group needs a seed trial).
    """
    from mtl_search.errors import SpecError

    requested = spec.search.num_samples
    if requested == "auto":
        return 2 * len(groups)
    if requested == "groups":
        return len(groups)
    if requested < len(groups):
        raise SpecError(
            f"search.num_samples={requested} is smaller than the {len(groups)} candidate groups, and every "
            f"group needs at least one trial: set search.num_samples >= {len(groups)} (or 'auto'), or "
            "propose fewer groups (grouping.max_group_size)"
        )
    return int(requested)


# --------------------------------------------------------------------------- callbacks


class TrialRecorder(Callback):
    """Keeps every trial's last result and rewrites ``trials.csv`` whenever a trial ends.

    A crash therefore leaves every finished trial on disk, and a resumed search
    (``Tuner.restore``) starts from the rows already there. ASHA-stopped trials
    never return from their function, so the last *reported* result is what counts.
    """

    def __init__(self, path: Path, *, max_epochs: int, progress: Progress | None = None):
        self.path = path
        self.max_epochs = max_epochs
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] = {}

    def setup(self, **info: Any) -> None:
        self.rows = read_trial_rows(self.path)
        if self.progress is not None:
            self.progress.start(already_done=len(self.rows))

    def _record(self, trial: Any, error: str | None = None) -> None:
        row = trial_row(trial.trial_id, trial.config, trial.last_result or None,
                        max_epochs=self.max_epochs, error=error)
        self.rows[trial.trial_id] = row
        storage.atomic_write_csv(self.path, trials_frame(self.rows.values()))
        if self.progress is not None:
            self.progress.running = max(0, self.progress.running - 1)
            self.progress(row, list(self.rows.values()))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress is not None:
            self.progress.running += 1

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, error=_error_text(trial))


def read_trial_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an existing ``trials.csv`` by trial id (empty if there is none)."""
    if not path.exists():
        return {}
    frame = pd.read_csv(path, dtype={"trial_id": str, "head_sizes": str, "reason": str},
                        keep_default_na=True).fillna({"head_sizes": "", "reason": ""})
    return {str(row["trial_id"]): row for row in frame.to_dict("records")}


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            with open(path) as handle:
                return handle.read()
    except OSError:
        pass
    return "the trial failed (no error file)"


class Progress:
    """One line per finished trial: trials done / running / total, the trial's outcome, the best grouping
    so far (by validation), elapsed and estimated remaining time.

    Args:
        total: trials in the search.
        task_types: task -> type, to rank groupings from the finished trials.
        echo: where lines go.
    """

    def __init__(self, total: int, task_types: Mapping[str, str] | None = None,
                 echo: Callable[[str], None] = print):
        self.total = total
        self.task_types = dict(task_types or {})
        self.echo = echo
        self.running = 0
        self.start()

    def start(self, already_done: int = 0) -> None:
        """(Re)start the clock; ``already_done`` trials finished in an earlier, interrupted run."""
        self.started = time.time()
        self.done = self.first = already_done
        if already_done:
            self.echo(f"resuming: {already_done} of {self.total} trials already finished")

    def best_so_far(self, rows: Iterable[Mapping[str, Any]]) -> str:
        """The grouping that would rank first now, with its validation score ("-" until one exists)."""
        if not self.task_types:
            return "-"
        groups = sorted({str(r["group"]) for r in rows})
        board = rank_groupings(best_per_group(trials_frame(rows), self.task_types, groups), self.task_types, limit=1)
        return "none yet" if board.empty else f"{board.loc[0, 'grouping']} ({board.loc[0, 'valid_score']:.4f})"

    def __call__(self, row: Mapping[str, Any], rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.done += 1
        elapsed = time.time() - self.started
        remaining = elapsed / max(1, self.done - self.first) * (self.total - self.done)
        score = row.get("score")
        finite = isinstance(score, float) and score == score
        outcome = f"score {score:.4f}" if finite else row["status"]
        detail = row["status"] if row["status"] != "completed" else f"{row['epochs_run']} epochs"
        self.echo(
            f"[{self.done:>{len(str(self.total))}}/{self.total}, {self.running} running] {row['group']:<24} "
            f"{outcome:<14} ({detail}, {row.get('wall_s', float('nan')):.1f} s) | best so far "
            f"{self.best_so_far(rows)} | {_clock(elapsed)} elapsed, ~{_clock(remaining)} left"
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- the search


def connect_ray(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Start or join Ray, with Train's faster polling and quiet logs unless ``verbose``."""
    import ray

    quiet_logs(verbose)
    if ray.is_initialized():
        return
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S}
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # A local machine has no spot preemption to watch for: skip the watcher actor each Train run starts.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
        warn_about_other_local_ray()
    ray.init(
        address=address,
        num_cpus=num_cpus,
        runtime_env={"env_vars": env},
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=verbose,
    )


def warn_about_other_local_ray() -> None:
    """Say so when another Ray instance already runs on this machine (before this run starts its own).

    Ray Train's placement-group cleaner finds "its" cluster by address and, with two local
    instances and no address to tell them apart, fails; a Train trial stopped early then keeps its
    resources and the search can hang. Measured here with two searches started at once.
    """
    import sys

    try:
        from ray._private.services import find_gcs_addresses  # no public API lists local instances
        running = find_gcs_addresses()
    except Exception:  # noqa: BLE001 - only a warning depends on it
        return
    if running:
        print(f"warning: another Ray instance is running on this machine ({', '.join(sorted(running))}). "
              "Two local Ray instances confuse Ray Train's clean-up and a search may hang: let the other one "
              "finish, or start one shared instance (`ray start --head`) and pass --address to every run.",
              file=sys.stderr)


def quiet_logs(verbose: bool) -> None:
    """Keep the console to mtl_search's own progress lines unless ``verbose``."""
    import optuna

    if verbose:
        return
    # Tune's newer console output prints banners even at verbose=0; the legacy reporter is silent at 0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Notes that say nothing a user of a local run can act on: "operation took 1.0 s" on a busy
    # machine, and that token authentication is on (it is, and should stay on; see cluster/README.md).
    for name in ("ray.tune.utils.util", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune warns when short trials checkpoint every epoch ("snapshotting ... may become a bottleneck");
    # mtl_search checkpoints per epoch on purpose (resume), and the snapshot is small.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def resolve_gpus(spec: ExperimentSpec) -> float:
    """``resources.gpus_per_worker``; ``auto`` is 1 when the Ray cluster has a GPU, else 0."""
    import ray

    requested = spec.resources.gpus_per_worker
    if requested == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(requested)


def tracking_callbacks(spec: ExperimentSpec, result_dir: Path) -> list[Any]:
    """Ray Tune logger callbacks for the spec's ``tracking`` (none, mlflow or tensorboard).

    MLflow logs to a local file store, ``<result dir>/mlruns`` (view it with ``mlflow ui
    --backend-store-uri <that folder>``); set ``MLFLOW_TRACKING_URI`` to log to a server instead.
    TensorBoard event files go into each trial's folder under ``tune/`` (``tensorboard --logdir``).

    Raises:
        UserError: the tracking package is not installed (``pip install 'mtl-search[tracking]'``).
    """
    from mtl_search.errors import UserError

    if spec.tracking == "none":
        return []
    try:
        if spec.tracking == "mlflow":
            import mlflow  # noqa: F401 - fail here, clearly, rather than inside Tune
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                uri = (result_dir / "mlruns").as_uri()
                # MLflow 3 keeps its file store but asks for consent; a local folder needs no server.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=spec.name)]
        import tensorboardX  # noqa: F401
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]
    except ImportError as exc:
        raise UserError(f"tracking: {spec.tracking} needs a package that is not installed ({exc.name}); "
                        "install it with pip install 'mtl-search[tracking]', or set tracking: none") from None


def default_config(spec: ExperimentSpec) -> dict[str, Any]:
    """Every hyperparameter at its domain's default (what a group's seed trial uses)."""
    return {name: domain.default() for name, domain in spec.space.domains().items() if isinstance(domain, Domain)}


def measure_affinity(spec: ExperimentSpec, data: PreparedData, *, echo: Callable[[str], None] = print) -> Any:
    """Run the all-task affinity measurement as a Ray task holding one trial's resources."""
    import ray

    from mtl_search.ray_train import DataRef, affinity_task
    from mtl_search.train import TrialParams

    epochs = spec.grouping.affinity.epochs or spec.space.max_epochs
    params = TrialParams.from_config({**default_config(spec), "weighting": "equal", "epochs": epochs})
    gpus = resolve_gpus(spec)
    echo(f"affinity: one all-task network ({params.depth} x {params.width}, every layer shared), {epochs} epochs, "
         f"lookahead every {spec.grouping.affinity.every} step(s)")
    started = time.time()
    task = ray.remote(affinity_task).options(num_cpus=spec.resources.cpus_per_worker, num_gpus=gpus)
    affinity = ray.get(task.remote(DataRef(ray.put(data)), list(data.tasks), params, spec.seed,
                                   spec.grouping.affinity.every, spec.resources.cpus_per_worker, gpus > 0))
    echo(f"affinity: measured in {time.time() - started:.1f} s")
    return affinity


def retrain(spec: ExperimentSpec, data: PreparedData, jobs: Sequence[tuple[str, dict[str, Any], int]],
            echo: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Retrain (group, config, seed) jobs as Ray tasks holding one trial's resources each; their metrics.

    With ``echo``, one line per finished run (count, group, seed, validation score, elapsed and remaining time).
    """
    import ray

    from mtl_search.ray_train import DataRef, confirm_task

    gpus = resolve_gpus(spec)
    task = ray.remote(confirm_task).options(num_cpus=spec.resources.cpus_per_worker, num_gpus=gpus)
    data_ref = DataRef(ray.put(data))
    refs = [task.remote(data_ref, group, config, seed, spec.resources.cpus_per_worker, gpus > 0)
            for group, config, seed in jobs]
    if echo is None:
        return ray.get(refs)
    started, pending, width = time.time(), list(refs), len(str(len(refs)))
    results: dict[int, dict[str, Any]] = {}
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        position = refs.index(finished[0])
        group, _, seed = jobs[position]
        metrics = results[position] = ray.get(finished[0])
        done, elapsed = len(refs) - len(pending), time.time() - started
        score = metrics.get("score", float("nan"))
        outcome = f"valid score {score:.4f}" if isinstance(score, float) and math.isfinite(score) else metrics["status"]
        echo(f"  [{done:>{width}}/{len(refs)}] {group:<24} seed {seed}: {outcome} | {_clock(elapsed)} elapsed, "
             f"~{_clock(elapsed / done * len(pending))} left")
    return [results[position] for position in range(len(refs))]


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
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from mtl_search.ray_train import TRIAL_FUNCTIONS, DataRef, trial_resources
    from mtl_search.scheduler import GroupedASHAScheduler

    domains = spec.space.domains()
    max_epochs = spec.space.max_epochs
    searcher = OptunaSearch(
        space=DefineByRunSpace(domains, tuple(plan.groups), spec.space.weighting_params),
        metric="score",
        mode="min",
        points_to_evaluate=seed_points(domains, plan.groups, spec.space.weighting_params),
        seed=spec.seed,
    )
    if spec.search.scheduler.type == "asha":
        scheduler: Any = GroupedASHAScheduler(
            time_attr="epoch", max_t=max_epochs, grace_period=spec.search.scheduler.grace_period,
            reduction_factor=spec.search.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    executor = spec.search.trial_executor
    system = {
        "seed": spec.seed,
        "workers": spec.resources.workers_per_trial,
        "cpus_per_worker": spec.resources.cpus_per_worker,
        "gpus_per_worker": plan.gpus_per_worker,
        "train_storage": str(result_dir / storage.TRAIN_DIR),
        "checkpoint_every": spec.search.checkpoint_every,
        "train_options": spec.train.model_dump(),
    }
    data_ref = DataRef(ray.put(data))
    trainable = tune.with_resources(
        tune.with_parameters(TRIAL_FUNCTIONS[executor], data=data_ref, system=system),
        trial_resources(executor, cpus_per_worker=spec.resources.cpus_per_worker,
                        gpus_per_worker=plan.gpus_per_worker),
    )
    progress = Progress(plan.num_samples, {name: task.type for name, task in data.tasks.items()}, echo)
    trials_path = result_dir / storage.TRIALS_FILE
    recorder = TrialRecorder(trials_path, max_epochs=max_epochs, progress=progress)
    tune_path = result_dir / storage.TUNE_DIR
    if resume and tune.Tuner.can_restore(str(tune_path)):
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
                callbacks=[recorder, *tracking_callbacks(spec, result_dir)],
                verbose=2 if verbose else 0,
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    # The recorder that ran may be a restored copy: trials.csv is the record. Add what no callback saw.
    rows = read_trial_rows(trials_path)
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id and trial_id not in rows:
            error = repr(result.error) if result.error else None
            rows[trial_id] = trial_row(trial_id, result.config or {}, result.metrics, max_epochs=max_epochs,
                                       error=error)
    trials = trials_frame(rows.values())
    storage.atomic_write_csv(result_dir / storage.TRIALS_FILE, trials)
    return trials
