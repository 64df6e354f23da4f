"""Plots of an experiment's results: matplotlib PNG files under ``plots/``.

matplotlib is imported only when a plot is drawn, and always with the Agg backend and
matplotlib's default style, so the files are the same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_search.grouping import group_id, group_tasks, grouping_groups, grouping_id
from mtl_search.metrics import PRIMARY_METRIC
from mtl_search.results import (
    AFFINITY_PNG,
    COST_FRONT_PNG,
    NLOSS,
    TASK_METRICS_PNG,
    TEST,
    TOP_GROUPINGS_PNG,
    VALID,
    Results,
    as_float,
    column,
)
from mtl_search.tables import format_number


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (servers, CI, Ray workers)
    import matplotlib.pyplot as plt

    return plt


def affinity_order(affinity: pd.DataFrame) -> list[str]:
    """The tasks ordered so that mutually helpful ones sit together: the leaves of an average-linkage
    clustering of the symmetrised affinity (distance = the largest mean affinity minus the pair's; an
    unmeasured pair is as far apart as any), in the order that keeps neighbours most alike."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    tasks = list(affinity.index)
    if len(tasks) < 3:
        return tasks
    values = affinity.to_numpy(dtype=float)
    both = np.stack([values, values.T])
    counted = np.isfinite(both).sum(axis=0)
    mean = np.where(counted > 0, np.where(np.isfinite(both), both, 0.0).sum(axis=0) / np.maximum(counted, 1), np.nan)
    off = ~np.eye(len(tasks), dtype=bool)
    finite = mean[off & np.isfinite(mean)]
    top, low = (float(finite.max()), float(finite.min())) if finite.size else (1.0, 0.0)
    distance = top - np.where(np.isfinite(mean), mean, low)
    np.fill_diagonal(distance, 0.0)
    order = leaves_list(linkage(squareform(np.maximum(distance, 0.0), checks=False), "average",
                                optimal_ordering=True))
    return [tasks[i] for i in order]


#: Beyond this many tasks the heatmap's cells carry no numbers (affinity.csv has them).
ANNOTATED_TASKS = 12


def plot_affinity(affinity: pd.DataFrame, path: Path) -> Path:
    """Heatmap of the inter-task affinity matrix (row = the task stepped on, column = the task affected),
    the tasks ordered by :func:`affinity_order` so clusters of helpful tasks show as blocks; readable up to
    30 tasks and beyond (the figure stops growing, the labels shrink, and cells are numbered up to
    :data:`ANNOTATED_TASKS` tasks)."""
    plt = _pyplot()
    order = affinity_order(affinity)
    affinity = affinity.loc[order, order]
    values = affinity.to_numpy(dtype=float)
    count = len(values)
    off_diagonal = values[~np.eye(count, dtype=bool)]
    finite = off_diagonal[np.isfinite(off_diagonal)]
    limit = float(np.max(np.abs(finite))) if finite.size else 1.0
    size = min(1.2 + 0.7 * count, 12.0)
    labels = 8 if count <= ANNOTATED_TASKS else max(5, int(8 * ANNOTATED_TASKS / count) + 2)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
    axes.set_xticks(range(count), affinity.columns, rotation=90 if count > ANNOTATED_TASKS else 45,
                    ha="center" if count > ANNOTATED_TASKS else "right", fontsize=labels)
    axes.set_yticks(range(count), affinity.index, fontsize=labels)
    axes.set_xlabel("affected task j")
    axes.set_ylabel("task i stepped on")
    if count <= ANNOTATED_TASKS:
        for i in range(count):
            for j in range(count):
                if np.isfinite(values[i, j]):
                    axes.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                              color="black" if abs(values[i, j]) < 0.6 * limit or i == j else "white")
    figure.colorbar(image, ax=axes, label="affinity Z(i→j) / Z(j→j)")
    axes.set_title("Inter-task affinity (lookahead), tasks ordered by cluster")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------- the result directory's plots
#
# Every plot reads a result directory back (mtl_search.review.Results). Groupings are those of
# leaderboard.csv, ranked on validation; what is plotted is the test split, except where a plot
# says it shows a choice (the Pareto front is chosen on validation, then drawn on test).

_SHARED, _ALONE, _CONFIRMED, _REFERENCE = "tab:blue", "0.45", "black", "tab:orange"


def _style():  # noqa: ANN202 - a matplotlib style context
    """matplotlib's defaults, whatever the user's matplotlibrc says: the same PNG everywhere."""
    return _pyplot().style.context("default")


def _save(figure: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: identical bytes on rerun
    plt.close(figure)
    return path


def _ticks() -> Any:
    """At most five ticks: zoomed axes otherwise crowd their labels together."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=5)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _limits(values: Sequence[float], *, pad: float = 0.08) -> tuple[float, float] | None:
    """Axis limits that hold every finite value with some room (zoomed: differences are small)."""
    finite = _finite(values)
    if not finite:
        return None
    low, high = min(finite), max(finite)
    span = high - low or max(abs(high), 1e-3) * 0.05
    return low - pad * span, high + pad * span


def _confirmed(results: Results, grouping: str, task: str, group: str | None = None) -> tuple[float, float, str]:
    """(mean, std, metric) of a (grouping, task) in ``confirm.csv``; NaNs when it was not retrained.

    ``task = all`` gives the grouping's score. With ``group`` the row is looked up by the network
    (any confirmed grouping that used it), for per-task plots.
    """
    frame = results.confirm
    missing = (math.nan, math.nan, "")
    if frame is None or frame.empty or not {"grouping", "task", "group"} <= set(frame.columns):
        return missing
    rows = frame[frame["task"].astype(str) == task]
    rows = rows[rows["group"].astype(str) == group] if group is not None else rows[
        rows["grouping"].astype(str) == grouping]
    if rows.empty:
        return missing
    row = rows.iloc[0]
    return float(row["metric_mean"]), float(row["metric_std"]), str(row["metric"])


def _confirmed_nloss(results: Results, grouping: str, task: str) -> tuple[float, float]:
    frame = results.confirm
    if frame is None or frame.empty or not {"grouping", "task", "nloss_mean"} <= set(frame.columns):
        return math.nan, math.nan
    rows = frame[(frame["grouping"].astype(str) == grouping) & (frame["task"].astype(str) == task)]
    if rows.empty:
        return math.nan, math.nan
    return float(rows.iloc[0]["nloss_mean"]), float(rows.iloc[0]["nloss_std"])


def _group_of(grouping: str, task: str) -> str:
    return next(g for g in grouping_groups(grouping) if task in group_tasks(g))


def _estimated(row: pd.Series) -> bool:
    return str(row.get("estimated", "")).strip().lower() == "true"


def plot_top_groupings(results: Results, path: Path, *, top: int = 10) -> Path | None:
    """The top ``top`` groupings with each task's normalised **test** loss in its group's network.

    One panel per task and one for the mean (the grouping's test score), groupings in rank
    order (chosen on validation). A filled marker is a task trained in a shared network, an
    open one a task alone; a dashed line is the task alone (its single-task network); black
    diamonds with bars are the mean ± std of the retrained networks in ``confirm.csv``.
    Reference models (``baseline:gbdt``) appear as a dotted line where their numbers exist.
    Returns None when no grouping was scored.
    """
    board = results.leaderboard.head(top)
    if board.empty:
        return None
    tasks = list(results.tasks)
    panels = [*tasks, "mean"] if len(tasks) > 1 else tasks
    labels = [f"#{int(r['rank'])}  {r['grouping']}{' *' if _estimated(r) else ''}" for _, r in board.iterrows()]
    singles = grouping_id(group_id([t]) for t in tasks)
    references = list(results.references.iterrows())
    plt = _pyplot()
    with _style():
        width = 2.0 + 2.5 * len(panels) + 0.065 * max(len(label) for label in labels)
        figure, axes_row = plt.subplots(1, len(panels), figsize=(width, 1.9 + 0.42 * len(board)), sharey=True,
                                        squeeze=False)
        y = np.arange(len(board))
        for axes, panel in zip(axes_row[0], panels, strict=True):
            values: list[float] = []
            if panel == "mean":
                score = board["score"].astype(float).to_numpy()
                axes.scatter(score, y, color="black", zorder=3, label="grouping (one network per group)")
                values += list(score)
                at_singles = results.leaderboard.loc[results.leaderboard["grouping"] == singles, "score"]
                single = as_float(at_singles.iloc[0]) if len(at_singles) else math.nan
                confirm = [_confirmed_nloss(results, str(g), "all") for g in board["grouping"]]
                reference_values = [(str(r["grouping"]), as_float(r.get("score"))) for _, r in references]
                axes.set_title("mean over tasks\n(test score)", fontsize=10)
            else:
                groups = [_group_of(str(g), panel) for g in board["grouping"]]
                nloss = [results.group_value(g, column(TEST, panel, NLOSS)) for g in groups]
                shared = np.array([len(group_tasks(g)) > 1 for g in groups])
                arr = np.array(nloss, dtype=float)
                axes.scatter(arr[shared], y[shared], color=_SHARED, zorder=3, label="task in a shared network")
                axes.scatter(arr[~shared], y[~shared], facecolors="white", edgecolors=_ALONE, zorder=3,
                             label="task alone in its network")
                values += nloss
                single = results.group_value(panel, column(TEST, panel, NLOSS))
                confirm = [_confirmed_nloss(results, str(g), panel) for g in board["grouping"]]
                reference_values = [(str(name), _confirmed_nloss(results, str(name), panel)[0])
                                    for name, _ in [(r["grouping"], r) for _, r in references]]
                axes.set_title(f"{panel}\n(normalised test loss)", fontsize=10)
            mean = np.array([c[0] for c in confirm], dtype=float)
            std = np.array([c[1] for c in confirm], dtype=float)
            has = np.isfinite(mean)
            if has.any():
                axes.errorbar(mean[has], y[has] + 0.28, xerr=np.nan_to_num(std[has]), fmt="D", color=_CONFIRMED,
                              markersize=4, capsize=3, zorder=4, label="retrained (confirm.csv): mean ± std")
                values += list(mean[has] + np.nan_to_num(std[has])) + list(mean[has] - np.nan_to_num(std[has]))
            if math.isfinite(single):
                axes.axvline(single, color=_ALONE, linestyle="--", linewidth=1, label="one network per task")
                values.append(single)
            for name, value in reference_values:
                if math.isfinite(value):
                    axes.axvline(value, color=_REFERENCE, linestyle=":", linewidth=1.5, label=f"{name} (reference)")
                    values.append(value)
            limits = _limits(values)
            if limits:
                axes.set_xlim(*limits)
            axes.grid(axis="x", alpha=0.3)
            axes.xaxis.set_major_locator(_ticks())
            axes.tick_params(axis="x", labelsize=8)
            axes.set_xlabel("lower is better", fontsize=8)
        first = axes_row[0][0]
        first.set_yticks(y, labels, fontsize=9)
        first.set_ylim(len(board) - 0.5, -0.6)  # rank 1 on top
        handles: dict[str, Any] = {}
        for axes in axes_row[0]:
            for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 4), fontsize=8,
                      frameon=False)
        estimated = any(label.endswith(" *") for label in labels)
        note = "  (* = some group estimated from pairs, not trained)" if estimated else ""
        figure.suptitle(f"{results.name}: top {len(board)} groupings, ranked on validation; normalised test loss "
                        f"per task{note}", fontsize=11)
        figure.tight_layout(rect=(0, 0.06 + 0.02 * (len(handles) > 4), 1, 1))
        return _save(figure, path)


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and score (lower is better), by rising cost.

    Ties in cost keep the lower score; a point must strictly improve the score of every cheaper one.
    Points with a non-finite cost or score are never on the front.
    """
    order = sorted((c, s, i) for i, (c, s) in enumerate(zip(costs, scores, strict=True))
                   if math.isfinite(c) and math.isfinite(s))
    front, best = [], math.inf
    for _, score, index in order:
        if score < best:
            front.append(index)
            best = score
    return front


def plot_score_vs_cost(results: Results, path: Path) -> Path | None:
    """Every grouping's test score against its inference cost, networks and parameters, with the Pareto front.

    The front is chosen on the **validation** score (the cheapest grouping that beats every
    cheaper one) and drawn with those groupings' **test** scores; on the networks panel the
    budgeted selection of ``selection.csv`` (networks may overlap) is drawn too. Returns None
    when no grouping was scored.
    """
    board = results.leaderboard
    if board.empty:
        return None
    networks = board["n_groups"].astype(float).to_numpy()
    params = pd.to_numeric(board["params"], errors="coerce").to_numpy(dtype=float)
    valid = board["valid_score"].astype(float).to_numpy()
    test = board["score"].astype(float).to_numpy()
    panels = [("networks", networks)] + ([("parameters", params)] if np.isfinite(params).any() else [])
    singles = grouping_id(group_id([t]) for t in results.tasks)
    plt = _pyplot()
    with _style():
        figure, axes_row = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
        for axes, (unit, cost) in zip(axes_row[0], panels, strict=True):
            x = cost.copy()
            if unit == "networks":  # spread the groupings of one cost level so they can be told apart
                for level in np.unique(x[np.isfinite(x)]):
                    at = np.flatnonzero(x == level)
                    x[at] = level + (np.linspace(-0.22, 0.22, len(at)) if len(at) > 1 else 0.0)
            shown = np.isfinite(x) & np.isfinite(test)
            axes.scatter(x[shown], test[shown], s=18, color="0.65", label="grouping", zorder=2)
            front = pareto_front(cost, valid)
            if front:
                axes.plot(x[front], test[front], "-o", color="tab:red", markersize=6, zorder=3,
                          label="Pareto front (chosen on validation)")
            axes.scatter(x[:1], test[:1], marker="*", s=200, color="tab:green", zorder=4,
                         label=f"rank 1: {board.iloc[0]['grouping']}")
            at_singles = np.flatnonzero(board["grouping"].astype(str).to_numpy() == singles)
            if len(at_singles) and np.isfinite(x[at_singles[0]]):
                axes.scatter(x[at_singles], test[at_singles], marker="s", s=60, facecolors="none",
                             edgecolors="black", zorder=4, label="one network per task")
            if unit == "networks" and results.cost == "networks" and results.selection is not None:
                chosen = results.selection
                if {"feasible", "cost", "test_total_loss"} <= set(chosen.columns):
                    chosen = chosen[chosen["feasible"].astype(str).str.lower() == "true"].drop_duplicates("cost")
                    if len(chosen):
                        axes.plot(chosen["cost"].astype(float), chosen["test_total_loss"].astype(float)
                                  / len(results.tasks), "--^", color="tab:purple", markersize=5, zorder=3,
                                  label="best networks per budget, overlaps allowed (selection.csv)")
            for _, reference in results.references.iterrows():
                score = as_float(reference.get("score"))
                if math.isfinite(score):
                    axes.axhline(score, color=_REFERENCE, linestyle=":", linewidth=1.5,
                                 label=f"{reference['grouping']} (reference)")
            if unit == "networks":
                levels = np.unique(cost[np.isfinite(cost)])
                axes.set_xticks(levels, [f"{v:g}" for v in levels])
                axes.set_xlabel("networks at inference")
            else:
                axes.set_xlabel("parameters at inference")
                missing = int((~np.isfinite(params)).sum())
                if missing:
                    axes.set_title(f"{missing} grouping(s) with an estimated group have no parameter count",
                                   fontsize=8, color="0.35")
            axes.set_ylabel("test score (mean normalised test loss,\nlower is better)", fontsize=9)
            axes.grid(alpha=0.3)
        handles: dict[str, Any] = {}
        for axes in axes_row[0]:
            for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
        figure.suptitle(f"{results.name}: test score vs inference cost (the run's inference cost: {results.cost})",
                        fontsize=11)
        figure.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(handles) / 2), 1, 1))
        return _save(figure, path)


def plot_task_metrics(results: Results, path: Path) -> Path | None:
    """Each task's headline **test** metric: alone, in its best group, in the rank-1 grouping, and references.

    A task's best group is the trained group holding it with the best **validation** value of
    the metric; alone is its single-task network. Bars are mean ± std of the retrained
    networks in ``confirm.csv`` where there are some. Returns None when no group was scored.
    """
    groups = results.scored_groups()
    if groups.empty:
        return None
    tasks = list(results.tasks)
    rank1 = str(results.leaderboard.iloc[0]["grouping"]) if len(results.leaderboard) else None
    columns = min(3, len(tasks))
    rows_n = math.ceil(len(tasks) / columns)
    plt = _pyplot()
    with _style():
        figure, grid = plt.subplots(rows_n, columns, figsize=(5.2 * columns, 0.6 + 2.5 * rows_n), squeeze=False)
        for index, task in enumerate(tasks):
            axes = grid[index // columns][index % columns]
            headline = PRIMARY_METRIC[results.tasks[task]]
            metric, higher = headline.name, headline.higher_is_better
            holding = groups[groups["group"].astype(str).map(lambda g, t=task: t in group_tasks(g))]
            valid_column, test_column = column(VALID, task, metric), column(TEST, task, metric)
            scores = (pd.to_numeric(holding[valid_column], errors="coerce") if valid_column in holding
                      else pd.Series(dtype=float))
            entries: list[tuple[str, float, str, str | None]] = [  # label, test value, colour, network for confirm
                ("alone", results.group_value(task, test_column), _ALONE, task)]
            if scores.notna().any():
                best = str(holding.loc[scores.idxmax() if higher else scores.idxmin(), "group"])
                entries.append((f"best group on valid: {'alone' if best == task else best}",
                                results.group_value(best, test_column), _SHARED, best))
            if rank1 is not None:
                group = _group_of(rank1, task)
                entries.append((f"in rank 1: {'alone' if group == task else group}",
                                results.group_value(group, test_column), "tab:green", group))
            for _, reference in results.references.iterrows():
                entries.append((str(reference["grouping"]), as_float(reference.get(test_column)),
                                _REFERENCE, None))
            y = np.arange(len(entries))
            values = [value for _, value, _, _ in entries]
            for position, (_, value, colour, network) in zip(y, entries, strict=True):
                if math.isfinite(value):
                    axes.scatter([value], [position], color=colour, s=40, zorder=3)
                    axes.annotate(format_number(value), (value, position), textcoords="offset points", xytext=(6, 4),
                                  fontsize=8)
                mean, std, _ = _confirmed(results, "", task, group=network) if network else (math.nan, 0.0, "")
                if math.isfinite(mean):
                    axes.errorbar([mean], [position + 0.25], xerr=[std], fmt="D", color=_CONFIRMED, markersize=4,
                                  capsize=3, zorder=4)
                    values += [mean - std, mean + std]
            limits = _limits(values, pad=0.25)
            if limits:
                axes.set_xlim(*limits)
            axes.set_yticks(y, [label for label, _, _, _ in entries], fontsize=8)
            axes.set_ylim(len(entries) - 0.5, -0.6)
            axes.set_title(task, fontsize=10)
            axes.set_xlabel(f"test {metric} ({'higher' if higher else 'lower'} is better)", fontsize=8)
            axes.xaxis.set_major_locator(_ticks())
            axes.tick_params(axis="x", labelsize=8)
            axes.grid(axis="x", alpha=0.3)
        for index in range(len(tasks), rows_n * columns):
            grid[index // columns][index % columns].set_visible(False)
        confirm = " (black ◆: retrained, mean ± std)" if results.confirm is not None else ""
        figure.suptitle(f"{results.name}: each task's test metric alone vs in its best group{confirm}", fontsize=11)
        figure.tight_layout()
        return _save(figure, path)


#: The plots :func:`write_plots` draws: file name -> what it shows (for the HTML report's captions).
PLOTS = {
    TOP_GROUPINGS_PNG: "The top groupings (ranked on validation) with each task's normalised test loss in its "
                       "group's network; filled = shared network, open = alone; dashed = one network per task.",
    COST_FRONT_PNG: "Test score against inference cost; the Pareto front is chosen on validation.",
    TASK_METRICS_PNG: "Each task's headline test metric alone, in its best group (chosen on validation), in the "
                      "rank-1 grouping, and for reference models.",
    AFFINITY_PNG: "Inter-task affinity measured in one all-task run (row = task stepped on, column = task "
                  "affected).",
}


def write_plots(results: Results, plots_dir: Path, *, top: int = 10, keep_going: bool = False,
                echo: Callable[[str], None] | None = None) -> list[Path]:
    """Draw every plot the results allow into ``plots_dir``; returns the files written.

    Args:
        results: a result directory read back.
        plots_dir: where the PNGs go (``<result dir>/plots``).
        top: groupings in the top-groupings plot.
        keep_going: a plot that fails is reported through ``echo`` and skipped instead of raised
            (``run`` uses it: the CSVs are what a search is for, and ``report`` can redraw later).
        echo: where skip and failure messages go.
    """
    drawers: list[tuple[str, Callable[[Path], Path | None]]] = [
        (TOP_GROUPINGS_PNG, lambda p: plot_top_groupings(results, p, top=top)),
        (COST_FRONT_PNG, lambda p: plot_score_vs_cost(results, p)),
        (TASK_METRICS_PNG, lambda p: plot_task_metrics(results, p)),
    ]
    if results.affinity is not None:
        drawers.append((AFFINITY_PNG, lambda p: plot_affinity(results.affinity, p)))
    written = []
    for name, draw in drawers:
        try:
            path = draw(plots_dir / name)
        except Exception as exc:  # noqa: BLE001 - only with keep_going, and the failure is reported
            if not keep_going:
                raise
            if echo is not None:
                echo(f"warning: could not draw {name} ({type(exc).__name__}: {exc}); "
                     f"`mtl-search report {results.location}` redraws the plots")
            continue
        if path is not None:
            written.append(path)
        elif echo is not None:
            echo(f"{name}: nothing to plot (no scored grouping)")
    return written
