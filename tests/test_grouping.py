"""Group ids, candidate strategies and partition enumeration."""

from __future__ import annotations

import pytest

from mtl_search.grouping import (
    CANDIDATE_STRATEGIES,
    CandidateStrategy,
    bell_number,
    enumerate_partitions,
    group_id,
    group_tasks,
    grouping_id,
    make_strategy,
)

TASKS = ["income", "weeks", "marital", "union"]


def test_ids_are_canonical():
    assert group_id(["weeks", "income"]) == "income+weeks"
    assert group_tasks("income+weeks") == ("income", "weeks")
    assert grouping_id(["weeks", "income+marital"]) == "income+marital|weeks"
    with pytest.raises(ValueError):
        group_id([])


@pytest.mark.parametrize("name", sorted(CANDIDATE_STRATEGIES))
def test_every_strategy_proposes_all_singletons_and_valid_ids(name: str):
    strategy = make_strategy(name)
    assert isinstance(strategy, CandidateStrategy)
    groups = strategy.propose(TASKS)
    assert len(groups) == len(set(groups))
    assert set(TASKS) <= set(groups)
    for group in groups:
        assert group == group_id(group_tasks(group))
        assert set(group_tasks(group)) <= set(TASKS)


def test_exhaustive_is_every_subset_and_respects_max_group_size():
    assert len(make_strategy("exhaustive").propose(TASKS)) == 2 ** len(TASKS) - 1
    limited = make_strategy("exhaustive", max_group_size=2).propose(TASKS)
    assert len(limited) == 4 + 6
    assert max(len(group_tasks(g)) for g in limited) == 2


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="exhaustive"):
        make_strategy("clever")


@pytest.mark.parametrize("n", range(1, 8))
def test_partitions_of_all_subsets_are_the_bell_numbers(n: int):
    tasks = [f"t{i}" for i in range(n)]
    groups = make_strategy("exhaustive").propose(tasks)
    partitions = list(enumerate_partitions(tasks, groups))
    assert len(partitions) == bell_number(n) == [1, 2, 5, 15, 52, 203, 877][n - 1]
    assert len(set(partitions)) == len(partitions)
    for partition in partitions:
        members = [t for g in partition for t in group_tasks(g)]
        assert sorted(members) == sorted(tasks)


def test_partitions_use_only_available_groups():
    partitions = set(enumerate_partitions(["a", "b", "c"], ["a", "b", "c", "a+b"]))
    assert partitions == {("a", "b", "c"), ("a+b", "c")}
    assert list(enumerate_partitions(["a", "b"], ["a"])) == []
