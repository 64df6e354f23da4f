"""From trial results to the three CSVs: trials, best network per group, groupings.

Honesty rules kept here:

* A group's network is its best trial by **validation** score; a grouping's
  rank is by the **validation** score built from those networks.
* Every number the leaderboard reports as ``score`` or ``test_*`` comes from the
  **test** split, which chose nothing.
* Failed trials (error, diverged) never score; the leaderboard says how many there were.

Pandas: no Ray, no torch. Column names and statuses are :mod:`mtl_search.results`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mtl_search.config import HYPERPARAMETERS
from mtl_search.grouping import (
    EXACT_TASKS,
    best_partitions,
    compact_grouping,
    group_id,
    group_tasks,
    grouping_groups,
    grouping_id,
)
from mtl_search.results import (
    NLOSS,
    OK_STATUSES,
    TEST,
    VALID,
    Status,
    column,
    headline,
    is_task_key,
    key_column,
    metric_key,
    network_key,
    score_key,
)
from mtl_search.selection import Network, budgets_for, selection_table

TRIAL_COLUMNS = ("trial_id", "group", "n_tasks", "status", "reason", *HYPERPARAMETERS, "epochs_run",
                 "best_epoch", "score", "test_score", "params", "threads", "wall_s", "train_loop_s", "overhead_s")
INFERENCE_COSTS = ("networks", "params")
#: The most groupings ``leaderboard.csv`` lists (all of them up to 7 tasks: Bell(7) = 877).
LEADERBOARD_LIMIT = 1000


def trial_rows(
    trial_id: str,
    config: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    *,
    groups: Sequence[str],
    max_epochs: int,
    error: str | None = None,
) -> list[dict[str, Any]]:
    """The ``trials.csv`` rows of one trial, one per network it trained, from its config and last report.

    A network's ``status`` is ``completed`` (its trial ran every epoch), ``stopped``
    (the scheduler stopped its trial early), ``diverged`` (its loss became non-finite)
    or ``error`` (its trial failed).

    Args:
        trial_id: Tune's trial id.
        config: the trial's sampled hyperparameters.
        result: its last report (:mod:`mtl_search.train`), None when it reported nothing.
        groups: the groups it trained (its rows, in this order).
        max_epochs: the epochs a trial that ran to the end trained.
        error: the trial's error text, when it failed.
    """
    result = dict(result or {})
    networks = result.get("networks") or {}
    epochs_run = int(result.get("epoch", 0) or 0)
    shared: dict[str, Any] = {name: config.get(name) for name in HYPERPARAMETERS}
    shared.update({key: value for key, value in config.items() if "." in key})  # the scheme's own: <scheme>.<param>
    wall, loop = result.get("wall_s", math.nan), result.get("train_loop_s", math.nan)
    rows = []
    for group in groups:
        network = dict(networks.get(network_key(group)) or {})
        if error:
            status, reason = Status.ERROR, error.strip().splitlines()[-1][:500] if error.strip() else "error"
        elif network.get("status") == Status.DIVERGED:
            status, reason = Status.DIVERGED, str(network.get("reason", ""))
        elif not network:
            status, reason = Status.ERROR, "the trial reported no result"
        elif epochs_run >= max_epochs or network.get("status") == Status.COMPLETED:  # all epochs, or patience
            status, reason = Status.COMPLETED, str(network.get("reason", ""))
        else:
            status, reason = Status.STOPPED, f"early-stopped after {epochs_run} of {max_epochs} epochs"
        ok = status in OK_STATUSES
        row: dict[str, Any] = {"trial_id": trial_id, "group": group, "n_tasks": len(group_tasks(group)),
                               "status": status.value, "reason": reason, **shared}
        if row["n_tasks"] == 1:  # a group of one task trains plainly, whatever its trial's scheme
            row = {key: value for key, value in row.items() if "." not in key} | {"weighting": "equal"}
        if "sharing_depth" in network:  # the layers actually shared (clipped to depth; all of them for one task)
            row["sharing_depth"] = network["sharing_depth"]
        row.update(
            epochs_run=epochs_run,
            best_epoch=network.get("best_epoch", math.nan),
            score=network.get("score", math.nan) if ok else math.nan,
            test_score=network.get(score_key(TEST), math.nan) if ok else math.nan,
            params=network.get("params", math.nan),
            threads=result.get("threads", math.nan),
            wall_s=wall,
            train_loop_s=loop,
            overhead_s=wall - loop,
        )
        row.update({key_column(key): value for key, value in network.items() if is_task_key(key)})
        rows.append(row)
    return rows


def trials_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``trials.csv``: trial rows (one per network) as a frame, the fixed columns first, metric columns sorted after."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    fixed = [c for c in TRIAL_COLUMNS if c in frame.columns]
    rest = sorted(c for c in frame.columns if c not in fixed)
    return frame[fixed + rest]


def _primary(task_types: Mapping[str, str]) -> dict[str, str]:
    return {task: headline(kind) for task, kind in task_types.items()}


def best_per_group(trials: pd.DataFrame, task_types: Mapping[str, str], groups: Sequence[str]) -> pd.DataFrame:
    """``groups.csv``: every candidate group with its best trial by validation score.

    Groups without a successful trial stay in the table with empty scores, so
    a user sees which candidates failed. ``trials`` counts the search effort a
    group got: the more trials, the more optimistic its best.
    """
    primary = _primary(task_types)
    rows = []
    for group in groups:
        own = trials[trials["group"] == group] if not trials.empty else trials
        ok = own[own["status"].isin(OK_STATUSES) & np.isfinite(own["score"].astype(float))] if len(own) else own
        row: dict[str, Any] = {"group": group, "n_tasks": len(group_tasks(group)), "estimated": False,
                               "trials": len(own),
                               "trials_failed": int((~own["status"].isin(OK_STATUSES)).sum()) if len(own) else 0}
        if len(ok):
            best = ok.loc[ok["score"].astype(float).idxmin()]
            row.update(best_trial=best["trial_id"], valid_score=best["score"], test_score=best["test_score"],
                       params=best["params"])
            row.update({name: best[name] for name in HYPERPARAMETERS})
            for task in group_tasks(group):
                for split in (VALID, TEST):
                    for metric in (NLOSS, primary[task]):
                        name = column(split, task, metric)
                        row[name] = best.get(name, math.nan)
        else:
            row.update(best_trial=None, valid_score=math.nan, test_score=math.nan, params=math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def task_values(groups: pd.DataFrame, column: Callable[[str], str]) -> dict[str, dict[str, float]]:
    """Scored groups' per-task values: group -> task -> ``groups[column(task)]``."""
    scored = groups[np.isfinite(groups["valid_score"].astype(float))]
    return {str(row["group"]): {t: float(row[column(t)]) for t in group_tasks(str(row["group"]))}
            for _, row in scored.iterrows()}


def add_estimates(groups: pd.DataFrame, task_types: Mapping[str, str],
                  estimate: Callable[[dict[str, dict[str, float]]], dict[str, dict[str, float]]]) -> pd.DataFrame:
    """Append rows for untrained groups whose per-task values a strategy estimates from trained ones.

    ``estimate`` maps trained per-task values to estimated ones (e.g. the pairs
    strategy's higher-order approximation); it is applied to each reported value:
    validation and test normalised loss and the test headline metric.
    """
    primary = _primary(task_types)
    columns = {"valid_nloss": lambda t: column(VALID, t, NLOSS), "test_nloss": lambda t: column(TEST, t, NLOSS),
               "test_metric": lambda t: column(TEST, t, primary[t])}
    estimates = {name: estimate(task_values(groups, column)) for name, column in columns.items()}
    rows = []
    for group, valid in estimates["valid_nloss"].items():
        row: dict[str, Any] = {"group": group, "n_tasks": len(valid), "estimated": True, "trials": 0,
                               "trials_failed": 0, "best_trial": None,
                               "valid_score": float(np.mean(list(valid.values()))),
                               "test_score": float(np.mean(list(estimates["test_nloss"][group].values()))),
                               "params": math.nan}
        for task in valid:
            row[column(VALID, task, NLOSS)] = valid[task]
            row[column(TEST, task, NLOSS)] = estimates["test_nloss"][group][task]
            row[column(TEST, task, primary[task])] = estimates["test_metric"][group][task]
        rows.append(row)
    return pd.concat([groups, pd.DataFrame(rows)], ignore_index=True) if rows else groups


def rank_groupings(
    groups: pd.DataFrame,
    task_types: Mapping[str, str],
    *,
    max_groups: int | None = None,
    cost: str = "networks",
    limit: int = LEADERBOARD_LIMIT,
) -> pd.DataFrame:
    """``leaderboard.csv``: the best partitions of the tasks into scored groups, ranked.

    ``valid_score`` (the rank) and ``score`` are the mean normalised loss over all
    tasks, each task scored by its group's network, on validation and test.
    ``delta_vs_single_task_pct`` compares ``score`` with the all-singletons grouping.
    Partitions are found exactly by :func:`~mtl_search.grouping.best_partitions`:
    all of them when there are at most ``limit``, else the best ``limit``.

    Args:
        groups: ``groups.csv`` rows (trained and estimated).
        task_types: task -> type, in spec order.
        max_groups: rank only groupings of at most this many networks.
        cost: ``networks`` (inference cost = networks) or ``params`` (= their parameters).
        limit: the most rows.
    """
    if cost not in INFERENCE_COSTS:
        raise ValueError(f"unknown cost {cost!r}; valid: {', '.join(INFERENCE_COSTS)}")
    tasks = list(task_types)
    primary = _primary(task_types)
    columns = board_columns(task_types)
    valid = task_values(groups, lambda t: column(VALID, t, NLOSS))
    if not valid:
        return pd.DataFrame(columns=columns)
    test = task_values(groups, lambda t: column(TEST, t, NLOSS))
    metric = task_values(groups, lambda t: column(TEST, t, primary[t]))
    info = groups.drop_duplicates("group").set_index("group")

    def row_of(partition: tuple[str, ...]) -> dict[str, Any]:
        params = float(sum(info.loc[g, "params"] for g in partition))
        row: dict[str, Any] = {
            "grouping": grouping_id(partition), "n_groups": len(partition),
            "valid_score": float(np.mean([v for g in partition for v in valid[g].values()])),
            "score": float(np.mean([v for g in partition for v in test[g].values()])),
            "params": params,
            "inference_cost": float(len(partition)) if cost == "networks" else params,
            "estimated": bool(any(info.loc[g, "estimated"] for g in partition)),
        }
        for group in partition:
            for task, value in metric[group].items():
                row[column(TEST, task, primary[task])] = value
        return row

    ranked = best_partitions(tasks, valid, limit, max_groups=max_groups)
    if not ranked:
        return pd.DataFrame(columns=columns)
    board = pd.DataFrame([row_of(partition) for _, partition in ranked])
    singles = tuple(group_id([t]) for t in tasks)
    baseline = row_of(singles)["score"] if all(g in valid for g in singles) else math.nan
    board["delta_vs_single_task_pct"] = 100.0 * (board["score"] - baseline) / baseline
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    board["baseline"] = False
    return board[columns]


def board_columns(task_types: Mapping[str, str]) -> list[str]:
    """The columns of ``leaderboard.csv``, in order."""
    primary = _primary(task_types)
    return ["rank", "grouping", "n_groups", "valid_score", "score", "delta_vs_single_task_pct",
            *[column(TEST, t, primary[t]) for t in task_types], "params", "inference_cost", "estimated", "baseline"]


def add_baseline_rows(board: pd.DataFrame, task_types: Mapping[str, str],
                      baselines: Mapping[str, Mapping[str, float]], *, cost: str = "networks") -> pd.DataFrame:
    """Append reference rows (e.g. ``baseline:gbdt``): scored like a grouping of one model per task, never ranked.

    Their ``delta_vs_single_task_pct`` is against the networks' all-singletons grouping.
    """
    if not baselines:
        return board
    primary = _primary(task_types)
    tasks = list(task_types)
    singles = board.loc[board["grouping"] == grouping_id(tasks), "score"]
    reference = float(singles.iloc[0]) if len(singles) else math.nan
    rows = []
    for name, metrics in baselines.items():
        score = metrics[score_key(TEST)]
        rows.append({
            "rank": math.nan, "grouping": name, "n_groups": len(tasks), "valid_score": metrics[score_key(VALID)],
            "score": score, "delta_vs_single_task_pct": 100.0 * (score - reference) / reference,
            **{column(TEST, t, primary[t]): metrics[metric_key(TEST, t, primary[t])] for t in tasks},
            "params": math.nan, "inference_cost": float(len(tasks)) if cost == "networks" else math.nan,
            "estimated": False, "baseline": True,
        })
    extra = pd.DataFrame(rows, columns=board_columns(task_types))
    return pd.concat([board, extra], ignore_index=True) if len(board) else extra


def format_top(board: pd.DataFrame, n: int = 5) -> str:
    """The top ``n`` groupings, then any baseline rows, as a plain-text table."""
    is_baseline = board["baseline"].astype(bool) if "baseline" in board else pd.Series(False, index=board.index)
    ranked = board[~is_baseline]
    if ranked.empty:
        return "(no grouping could be scored: every candidate group lacks a successful trial)"
    shown = pd.concat([ranked.head(n), board[is_baseline]])[["rank", "grouping", "n_groups", "valid_score", "score",
                                                               "delta_vs_single_task_pct", "params"]].copy()
    shown["rank"] = shown["rank"].map(lambda r: "-" if pd.isna(r) else str(int(r)))
    first = str(ranked["grouping"].iloc[0])
    shown["grouping"] = [g if r == "-" else compact_grouping(str(g), reference=first)
                         for g, r in zip(shown["grouping"], shown["rank"], strict=True)]
    shown["params"] = shown["params"].map(lambda p: "-" if pd.isna(p) else f"{int(p):,}")
    shown["delta_vs_single_task_pct"] = shown["delta_vs_single_task_pct"].map(lambda d: f"{d:+.2f}")
    shown = shown.rename(columns={"score": "test_score", "delta_vs_single_task_pct": "vs_single_%"})
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    return text if shown["grouping"].iloc[0] == first else f"{text}\n#1 in full: {first}"


def confirm_table(
    board: pd.DataFrame,
    task_types: Mapping[str, str],
    results: Mapping[tuple[str, int], Mapping[str, Any]],
    seeds: Sequence[int],
    baselines: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
) -> pd.DataFrame:
    """``confirm.csv``: test metrics of retrained groupings, mean and std over seeds.

    One row per (grouping, task) with the headline metric and the normalised
    test loss, and one row per grouping with ``task = all``: its mean normalised
    test loss (the leaderboard's ``score``) over the retrained networks.

    Args:
        board: the leaderboard rows to confirm (their ``rank`` and ``grouping``).
        task_types: task -> type.
        results: (group, seed) -> the retrained network's reported metrics.
        seeds: the seeds every group was retrained with.
    """
    primary = _primary(task_types)
    rows = []
    for _, entry in board.iterrows():
        partition = grouping_groups(str(entry["grouping"]))
        per_seed_score = []
        for seed in seeds:
            values = [results[(g, seed)][metric_key(TEST, t, NLOSS)] for g in partition for t in group_tasks(g)]
            per_seed_score.append(float(np.mean(values)))
        for group in partition:
            for task in group_tasks(group):
                metric = [results[(group, seed)][metric_key(TEST, task, primary[task])] for seed in seeds]
                nloss = [results[(group, seed)][metric_key(TEST, task, NLOSS)] for seed in seeds]
                rows.append({"rank": entry["rank"], "grouping": entry["grouping"], "task": task, "group": group,
                             "metric": primary[task], "metric_mean": np.mean(metric), "metric_std": _std(metric),
                             "nloss_mean": np.mean(nloss), "nloss_std": _std(nloss), "seeds": len(seeds)})
        rows.append({"rank": entry["rank"], "grouping": entry["grouping"], "task": "all", "group": "",
                     "metric": "score", "metric_mean": np.mean(per_seed_score), "metric_std": _std(per_seed_score),
                     "nloss_mean": np.mean(per_seed_score), "nloss_std": _std(per_seed_score), "seeds": len(seeds)})
    for name, per_seed in (baselines or {}).items():
        for task in task_types:
            metric = [m[metric_key(TEST, task, primary[task])] for m in per_seed]
            nloss = [m[metric_key(TEST, task, NLOSS)] for m in per_seed]
            rows.append({"rank": math.nan, "grouping": name, "task": task, "group": name, "metric": primary[task],
                         "metric_mean": np.mean(metric), "metric_std": _std(metric), "nloss_mean": np.mean(nloss),
                         "nloss_std": _std(nloss), "seeds": len(per_seed)})
        scores = [m[score_key(TEST)] for m in per_seed]
        rows.append({"rank": math.nan, "grouping": name, "task": "all", "group": "", "metric": "score",
                     "metric_mean": np.mean(scores), "metric_std": _std(scores), "nloss_mean": np.mean(scores),
                     "nloss_std": _std(scores), "seeds": len(per_seed)})
    table = pd.DataFrame(rows)
    if "rank" in table:
        table["rank"] = table["rank"].astype("Int64")  # whole ranks; empty for a reference row
    return table


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def selection_csv(groups: pd.DataFrame, task_types: Mapping[str, str], *, cost: str = "networks") -> pd.DataFrame:
    """``selection.csv``: the best set of trained networks per inference budget (Standley et al. 2020).

    Networks may overlap; each task is served by its best chosen network. The set
    is chosen exactly on the **validation** normalised losses (``total_loss``, summed
    over tasks) for budgets 1, 1.5, ..., T; ``test_total_loss`` is the same set's sum
    on the test split. A network costs 1 (``cost: networks``) or its parameters in
    units of the mean single-task network (``cost: params``), so budgets read alike.
    Beyond :data:`mtl_search.grouping.EXACT_TASKS` tasks the exact selection's search
    grows too fast (measured: 47 networks of 30 tasks ran for minutes), so the table is
    empty there (only its header is written).
    """
    tasks = list(task_types)
    if len(tasks) > EXACT_TASKS:
        return pd.DataFrame()
    trained = groups[~groups["estimated"].astype(bool) & np.isfinite(groups["valid_score"].astype(float))]
    singles = trained[trained["n_tasks"] == 1]["params"].astype(float)
    unit = float(singles.mean()) if cost == "params" and len(singles) else 1.0
    networks = [
        Network(name=str(row["group"]), group=str(row["group"]),
                cost=float(row["params"]) / unit if cost == "params" else 1.0,
                losses={t: float(row[column(VALID, t, NLOSS)]) for t in group_tasks(str(row["group"]))})
        for _, row in trained.iterrows()
    ]
    if not networks:
        return pd.DataFrame()
    table = selection_table(networks, tasks, budgets_for(len(tasks)))
    test = {str(row["group"]): row for _, row in trained.iterrows()}
    table["test_total_loss"] = [
        float(sum(test[row[f"{t}_network"]][column(TEST, t, NLOSS)] for t in tasks)) if row["feasible"] else math.nan
        for _, row in table.iterrows()
    ]
    return table
