"""What a trial reports to the search as its ``score``: one number from the validation losses of its networks.

A trial of ``unit: group`` trains one network: its score is that network's mean
normalised validation loss. A trial of ``unit: pack`` trains every candidate
group's network under one configuration, and the search (Optuna's TPE, ASHA)
needs one number for it:

``best_grouping`` (the default)
    the validation score of the best grouping the trial's own networks form: the
    partition of the tasks into its groups with the lowest mean normalised
    validation loss over all tasks (exact, :func:`mtl_search.grouping.best_partitions`).
    It rewards configurations that make *some* grouping good, which is what the
    leaderboard ranks.
``mean``
    the mean over the trial's networks of their scores: rewards configurations
    that suit every group, including groups no good grouping uses.

Only networks with a finite score count (a diverged network never scores); NaN
when no grouping (or no network) can be scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mtl_search.grouping import best_partitions

#: Per-task normalised validation losses of a trial's networks: group id -> task -> loss.
GroupLosses = Mapping[str, Mapping[str, float]]
OBJECTIVES = ("best_grouping", "mean")


def group_score(losses: Mapping[str, float]) -> float:
    """A network's score: the mean of its tasks' normalised losses (NaN when one is not finite)."""
    values = list(losses.values())
    return math.fsum(values) / len(values) if values and all(math.isfinite(v) for v in values) else math.nan


def trial_score(losses: GroupLosses, tasks: Sequence[str], objective: str = "best_grouping") -> float:
    """The trial's score under ``objective`` (see the module docstring).

    Args:
        losses: per network, its tasks' normalised validation losses at its best epoch.
        tasks: every task of the run (a grouping covers them all).
        objective: ``best_grouping`` or ``mean``.

    Raises:
        ValueError: an unknown objective (the valid ones are named).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, but got {objective=}.")
    if len(losses) == 1:  # a trial of one network (unit: group) scores that network
        return group_score(next(iter(losses.values())))
    scored = {group: dict(values) for group, values in losses.items() if math.isfinite(group_score(values))}
    if not scored:
        return math.nan
    if objective == "mean":
        return math.fsum(group_score(values) for values in scored.values()) / len(scored)
    best = best_partitions(tasks, scored, 1)
    return best[0][0] / len(tasks) if best else math.nan
