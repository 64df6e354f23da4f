"""Groups of tasks, candidate strategies and partitions of the tasks into groups.

A *group* is a set of tasks trained by one network, written as its task names
sorted and joined by ``+`` (``income+weeks``). A *grouping* is a partition of
all tasks into groups, written as its group ids sorted and joined by ``|``.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import ClassVar

GROUP_SEP = "+"
GROUPING_SEP = "|"


def group_id(tasks: Iterable[str]) -> str:
    """Canonical id of a group: sorted task names joined by ``+``."""
    names = sorted(set(tasks))
    if not names:
        raise ValueError("a group needs at least one task")
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


# --------------------------------------------------------------------------- candidates


class CandidateStrategy(ABC):
    """Proposes which groups of tasks the search trains.

    Args:
        max_group_size: largest group to propose (``None``: no limit).
    """

    name: ClassVar[str]

    def __init__(self, *, max_group_size: int | None = None) -> None:
        if max_group_size is not None and max_group_size < 1:
            raise ValueError(f"max_group_size must be >= 1, but got {max_group_size=}.")
        self.max_group_size = max_group_size

    @abstractmethod
    def propose(self, tasks: Sequence[str]) -> list[str]:
        """Group ids to train, singletons first, in a stable order."""


class Exhaustive(CandidateStrategy):
    """Every non-empty subset of the tasks (2^T - 1 groups), up to ``max_group_size``."""

    name = "exhaustive"

    def propose(self, tasks: Sequence[str]) -> list[str]:
        largest = len(tasks) if self.max_group_size is None else min(self.max_group_size, len(tasks))
        return [
            group_id(combo)
            for size in range(1, largest + 1)
            for combo in itertools.combinations(tasks, size)
        ]


CANDIDATE_STRATEGIES: dict[str, type[CandidateStrategy]] = {
    Exhaustive.name: Exhaustive,
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


def bell_number(n: int) -> int:
    """Number of partitions of an ``n``-element set (Bell triangle)."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]
