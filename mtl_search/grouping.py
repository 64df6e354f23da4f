"""Groups of tasks, candidate strategies and partitions of the tasks into groups.

A *group* is a set of tasks trained by one network, written as its task names
sorted and joined by ``+`` (``income+weeks``). A *grouping* is a partition of
all tasks into groups, written as its group ids sorted and joined by ``|``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import ClassVar

import numpy as np

GROUP_SEP = "+"
GROUPING_SEP = "|"


def group_id(tasks: Iterable[str]) -> str:
    """Canonical id of a group: sorted task names joined by ``+``."""
    names = sorted(set(tasks))
    if not names:
        raise ValueError(f"tasks must hold at least one task name, but got {names=}.")
    return GROUP_SEP.join(names)


def group_tasks(group: str) -> tuple[str, ...]:
    """The task names of a group id."""
    return tuple(group.split(GROUP_SEP))


def grouping_id(groups: Iterable[str]) -> str:
    """Canonical id of a grouping: its group ids sorted and joined by ``|``."""
    return GROUPING_SEP.join(sorted(groups))


def grouping_groups(grouping: str) -> tuple[str, ...]:
    """The group ids of a grouping id."""
    return tuple(grouping.split(GROUPING_SEP))


#: The longest grouping id a table prints whole (see :func:`compact_grouping`).
GROUPING_WIDTH = 60


def compact_grouping(grouping: str, width: int = GROUPING_WIDTH, *, reference: str | None = None) -> str:
    """A grouping id for a table cell, at most ``width`` characters: whole when it fits; else, beside a
    ``reference`` grouping (the rank-1 row), the groups it has that the reference lacks (``#1 but
    a0+a1|a2``); else its shared groups, largest first, and how many tasks are alone
    (``a0+a1+a2|b0+b1 (+7 alone)``), cut with ``…``. Files keep the full id."""
    if len(grouping) <= width:
        return grouping
    groups = grouping_groups(grouping)
    if reference is not None and reference != grouping:
        mine = sorted(set(groups) - set(grouping_groups(reference)), key=lambda g: (-len(group_tasks(g)), g))
        text = "#1 but " + GROUPING_SEP.join(mine)
        if len(text) <= width:
            return text
    shared = sorted((g for g in groups if GROUP_SEP in g), key=lambda g: (-len(group_tasks(g)), g))
    alone = len(groups) - len(shared)
    text = GROUPING_SEP.join(shared) + (f" (+{alone} alone)" if alone else "") if shared else f"all {alone} alone"
    return text if len(text) <= width else text[:width - 1] + "…"


# --------------------------------------------------------------------------- candidates

#: Per-task values of groups: group id -> task -> value (e.g. normalised validation loss).
TaskValues = Mapping[str, Mapping[str, float]]

#: The most candidate groups a search trains (each under every configuration): every subset of 10 tasks.
#: Beyond it a strategy refuses before listing a single group (12 tasks have 4,095 subsets, 30 a billion).
MAX_CANDIDATE_GROUPS = 2**10 - 1


def subsets_up_to(tasks: int, size: int) -> int:
    """Non-empty subsets of at most ``size`` of ``tasks`` tasks: ``sum_k C(tasks, k)``, counted, not listed."""
    return sum(math.comb(tasks, k) for k in range(1, min(size, tasks) + 1))


class CandidateStrategy(ABC):
    """Proposes which groups of tasks the search trains, and may estimate the rest.

    Args:
        max_group_size: largest group to propose (``None``: no limit).
        top_k: for strategies that pick whole groupings, how many to take.
        max_groups: for strategies that pick whole groupings, the most groups one may have.
    """

    name: ClassVar[str]
    #: Whether :meth:`propose` needs the inter-task affinity matrix (one all-task measuring run first).
    needs_affinity: ClassVar[bool] = False
    #: Whether :meth:`propose` needs estimated group losses (from the same all-task run).
    needs_estimates: ClassVar[bool] = False

    def __init__(self, *, max_group_size: int | None = None, top_k: int = 3, max_groups: int | None = None) -> None:
        if max_group_size is not None and max_group_size < 1:
            raise ValueError(f"max_group_size must be >= 1, but got {max_group_size=}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, but got {top_k=}.")
        if max_groups is not None and max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, but got {max_groups=}.")
        self.max_group_size = max_group_size
        self.top_k = top_k
        self.max_groups = max_groups

    def _largest(self, tasks: Sequence[str]) -> int:
        return len(tasks) if self.max_group_size is None else min(self.max_group_size, len(tasks))

    @abstractmethod
    def propose(self, tasks: Sequence[str], affinity: np.ndarray | None = None,
                estimates: TaskValues | None = None) -> list[str]:
        """Group ids to train, singletons first, in a stable order.

        Args:
            tasks: the task names.
            affinity: ``affinity[i, j]`` = how much a step on task i's loss lowers task j's loss
                (only for strategies with ``needs_affinity``).
            estimates: estimated per-task validation losses of untrained groups, looked up one group at a
                time (only for strategies with ``needs_estimates``; e.g. a
                :class:`mtl_search.estimate.GroupLossEstimator`, which computes each on demand).
        """

    def estimate(self, tasks: Sequence[str], trained: TaskValues) -> dict[str, dict[str, float]]:
        """Per-task values of groups that were not trained, estimated from trained ones (default: none)."""
        return {}

    def count(self, tasks: int) -> int | None:
        """How many groups :meth:`propose` gives for ``tasks`` tasks, without listing them; None when only the
        affinity run decides (the default)."""
        return None

    def check_size(self, tasks: Sequence[str]) -> None:
        """Refuse, before listing any group, a proposal of more than :data:`MAX_CANDIDATE_GROUPS` groups.

        Raises:
            ValueError: too many groups (the message names the count and what to change).
        """
        count = self.count(len(tasks))
        if count is None or count <= MAX_CANDIDATE_GROUPS:
            return
        fits = max((k for k in range(1, len(tasks) + 1) if subsets_up_to(len(tasks), k) <= MAX_CANDIDATE_GROUPS),
                   default=1)
        raise ValueError(
            f"{self.name!r} would train {count:,} candidate groups for {len(tasks)} tasks, and a search trains at "
            f"most {MAX_CANDIDATE_GROUPS:,}: use grouping.candidates: affinity (it measures which tasks help each "
            f"other first and trains the groups of the top_k groupings), or grouping.max_group_size: {fits} "
            f"({subsets_up_to(len(tasks), fits):,} groups)")


class Exhaustive(CandidateStrategy):
    """Every non-empty subset of the tasks (2^T - 1 groups), up to ``max_group_size``."""

    name = "exhaustive"

    def propose(self, tasks: Sequence[str], affinity: np.ndarray | None = None,
                estimates: TaskValues | None = None) -> list[str]:
        self.check_size(tasks)
        return [group_id(combo) for size in range(1, self._largest(tasks) + 1)
                for combo in itertools.combinations(tasks, size)]

    def count(self, tasks: int) -> int:
        return subsets_up_to(tasks, tasks if self.max_group_size is None else self.max_group_size)


class Pairs(CandidateStrategy):
    """Singletons, all pairs and the all-task group; larger groups estimated from pairs.

    The loss of task t inside an untrained group G is estimated as the mean of its
    losses over the pairs inside G that contain it, ``mean_{u in G, u != t} L(t | {t, u})``:
    the higher-order approximation of Standley et al. 2020, "Which Tasks Should Be
    Learned Together in Multi-task Learning?". Estimated groups are flagged wherever
    they appear.
    """

    name = "pairs"

    def count(self, tasks: int) -> int:
        largest = tasks if self.max_group_size is None else min(self.max_group_size, tasks)
        return tasks + (math.comb(tasks, 2) if largest >= 2 else 0) + (1 if tasks > 2 and largest == tasks else 0)

    def check_size(self, tasks: Sequence[str]) -> None:
        super().check_size(tasks)
        if len(tasks) > EXACT_TASKS:
            raise ValueError(
                f"'pairs' estimates every larger group from the pairs and ranks every grouping exactly, which "
                f"stops being feasible beyond {EXACT_TASKS} tasks (here {len(tasks)}): use grouping.candidates: "
                "affinity, which ranks groupings by a beam search at any number of tasks")

    def propose(self, tasks: Sequence[str], affinity: np.ndarray | None = None,
                estimates: TaskValues | None = None) -> list[str]:
        self.check_size(tasks)
        groups = [group_id([t]) for t in tasks]
        if self._largest(tasks) >= 2:
            groups += [group_id(pair) for pair in itertools.combinations(tasks, 2)]
        if len(tasks) > 2 and self._largest(tasks) == len(tasks):
            groups.append(group_id(tasks))
        return groups

    def estimate(self, tasks: Sequence[str], trained: TaskValues) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for size in range(3, self._largest(tasks) + 1):
            for combo in itertools.combinations(tasks, size):
                group = group_id(combo)
                if group in trained:
                    continue
                pairs = [trained.get(group_id([t, u])) for t, u in itertools.combinations(combo, 2)]
                if any(pair is None for pair in pairs):
                    continue  # a pair failed: nothing honest to estimate from
                out[group] = {t: float(np.mean([trained[group_id([t, u])][t] for u in combo if u != t]))
                              for t in combo}
        return out


class Affinity(CandidateStrategy):
    """Groups of the ``top_k`` groupings with the highest inter-task affinity, plus singletons.

    Affinity is measured in one all-task training run by lookahead (Fifty et al. 2021,
    "Efficiently Identifying Task Groupings for Multi-Task Learning"):
    ``Z(i->j) = 1 - L_j(theta after one step on task i's loss) / L_j(theta)``, averaged
    over training (see :mod:`mtl_search.affinity`). A grouping's affinity is the mean
    over tasks of the mean affinity onto the task from its group-mates (0 for a
    task alone), so groupings that keep mutually helpful tasks together score high.
    """

    name = "affinity"
    needs_affinity = True

    def propose(self, tasks: Sequence[str], affinity: np.ndarray | None = None,
                estimates: TaskValues | None = None) -> list[str]:
        if affinity is None:
            raise ValueError("affinity must be the measured T x T matrix for the affinity strategy, "
                             "but got affinity=None.")
        return _singles_and(tasks, top_affinity_groupings(tasks, affinity, self.top_k,
                                                          max_group_size=self.max_group_size,
                                                          max_groups=self.max_groups))


class Estimate(CandidateStrategy):
    """Groups of the ``top_k`` groupings with the lowest *estimated* validation loss, plus singletons.

    Each group's loss is estimated without training it, from the all-task network of the affinity
    run, by a linearised fine-tune of that network on the group's tasks (in the spirit of Grad-TAG,
    Li, Sharma and Zhang 2024; see :mod:`mtl_search.estimate`). The groupings are searched by
    :func:`top_groupings`, which asks for an estimate only of the groups its search reaches. The
    estimates only choose what to train: the leaderboard ranks trained groups alone.
    """

    name = "estimate"
    needs_affinity = True
    needs_estimates = True

    def propose(self, tasks: Sequence[str], affinity: np.ndarray | None = None,
                estimates: TaskValues | None = None) -> list[str]:
        if estimates is None:
            raise ValueError("estimates must map each group asked about to its tasks' estimated losses for the "
                             "estimate strategy, but got estimates=None.")
        def costs(group: str) -> Mapping[str, float]:
            try:
                return estimates[group]
            except KeyError:
                raise ValueError(f"no estimated loss for group {group!r}: the estimates (estimates.csv when "
                                 "resuming) do not cover the groups this search asks about") from None

        ranked = top_groupings(tasks, costs, self.top_k, max_group_size=self.max_group_size,
                               max_groups=self.max_groups, beam=ESTIMATE_BEAM)
        return _singles_and(tasks, ranked)


def _singles_and(tasks: Sequence[str], ranked: Sequence[tuple[float, tuple[str, ...]]]) -> list[str]:
    """The singletons, then the other groups of the ranked groupings (smallest first)."""
    singles = [group_id([t]) for t in tasks]
    chosen = {g for _, partition in ranked for g in partition} - set(singles)
    return singles + sorted(chosen, key=lambda g: (len(group_tasks(g)), g))


CANDIDATE_STRATEGIES: dict[str, type[CandidateStrategy]] = {
    Exhaustive.name: Exhaustive,
    Pairs.name: Pairs,
    Affinity.name: Affinity,
    Estimate.name: Estimate,
}


def make_strategy(name: str, **options: object) -> CandidateStrategy:
    """Instantiate a registered candidate strategy by name."""
    try:
        cls = CANDIDATE_STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown candidate strategy {name!r}; valid: {', '.join(sorted(CANDIDATE_STRATEGIES))}"
        ) from None
    return cls(**options)  # type: ignore[arg-type]


def _mean_onto(affinity: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """Per member (task indices), the mean affinity onto it from the other members: 0 alone, and an
    unmeasured pair (NaN) left out rather than poisoning the score (0 when none is measured)."""
    if len(members) == 1:
        return np.zeros(1)
    block = affinity[np.ix_(members, members)].astype(float)
    np.fill_diagonal(block, np.nan)
    measured = (~np.isnan(block)).sum(axis=0)
    return np.where(measured > 0, np.nansum(block, axis=0) / np.maximum(measured, 1), 0.0)


def affinity_onto(tasks: Sequence[str], affinity: np.ndarray, group: str) -> dict[str, float]:
    """For each task of ``group``: the mean affinity onto it from its group-mates (0 alone)."""
    index = {t: i for i, t in enumerate(tasks)}
    members = group_tasks(group)
    return {t: float(v) for t, v in zip(members, _mean_onto(affinity, [index[t] for t in members]), strict=True)}


#: Beam width per grouping asked for, in :func:`top_groupings` beyond the exact search's reach.
AFFINITY_BEAM = 64
#: The same for :class:`Estimate`, whose every new group costs an estimate (15-90 ms on 2 cores, by network size):
#: 12 tasks ask about ~200 groups with ``top_k: 3``.
ESTIMATE_BEAM = 8
#: The most tasks whose groupings are ranked exactly (every subset: at most MAX_CANDIDATE_GROUPS).
EXACT_TASKS = 10

#: A group's per-task costs (lower is better), asked for one group id at a time.
GroupCosts = Callable[[str], Mapping[str, float]]


def top_groupings(tasks: Sequence[str], costs: GroupCosts, k: int, *, max_group_size: int | None = None,
                  max_groups: int | None = None, beam: int = AFFINITY_BEAM) -> list[tuple[float, tuple[str, ...]]]:
    """The ``k`` groupings of lowest total cost (the sum over tasks of ``costs(group)[task]``), best first.

    Exact (:func:`best_partitions` over every allowed subset) up to :data:`EXACT_TASKS` tasks while the
    subsets number at most :data:`MAX_CANDIDATE_GROUPS` (beyond, the exact search's bound is too weak
    even with small groups only: 30 tasks in pairs ran for minutes); otherwise a beam search over
    partitions built one task at a time, which asks ``costs`` only for the groups its partial partitions
    hold (``beam * k`` of them are kept per step) and never lists the subsets. Deterministic: the same
    costs give the same groupings and the same questions.
    """
    largest = len(tasks) if max_group_size is None else min(max_group_size, len(tasks))
    if len(tasks) > EXACT_TASKS or subsets_up_to(len(tasks), largest) > MAX_CANDIDATE_GROUPS:
        return _beam_partitions(tasks, costs, k, width=beam * k, largest=largest, max_groups=max_groups)
    table = {g: costs(g) for g in (group_id(c) for size in range(1, largest + 1)
                                   for c in itertools.combinations(tasks, size))}
    return best_partitions(tasks, table, k, max_groups=max_groups)


def top_affinity_groupings(
    tasks: Sequence[str], affinity: np.ndarray, k: int, *, max_group_size: int | None = None,
    max_groups: int | None = None,
) -> list[tuple[float, tuple[str, ...]]]:
    """The ``k`` groupings with the highest mean affinity onto each task (:func:`affinity_onto`), best first,
    with that mean as the score (:func:`top_groupings` minimises minus the affinity)."""
    ranked = top_groupings(tasks, lambda g: {t: -v for t, v in affinity_onto(tasks, affinity, g).items()}, k,
                           max_group_size=max_group_size, max_groups=max_groups)
    return [(-cost / len(tasks), partition) for cost, partition in ranked]


def _beam_partitions(tasks: Sequence[str], costs: GroupCosts, k: int, *, width: int, largest: int,
                     max_groups: int | None) -> list[tuple[float, tuple[str, ...]]]:
    """Beam search for the ``k`` groupings of lowest cost: tasks join in turn, each into one of the partial
    grouping's groups (with room) or a new group (if allowed); the ``width`` partial groupings of lowest
    cost so far (their tasks' costs in their groups as they stand) are kept. Heuristic and deterministic;
    it holds at most the beam's partitions and the costs of the groups it asked about."""
    known: dict[tuple[int, ...], float] = {}

    def cost_of(members: tuple[int, ...]) -> float:
        if members not in known:
            known[members] = float(sum(costs(group_id(tasks[i] for i in members)).values()))
        return known[members]

    beam: list[tuple[tuple[int, ...], ...]] = [()]
    scored: list[tuple[float, tuple[tuple[int, ...], ...]]] = []
    for task in range(len(tasks)):
        children = set()
        for partition in beam:
            for index, members in enumerate(partition):
                if len(members) < largest:
                    grown = (*partition[:index], (*members, task), *partition[index + 1:])
                    children.add(tuple(sorted(grown)))
            if max_groups is None or len(partition) < max_groups:
                children.add(tuple(sorted((*partition, (task,)))))
        scored = sorted((sum(cost_of(members) for members in p), p) for p in children)[:width]
        beam = [p for _, p in scored]
    ranked = [(cost, tuple(sorted(group_id(tasks[i] for i in members) for members in p))) for cost, p in scored]
    return sorted(ranked, key=lambda item: (item[0], grouping_id(item[1])))[:k]


# --------------------------------------------------------------------------- partitions


def enumerate_partitions(tasks: Sequence[str], groups: Iterable[str]) -> Iterator[tuple[str, ...]]:
    """Every partition of ``tasks`` into groups taken from ``groups``.

    With every subset available this yields Bell(T) partitions. Each partition is
    a tuple of group ids in canonical (sorted) order.
    """
    by_first: dict[str, list[frozenset[str]]] = {task: [] for task in tasks}
    order = {task: i for i, task in enumerate(tasks)}
    for group in set(groups):
        members = frozenset(group_tasks(group))
        if not members <= order.keys():
            continue
        first = min(members, key=order.__getitem__)
        by_first[first].append(members)

    def extend(remaining: frozenset[str], chosen: list[frozenset[str]]) -> Iterator[tuple[str, ...]]:
        if not remaining:
            yield tuple(sorted(group_id(g) for g in chosen))
            return
        first = min(remaining, key=order.__getitem__)
        for members in by_first[first]:
            if members <= remaining:
                chosen.append(members)
                yield from extend(remaining - members, chosen)
                chosen.pop()

    yield from extend(frozenset(tasks), [])


def best_partitions(
    tasks: Sequence[str], costs: TaskValues, n: int, *, max_groups: int | None = None,
) -> list[tuple[float, tuple[str, ...]]]:
    """The ``n`` partitions of ``tasks`` with the lowest total cost, exactly, best first.

    A partition's cost is the sum over tasks of the task's cost in its group,
    ``costs[group][task]``; only groups in ``costs`` may be used. Branch and bound:
    groups are added for the earliest unassigned task, cheapest first, and a branch
    is cut when its cost so far plus each remaining task's cheapest cost in a group
    that fits the remaining tasks (a lower bound on any completion, kept per set of
    remaining tasks) cannot beat the n-th best partition found.
    Ties break on the canonical grouping id, so the result is deterministic.

    Args:
        tasks: the tasks to partition.
        costs: group id -> task -> cost of the task in that group.
        n: how many partitions to return (fewer if fewer exist).
        max_groups: the most groups a partition may have (``None``: no limit).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, but got {n=}.")
    bit = {task: 1 << i for i, task in enumerate(tasks)}
    # Tasks and groups as bit masks; per task, the usable groups that hold it: the ones it is the
    # earliest task of (to branch on, cheapest total first) and all of them (for the bound, cheapest for it first).
    by_first: list[list[tuple[float, int, str]]] = [[] for _ in tasks]
    holding: list[list[tuple[float, int]]] = [[] for _ in tasks]
    for group, per_task in costs.items():
        members = group_tasks(group)
        if not all(t in bit for t in members):
            continue
        mask = sum(bit[t] for t in set(members))
        by_first[(mask & -mask).bit_length() - 1].append((float(sum(per_task[t] for t in members)), mask, group))
        for t in members:
            holding[bit[t].bit_length() - 1].append((float(per_task[t]), mask))
    for options in (*by_first, *holding):
        options.sort(key=lambda option: option[:2] if len(option) == 2 else (option[0], option[2]))
    bounds: dict[int, float] = {}

    def bound(remaining: int) -> float:
        """A lower bound on completing ``remaining``: each task at its cheapest in a group inside it
        (infinite when a task has none, so an impossible branch is cut at once)."""
        if remaining not in bounds:
            total, rest = 0.0, remaining
            while rest:
                low = rest & -rest
                rest ^= low
                total += next((c for c, mask in holding[low.bit_length() - 1] if mask & ~remaining == 0), np.inf)
            bounds[remaining] = total
        return bounds[remaining]

    best: list[tuple[float, str, tuple[str, ...]]] = []  # sorted (cost, grouping id, partition), at most n

    def worst() -> float:
        return best[-1][0] if len(best) == n else np.inf

    def extend(remaining: int, chosen: list[str], cost: float) -> None:
        if not remaining:
            partition = tuple(sorted(chosen))
            bisect.insort(best, (cost, grouping_id(partition), partition))
            del best[n:]
            return
        if max_groups is not None and len(chosen) >= max_groups:
            return
        for group_cost, members, group in by_first[(remaining & -remaining).bit_length() - 1]:
            if members & ~remaining:
                continue
            rest = remaining & ~members
            if cost + group_cost + bound(rest) > worst():
                continue
            chosen.append(group)
            extend(rest, chosen, cost + group_cost)
            chosen.pop()

    extend((1 << len(tasks)) - 1, [], 0.0)
    return [(cost, partition) for cost, _, partition in best]


def bell_number(n: int) -> int:
    """Number of partitions of an ``n``-element set (Bell triangle)."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]
