"""One experiment end to end: spec -> data -> candidate groups -> search -> CSVs.

This is the single driver path: ``run`` calls it on a local Ray, and a job
submitted to a cluster runs the same ``run`` command there.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from mtl_search import __version__, storage
from mtl_search.baselines import RawFeatures, baseline_rows, check_baselines
from mtl_search.config import HYPERPARAMETERS, ExperimentSpec, TaskSpec
from mtl_search.data import PreparedData, prepare, raw_features
from mtl_search.errors import Interrupted, NothingToDo, ResultsMissingError, ResumeRefused
from mtl_search.estimate import rank_agreement
from mtl_search.fingerprint import differences, fingerprint
from mtl_search.grouping import grouping_groups
from mtl_search.leaderboard import (
    add_baseline_rows,
    add_estimates,
    best_per_group,
    confirm_table,
    format_top,
    rank_groupings,
    selection_csv,
    task_values,
)
from mtl_search.plots import plot_affinity
from mtl_search.ray_session import check_resources, connect_ray, resolve_gpus, tracking_callbacks
from mtl_search.ray_tasks import Measurements, retrain, run_measurements
from mtl_search.report import write_report
from mtl_search.results import AFFINITY_PNG, NLOSS, OK_STATUSES, VALID, column, for_csv
from mtl_search.search import SearchPlan, run_search
from mtl_search.spec_file import literal_override, load_spec
from mtl_search.train import split_packs
from mtl_search.trial import TrialSettings

Echo = Callable[[str], None]


@dataclass
class ExperimentResult:
    """What a finished experiment wrote (``result_dir``: for a URI output, the local staging copy)."""

    result_dir: Path
    trials: pd.DataFrame
    groups: pd.DataFrame
    leaderboard: pd.DataFrame
    wall_s: float


def resolved_spec(spec: ExperimentSpec, data: PreparedData) -> ExperimentSpec:
    """The spec with the tasks that were actually used written out (a builtin's defaults included)."""
    tasks = {name: TaskSpec(column=t.column, type=t.type, positive=list(t.positive) or None)  # type: ignore[arg-type]
             for name, t in data.tasks.items()}
    return spec.model_copy(update={"data": spec.data.model_copy(update={"tasks": tasks})})


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the run as :class:`Interrupted` (exit 143, what finished kept), as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def rank_tables(trials: pd.DataFrame, data: PreparedData, groups: list[str], spec: ExperimentSpec,
                baselines: Mapping[str, Mapping[str, float]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``groups.csv`` (trained and estimated groups) and ``leaderboard.csv``, as frames."""
    task_types = {name: task.type for name, task in data.tasks.items()}
    strategy = spec.grouping.strategy()
    by_group = best_per_group(trials, task_types, groups)
    by_group = add_estimates(by_group, task_types, lambda trained: strategy.estimate(list(task_types), trained))
    board = rank_groupings(by_group, task_types, max_groups=spec.grouping.max_groups, cost=spec.grouping.cost)
    return by_group, add_baseline_rows(board, task_types, baselines or {}, cost=spec.grouping.cost)


def write_tables(result_dir: Path, data: PreparedData, spec: ExperimentSpec, by_group: pd.DataFrame,
                 board: pd.DataFrame) -> None:
    """Write ``groups.csv``, ``leaderboard.csv`` and ``selection.csv``."""
    task_types = {name: task.type for name, task in data.tasks.items()}
    storage.atomic_write_csv(result_dir / storage.GROUPS_FILE, for_csv(by_group))
    storage.atomic_write_csv(result_dir / storage.LEADERBOARD_FILE, for_csv(board))
    storage.atomic_write_csv(result_dir / storage.SELECTION_FILE,
                             for_csv(selection_csv(by_group, task_types, cost=spec.grouping.cost)))


def run_experiment(
    spec: ExperimentSpec,
    *,
    overwrite: bool = False,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = False,
    echo: Echo = print,
    publish_to: str | None = None,
) -> ExperimentResult:
    """Run the whole experiment a spec describes and write its result directory.

    Args:
        spec: the experiment.
        overwrite: replace an existing result directory.
        resume: continue the interrupted search in the existing result directory: finished
            trials are kept, unfinished ones continue from their last checkpoint.
        address: the Ray cluster to join (default: ``RAY_ADDRESS``, else a local Ray).
        verbose: show Ray's own logs.
        echo: where progress lines go.
        publish_to: with ``resume``, the URI the results are copied to (a URI run resumed from its staging folder).

    Raises:
        UserError: the spec, the data or the result directory is unusable (before any training).
    """
    started = time.time()
    data = prepare(spec)
    spec.grouping.check_size(list(data.tasks))  # before any group is listed or anything is written
    check_baselines(data, spec.baselines)
    strategy = spec.grouping.strategy()
    if not strategy.needs_affinity:  # check the budget before anything is written
        spec.num_samples(strategy.propose(list(data.tasks)))
    tracking_callbacks(spec, spec.result_dir())  # a missing tracking package fails before anything runs
    # A URI output (s3://, gs://, file://) is written to a local staging folder and published at the end.
    location = storage.results_to_resume(spec) if resume else storage.prepare_results(spec, overwrite=overwrite)
    if publish_to is not None:  # resuming a URI run's staging folder: its results still go to the URI
        location = replace(location, uri=publish_to)
    result_dir = location.path
    if resume and (result_dir / storage.RUN_FILE).is_file() and (result_dir / storage.LEADERBOARD_FILE).is_file():
        storage.unlock_result_dir(result_dir)
        raise NothingToDo(f"{result_dir} holds a finished run (run.json, leaderboard.csv): nothing to resume, and "
                          f"nothing was retrained. Review it with `mtl-search leaderboard {result_dir}` (plots: "
                          f"`mtl-search report {result_dir}`)")
    try:
        resolved = resolved_spec(spec, data)
        columns = [*data.input_columns, *(task.column for task in data.tasks.values())]
        started_with = fingerprint(resolved, columns)
        if resume:
            _refuse_changes(result_dir, started_with)
        else:
            storage.atomic_write_text(result_dir / storage.CONFIG_FILE, resolved.to_yaml())
            storage.atomic_write_text(result_dir / storage.FINGERPRINT_FILE, json.dumps(started_with, indent=1))
        echo(data.summary())
        connect_ray(address, verbose=verbose)
        settings = TrialSettings.from_spec(spec, gpus_per_worker=resolve_gpus(spec),
                                           train_storage=str(result_dir / storage.TRAIN_DIR))
        check_resources(settings.cpus_per_worker, settings.gpus_per_worker)
    except BaseException:  # the run never started: leave the folder as it was
        if location.replaced is not None:
            storage.restore_replaced(location)
        elif not resume:
            shutil.rmtree(result_dir, ignore_errors=True)  # it holds only what this run just wrote
        else:
            storage.unlock_result_dir(result_dir)
        raise
    storage.discard_replaced(location)  # the old results --overwrite moved aside: the new run has started
    measured: Measurements | None = None
    if strategy.needs_affinity:
        measured = read_measurements(result_dir, strategy.needs_estimates) if resume else None
        if measured is None:
            measured = run_measurements(spec, data, settings, echo=echo)
            write_measurements(result_dir, list(data.tasks), measured)
    groups = strategy.propose(list(data.tasks), None if measured is None else measured.affinity,
                              None if measured is None else measured.estimates)
    settings = replace(settings, groups=tuple(groups))
    plan = SearchPlan(groups=groups, num_samples=spec.num_samples(groups), settings=settings)
    if spec.search.unit == "pack":
        what = (f"{plan.num_samples} configurations, each training all {len(groups)} networks as "
                f"{len(split_packs(groups, spec.search.pack_size))} pack(s)")
    else:
        what = f"{plan.num_samples} trials of one network"
    echo(f"search: {len(groups)} candidate groups, {what}, {spec.search.max_concurrent_trials} at a time, "
         f"executor {spec.search.trial_executor}, {settings.gpus_per_worker:g} GPU per worker")
    echo(f"results: {location}")
    if location.uri is not None:
        echo(f"staging: {result_dir} (copied to {location.uri} when the run ends; if the run is cut off, "
             f"`mtl-search resume {result_dir}` continues from it)")
    finished = False
    try:
        with _sigterm_interrupts():
            trials = run_search(spec, data, plan, result_dir, echo=echo, verbose=verbose, resume=resume)
            features = raw_features(spec.data, data) if spec.baselines else {}  # read once, for every baseline fit
            baselines = baseline_rows(data, features, spec.baselines, seed=spec.seed)
            by_group, board = rank_tables(trials, data, groups, spec, baselines)
            if spec.confirm is not None:
                confirmed = confirm_groupings(spec, data, features, settings, board, by_group, trials,
                                              confirm_seeds(spec), top_k=spec.confirm.top_k, echo=echo)
                storage.atomic_write_csv(result_dir / storage.CONFIRM_FILE, for_csv(confirmed))
            write_tables(result_dir, data, spec, by_group, board)  # only now: an interrupted run shows no final table
            agreement = None
            if measured is not None and measured.estimates:
                trained = by_group[~by_group["estimated"].astype(bool)]
                agreement = rank_agreement(measured.estimates, task_values(trained, lambda t: column(VALID, t, NLOSS)))
                echo(f"estimate: estimated vs trained validation losses of the trained groups, mean per-task "
                     f"Spearman {agreement:.2f}")
            wall = time.time() - started
            _write_run_info(result_dir, spec, plan, trials, wall, estimate_rank_correlation=agreement)
            _draw_plots(result_dir, echo)
            finished = True
    except KeyboardInterrupt:  # Ctrl-C after the search (baselines, confirm, plots)
        raise Interrupted(signal.SIGINT, result_dir) from None
    except Interrupted as exc:
        exc.result_dir = exc.result_dir or result_dir
        raise
    finally:  # after a failure too, so the trials that finished reach shared storage
        storage.unlock_result_dir(result_dir)
        storage.publish_results(location, echo=echo, remove_staging=finished)

    failed = int((~trials["status"].isin(OK_STATUSES)).sum()) if len(trials) else 0
    count = trials["trial_id"].nunique() if len(trials) else 0
    trained = f"{count} trials ({len(trials)} networks, {failed} failed)" if spec.search.unit == "pack" else (
        f"{count} trials ({failed} failed)")
    echo("")
    echo(f"{trained} in {wall / 60:.1f} min; top groupings (ranked by validation; test_score is held-out):")
    echo(format_top(board))
    echo(f"\nleaderboard: {storage.join_uri(str(location), storage.LEADERBOARD_FILE)}")
    return ExperimentResult(result_dir, trials, by_group, board, wall)


def resume_experiment(result_dir: Path, *, address: str | None = None, verbose: bool = False,
                      echo: Echo = print) -> ExperimentResult:
    """Continue the interrupted experiment in ``result_dir`` with its own resolved spec (``config.yaml``).

    Raises:
        UserError: ``result_dir`` holds no experiment to resume.
    """
    result_dir = Path(result_dir).expanduser().resolve()
    config = result_dir / storage.CONFIG_FILE
    if not config.is_file():
        raise ResultsMissingError(f"{result_dir} holds no {storage.CONFIG_FILE}: it is not an mtl_search result "
                                  "directory; pass the folder `run` wrote, e.g. results/<name>")
    # The folder may have moved since: its location, not the recorded output, is where to continue.
    spec = load_spec(config, [literal_override("output", result_dir.parent), literal_override("name", result_dir.name)])
    # A URI run's staging folder: once finished, its results go where the run was to put them.
    started = load_spec(config)
    publish_to = storage.join_uri(started.output, started.name) if storage.is_uri(started.output) else None
    if publish_to is not None:
        echo(f"resume: staging folder of {publish_to}; the results are copied there when the run ends")
    return run_experiment(spec, resume=True, address=address, verbose=verbose, echo=echo, publish_to=publish_to)


def _refuse_changes(result_dir: Path, now: dict) -> None:
    """Refuse to resume with a spec or data other than the run started with (``fingerprint.json``)."""
    path = result_dir / storage.FINGERPRINT_FILE
    if not path.is_file():  # a run started before fingerprints were recorded: nothing to compare
        return
    try:
        recorded = json.loads(path.read_text())
    except ValueError as exc:
        raise ResumeRefused(f"cannot resume {result_dir}: {path.name} is damaged ({exc}); it records what the run "
                            "started with, so the run cannot be checked") from None
    changed = differences(recorded, now)
    if changed:
        shown = "\n  ".join(changed[:20]) + (f"\n  ... and {len(changed) - 20} more" if len(changed) > 20 else "")
        raise ResumeRefused(
            f"cannot resume {result_dir}: the spec or the data changed since the run started, and a search "
            f"continued with other settings or data would rank trials that are not comparable:\n  {shown}\n"
            f"Put back what changed (the spec is {result_dir / storage.CONFIG_FILE}), or start a new run with the "
            "new settings (`mtl-search run SPEC --name NEW_NAME`)")


def confirm_seeds(spec: ExperimentSpec) -> list[int]:
    """Fresh seeds for confirmation (``confirm.seeds`` of them; none without ``confirm``): never the search's own."""
    if spec.confirm is None:
        return []
    return [spec.seed + 1 + k for k in range(spec.confirm.seeds)]


def confirm_groupings(spec: ExperimentSpec, data: PreparedData, features: RawFeatures, settings: TrialSettings,
                      board: pd.DataFrame, by_group: pd.DataFrame, trials: pd.DataFrame, seeds: list[int], *,
                      top_k: int, echo: Echo = print) -> pd.DataFrame:
    """Retrain the networks of the ``top_k`` groupings with ``seeds`` and tabulate their **test** metrics.

    A trained group is retrained from its best trial's hyperparameters; an estimated
    group (never trained) from the space's defaults, as a seed trial would be. Groups
    whose best networks share a configuration (the same trial) are retrained as one
    pack per seed. The spec's baselines are refitted with the same seeds (on
    ``features``, their raw columns).
    """
    ranked = board[~board["baseline"].astype(bool)] if "baseline" in board else board
    top = ranked.head(top_k)
    groups = sorted({g for grouping in top["grouping"] for g in grouping_groups(str(grouping))})
    best = by_group.set_index("group")["best_trial"]
    packs: dict[str, list[str]] = {}  # best trial (or "" for the defaults) -> its groups
    for group in groups:
        trial = best.get(group)
        packs.setdefault(trial if isinstance(trial, str) and (trials["trial_id"] == trial).any() else "", []).append(
            group)
    jobs = [(tuple(members), _trial_config(spec, trials, trial, members), seed)
            for trial, members in packs.items() for seed in seeds]
    echo(f"confirm: retraining {len(groups)} networks of the top {len(top)} groupings with seeds {seeds} "
         f"({len(packs)} configuration(s), {len(jobs)} packs)")
    def refit_baselines() -> list[dict[str, Mapping[str, float]]]:
        # One thread: beside the Ray tasks, scikit-learn's OpenMP threads would oversubscribe the cores and
        # spin (measured on 2 cores: 30 s for confirm with the GBDT refits at full width, 10.5 s with one
        # thread, 13.7 s one after the other).
        with threadpool_limits(limits=1):
            return [baseline_rows(data, features, spec.baselines, seed=seed) for seed in seeds]

    with ThreadPoolExecutor(max_workers=1) as pool:  # the baselines refit here while Ray retrains the networks
        refits = pool.submit(refit_baselines)
        results = {(group, seed): networks[group]
                   for (members, _, seed), networks in zip(jobs, retrain(data, jobs, settings, echo=echo), strict=True)
                   for group in members}
        per_seed = refits.result()
    references = {label: [rows[label] for rows in per_seed] for label in (per_seed[0] if per_seed else {})}
    return confirm_table(top, {n: t.type for n, t in data.tasks.items()}, results, seeds, references)


def _trial_config(spec: ExperimentSpec, trials: pd.DataFrame, trial: str, groups: list[str]) -> dict[str, Any]:
    """The hyperparameters ``trial`` trained ``groups`` with (the space's defaults when ``trial`` is empty)."""
    if not trial:
        return spec.space.defaults()
    rows = trials[(trials["trial_id"] == trial) & trials["group"].isin(groups)]
    # A multi-task group's row: its sharing_depth is the trial's (a one-task group shares everything).
    row = rows.loc[rows["n_tasks"].astype(int).idxmax()]
    config = {k: row[k] for k in row.index if k in HYPERPARAMETERS or ("." in k and pd.notna(row[k]))}
    config["head_sizes"] = "" if pd.isna(config["head_sizes"]) else config["head_sizes"]
    return config


def _draw_plots(result_dir: Path, echo: Callable[[str], None]) -> None:
    """``plots/*.png`` once the tables exist; a plot that cannot be drawn never fails the run's results."""
    try:
        write_report(result_dir, keep_going=True, echo=echo)
    except Exception as exc:  # noqa: BLE001 - the CSVs are the results; plots can be redrawn later
        echo(f"warning: no plots ({type(exc).__name__}: {exc}); `mtl-search report {result_dir}` redraws them")


def read_measurements(result_dir: Path, with_estimates: bool) -> Measurements | None:
    """The all-task run's results an interrupted run already wrote (None when a file it needs is missing)."""
    affinity_file, estimates_file = result_dir / storage.AFFINITY_FILE, result_dir / storage.ESTIMATES_FILE
    if not affinity_file.exists() or (with_estimates and not estimates_file.exists()):
        return None
    affinity = pd.read_csv(affinity_file, index_col=0).to_numpy(dtype=float)
    estimates: dict[str, dict[str, float]] = {}
    if with_estimates:
        for row in pd.read_csv(estimates_file).itertuples(index=False):
            estimates.setdefault(str(row.group), {})[str(row.task)] = float(row.estimated_nloss)
    return Measurements(affinity, estimates)


def write_measurements(result_dir: Path, tasks: list[str], measured: Measurements) -> None:
    """``affinity.csv`` (row = the task whose step is taken, column = the task it affects), its heatmap, and
    ``estimates.csv`` (group, task, estimated_nloss) when group losses were estimated."""
    if measured.estimates:
        storage.atomic_write_csv(result_dir / storage.ESTIMATES_FILE, pd.DataFrame(
            [(group, task, value) for group, losses in measured.estimates.items() for task, value in losses.items()],
            columns=["group", "task", "estimated_nloss"]))
    affinity = measured.affinity
    frame = pd.DataFrame(affinity, index=pd.Index(tasks, name="source"), columns=tasks)
    storage.atomic_write_text(result_dir / storage.AFFINITY_FILE, frame.to_csv())
    plot_affinity(frame, result_dir / storage.PLOTS_DIR / AFFINITY_PNG)


def _write_run_info(result_dir: Path, spec: ExperimentSpec, plan: SearchPlan, trials: pd.DataFrame,
                    wall: float, *, estimate_rank_correlation: float | None = None) -> None:
    ok = trials[trials["status"].isin(OK_STATUSES)] if len(trials) else trials
    info = {
        "mtl_search_version": __version__,
        "ray_version": version("ray"),
        "torch_version": version("torch"),
        "python": platform.python_version(),
        "host": platform.node(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall, 2),
        "trials": int(trials["trial_id"].nunique()) if len(trials) else 0,
        "networks": len(trials),
        "networks_failed": int(len(trials) - len(ok)),
        "trial_executor": spec.search.trial_executor,
        "gpus_per_worker": plan.settings.gpus_per_worker,
        "median_trial_wall_s": _median(ok, "wall_s"),
        "median_train_loop_s": _median(ok, "train_loop_s"),
        "median_overhead_s": _median(ok, "overhead_s"),
    }
    started_with = result_dir / storage.FINGERPRINT_FILE
    if started_with.is_file():
        info["fingerprint"] = json.loads(started_with.read_text())
    if estimate_rank_correlation is not None:  # grouping.candidates: estimate (NaN: too few trained groups)
        info["estimate_rank_correlation"] = (None if math.isnan(estimate_rank_correlation)
                                             else round(estimate_rank_correlation, 3))
    storage.atomic_write_text(result_dir / storage.RUN_FILE, json.dumps(info, indent=2) + "\n")


def _median(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame or frame.empty:
        return None
    value = frame[column].astype(float).median()
    return None if pd.isna(value) else round(float(value), 3)
