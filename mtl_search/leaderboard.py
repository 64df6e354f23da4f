"""From trial results to the three CSVs: trials, best network per group, groupings.

Honesty rules kept here:

* A group's network is its best trial by **validation** score; a grouping's
  rank is by the **validation** score built from those networks.
* Every number the leaderboard reports as ``score`` or ``test_*`` comes from the
  **test** split, which chose nothing.
* Failed trials (error, diverged) never score; the leaderboard says how many there were.

Pure pandas: no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mtl_search.grouping import enumerate_partitions, group_tasks, grouping_id
from mtl_search.metrics import PRIMARY_METRIC

HYPERPARAMETERS = ("depth", "sharing_depth", "width", "head_sizes", "weighting", "lr", "weight_decay",
                   "dropout", "batch_size", "epochs")
TRIAL_COLUMNS = ("trial_id", "group", "n_tasks", "status", "reason", *HYPERPARAMETERS, "epochs_run",
                 "best_epoch", "score", "test_score", "params", "threads", "wall_s", "train_loop_s", "overhead_s")
OK_STATUSES = ("completed", "stopped")


def trial_row(
    trial_id: str,
    config: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    *,
    max_epochs: int,
    error: str | None = None,
) -> dict[str, Any]:
    """One ``trials.csv`` row from a trial's config and its last reported result.

    ``status`` is ``completed`` (ran every epoch), ``stopped`` (early-stopped by
    the scheduler), ``diverged`` (non-finite loss) or ``error``.
    """
    result = dict(result or {})
    group = str(config.get("group", ""))
    row: dict[str, Any] = {"trial_id": trial_id, "group": group, "n_tasks": len(group_tasks(group)) if group else 0}
    epochs_run = int(result.get("epoch", 0) or 0)
    if error:
        status, reason = "error", error.strip().splitlines()[-1][:500] if error.strip() else "error"
    elif result.get("status") == "diverged":
        status, reason = "diverged", str(result.get("reason", ""))
    elif not result:
        status, reason = "error", "the trial reported no result"
    elif epochs_run >= max_epochs:
        status, reason = "completed", ""
    else:
        status, reason = "stopped", f"early-stopped after {epochs_run} of {max_epochs} epochs"
    row.update(status=status, reason=reason)
    for name in HYPERPARAMETERS:
        row[name] = config.get(name)
    if "sharing_depth" in result:  # the layers actually shared (clipped to depth)
        row["sharing_depth"] = result["sharing_depth"]
    wall = result.get("wall_s", math.nan)
    loop = result.get("train_loop_s", math.nan)
    row.update(
        epochs_run=epochs_run,
        best_epoch=result.get("best_epoch", math.nan),
        score=result.get("score", math.nan) if status in OK_STATUSES else math.nan,
        test_score=result.get("test/score", math.nan) if status in OK_STATUSES else math.nan,
        params=result.get("params", math.nan),
        threads=result.get("threads", math.nan),
        wall_s=wall,
        train_loop_s=loop,
        overhead_s=wall - loop,
    )
    for key, value in result.items():
        if key.startswith(("valid/", "test/", "train_loss/", "weight/")) and key != "test/score":
            row[key.replace("/", "_")] = value
    return row


def trials_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Trial rows as a frame with the fixed columns first, metric columns sorted after."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    fixed = [c for c in TRIAL_COLUMNS if c in frame.columns]
    rest = sorted(c for c in frame.columns if c not in fixed)
    return frame[fixed + rest]


def _primary(task_types: Mapping[str, str]) -> dict[str, str]:
    return {task: PRIMARY_METRIC[kind].name for task, kind in task_types.items()}


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
        row: dict[str, Any] = {"group": group, "n_tasks": len(group_tasks(group)), "trials": len(own),
                               "trials_failed": int((~own["status"].isin(OK_STATUSES)).sum()) if len(own) else 0}
        if len(ok):
            best = ok.loc[ok["score"].astype(float).idxmin()]
            row.update(best_trial=best["trial_id"], valid_score=best["score"], test_score=best["test_score"],
                       params=best["params"])
            row.update({name: best[name] for name in HYPERPARAMETERS})
            for task in group_tasks(group):
                for split in ("valid", "test"):
                    for metric in ("nloss", primary[task]):
                        column = f"{split}_{task}_{metric}"
                        row[column] = best.get(column, math.nan)
        else:
            row.update(best_trial=None, valid_score=math.nan, test_score=math.nan, params=math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def rank_groupings(groups: pd.DataFrame, task_types: Mapping[str, str]) -> pd.DataFrame:
    """``leaderboard.csv``: every partition of the tasks into scored groups, ranked.

    ``valid_score`` (the rank) and ``score`` are the mean normalised loss over all
    tasks, each task scored by its group's network, on validation and test.
    ``delta_vs_single_task_pct`` compares ``score`` with the all-singletons grouping.
    """
    tasks = list(task_types)
    primary = _primary(task_types)
    scored = groups[np.isfinite(groups["valid_score"].astype(float))].set_index("group")
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for group, best in scored.iterrows():
        per_task[str(group)] = {
            task: {
                "valid": float(best[f"valid_{task}_nloss"]),
                "test": float(best[f"test_{task}_nloss"]),
                "metric": float(best[f"test_{task}_{primary[task]}"]),
            }
            for task in group_tasks(str(group))
        }
    rows = []
    for partition in enumerate_partitions(tasks, per_task):
        row: dict[str, Any] = {"grouping": grouping_id(partition), "n_groups": len(partition)}
        valid, test = [], []
        for group in partition:
            for task, values in per_task[group].items():
                valid.append(values["valid"])
                test.append(values["test"])
                row[f"test_{task}_{primary[task]}"] = values["metric"]
        row["valid_score"] = float(np.mean(valid))
        row["score"] = float(np.mean(test))
        row["params"] = int(sum(scored.loc[g, "params"] for g in partition))
        rows.append(row)
    columns = ["rank", "grouping", "n_groups", "valid_score", "score", "delta_vs_single_task_pct",
               *[f"test_{t}_{primary[t]}" for t in tasks], "params"]
    if not rows:
        return pd.DataFrame(columns=columns)
    board = pd.DataFrame(rows).sort_values(["valid_score", "n_groups", "grouping"], kind="stable")
    singles = grouping_id(tasks)
    single_score = board.loc[board["grouping"] == singles, "score"]
    baseline = float(single_score.iloc[0]) if len(single_score) else math.nan
    board["delta_vs_single_task_pct"] = 100.0 * (board["score"] - baseline) / baseline
    board.insert(0, "rank", np.arange(1, len(board) + 1))
    return board[columns].reset_index(drop=True)


def format_top(board: pd.DataFrame, n: int = 5) -> str:
    """The top ``n`` groupings as a plain-text table."""
    if board.empty:
        return "(no grouping could be scored: every candidate group lacks a successful trial)"
    shown = board.head(n)[["rank", "grouping", "n_groups", "valid_score", "score", "delta_vs_single_task_pct",
                           "params"]].copy()
    shown = shown.rename(columns={"score": "test_score", "delta_vs_single_task_pct": "vs_single_%"})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
