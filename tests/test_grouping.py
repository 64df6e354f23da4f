"""Group ids, candidate strategies and partition enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtl_search.grouping import (
    CANDIDATE_STRATEGIES,
    MAX_CANDIDATE_GROUPS,
    CandidateStrategy,
    affinity_onto,
    bell_number,
    best_partitions,
    enumerate_partitions,
    group_id,
    group_tasks,
    grouping_id,
    make_strategy,
    subsets_up_to,
    top_affinity_groupings,
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
    rng = np.random.default_rng(0)
    affinity = rng.normal(size=(4, 4)) if strategy.needs_affinity else None
    estimates = {group_id(c): {t: float(rng.random()) for t in c}
                 for size in range(1, 5) for c in itertools.combinations(TASKS, size)}
    groups = strategy.propose(TASKS, affinity, estimates if strategy.needs_estimates else None)
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


def test_pairs_trains_singletons_pairs_and_all_and_estimates_the_rest():
    strategy = make_strategy("pairs")
    groups = strategy.propose(TASKS)
    assert len(groups) == 4 + 6 + 1 and "income+marital+union+weeks" in groups
    # Loss of each task alone 1.0; in a pair, the pair's members help each other by fixed amounts.
    trained = {g: {t: 1.0 for t in group_tasks(g)} for g in groups if len(group_tasks(g)) != 2}
    for a, b in itertools.combinations(TASKS, 2):
        trained[group_id([a, b])] = {a: 0.5 + 0.1 * TASKS.index(b), b: 0.9}
    estimated = strategy.estimate(TASKS, trained)
    assert set(estimated) == {group_id(c) for c in itertools.combinations(TASKS, 3)}
    triple = estimated["income+marital+weeks"]
    # income pairs with weeks (0.6) and marital (0.7): the estimate is their mean.
    assert triple["income"] == pytest.approx((0.6 + 0.7) / 2)
    assert not (set(estimated) & set(trained))


def test_pairs_does_not_estimate_from_a_missing_pair():
    strategy = make_strategy("pairs")
    trained = {g: {t: 1.0 for t in group_tasks(g)} for g in strategy.propose(TASKS) if g != "income+weeks"}
    estimated = strategy.estimate(TASKS, trained)
    assert not [g for g in estimated if {"income", "weeks"} <= set(group_tasks(g))]
    assert "marital+union+weeks" in estimated


def planted_affinity() -> np.ndarray:
    """Tasks a, b help each other; c, d help each other; across the two they hurt."""
    affinity = np.full((4, 4), -0.2)
    for i, j in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        affinity[i, j] = 0.5
    np.fill_diagonal(affinity, 1.0)
    return affinity


def test_affinity_onto_a_task_is_the_mean_from_its_group_mates():
    tasks = ["a", "b", "c", "d"]
    values = affinity_onto(tasks, planted_affinity(), "a+b+c")
    assert values == pytest.approx({"a": (0.5 - 0.2) / 2, "b": (0.5 - 0.2) / 2, "c": -0.2})
    assert affinity_onto(tasks, planted_affinity(), "d") == {"d": 0.0}


def test_affinity_strategy_trains_the_groups_of_its_top_groupings():
    tasks = ["a", "b", "c", "d"]
    top = top_affinity_groupings(tasks, planted_affinity(), 2)
    assert grouping_id(top[0][1]) == "a+b|c+d" and top[0][0] == pytest.approx(0.5)
    groups = make_strategy("affinity", top_k=1).propose(tasks, planted_affinity())
    assert groups == ["a", "b", "c", "d", "a+b", "c+d"]
    with pytest.raises(ValueError, match="affinity must be the measured T x T matrix"):
        make_strategy("affinity").propose(tasks)


class CountingCosts(dict):
    """Planted per-task costs of any group, computed on lookup and counted: a task costs 1 alone, less
    with each group-mate of its own cluster (cluster = its name's letter) and more with each stranger."""

    def __missing__(self, group: str) -> dict[str, float]:
        members = group_tasks(group)
        self[group] = {t: 1.0 - 0.1 * sum(u[0] == t[0] for u in members if u != t)
                       + 0.2 * sum(u[0] != t[0] for u in members) for t in members}
        return self[group]


def test_estimate_strategy_trains_the_groups_of_the_groupings_with_the_lowest_estimated_loss():
    tasks = ["a0", "a1", "a2", "b0", "b1", "c0"]
    estimates = CountingCosts()
    groups = make_strategy("estimate", top_k=1).propose(tasks, None, estimates)
    assert groups == [*tasks, "b0+b1", "a0+a1+a2"]  # singletons, then the rest smallest first
    assert len(estimates) == 2 ** 6 - 1  # within the exact search's reach every subset is estimated
    with pytest.raises(ValueError, match="estimates must map each group"):
        make_strategy("estimate").propose(tasks, None)
    with pytest.raises(ValueError, match=r"no estimated loss for group 'a0'.*estimates.csv"):
        make_strategy("estimate").propose(tasks, None, {})


def test_beyond_ten_tasks_the_estimate_strategy_asks_only_about_the_groups_its_search_reaches():
    tasks = [f"{letter}{i}" for letter in "abcdefghij" for i in range(3)]  # 30 tasks, 10 clusters of 3
    estimates = CountingCosts()
    groups = make_strategy("estimate", top_k=2).propose(tasks, None, estimates)
    assert {g for g in groups if len(group_tasks(g)) == 3} == {f"{c}0+{c}1+{c}2" for c in "abcdefghij"}
    assert len(groups) <= 30 + 2 * 15
    assert len(estimates) < 20_000  # of a billion subsets


@pytest.mark.parametrize("n_tasks", [3, 5, 6])
def test_best_partitions_is_exact(n_tasks: int):
    tasks = [f"t{i}" for i in range(n_tasks)]
    rng = np.random.default_rng(n_tasks)
    groups = make_strategy("exhaustive").propose(tasks)
    # Leave some groups out, as when trials fail: partitions may only use the rest.
    groups = [g for g in groups if len(group_tasks(g)) == 1 or rng.random() < 0.7]
    costs = {g: {t: float(rng.random()) for t in group_tasks(g)} for g in groups}
    totals = [(sum(costs[g][t] for g in p for t in group_tasks(g)), p) for p in enumerate_partitions(tasks, groups)]
    every = sorted(totals, key=lambda item: (item[0], grouping_id(item[1])))
    for n in (1, 7, len(every), len(every) + 5):
        found = best_partitions(tasks, costs, n)
        assert [p for _, p in found] == [p for _, p in every[:n]]
        assert [c for c, _ in found] == pytest.approx([c for c, _ in every[:n]])
    limited = best_partitions(tasks, costs, len(every), max_groups=2)
    assert [p for _, p in limited] == [p for _, p in every if len(p) <= 2]


@pytest.mark.parametrize("max_group_size", [None, 1, 2, 3])
@pytest.mark.parametrize("name", ["exhaustive", "pairs"])
def test_a_strategy_counts_its_groups_without_listing_them(name: str, max_group_size: int | None):
    for count in range(1, 8):
        tasks = [f"t{i}" for i in range(count)]
        strategy = make_strategy(name, max_group_size=max_group_size)
        assert strategy.count(count) == len(strategy.propose(tasks)), (count, max_group_size)
    assert make_strategy("affinity").count(5) is None  # the affinity run decides


def test_too_many_candidate_groups_are_refused_before_any_is_listed():
    assert subsets_up_to(10, 10) == MAX_CANDIDATE_GROUPS  # every subset of 10 tasks is still trained
    make_strategy("exhaustive").check_size([f"t{i}" for i in range(10)])
    tasks = [f"t{i}" for i in range(30)]
    with pytest.raises(ValueError, match=r"'exhaustive' would train 1,073,741,823 candidate groups for 30 tasks.*"
                                         r"candidates: affinity.*max_group_size: 2 \(465 groups\)"):
        make_strategy("exhaustive").propose(tasks)  # refused at once: a billion ids are never built
    assert make_strategy("exhaustive", max_group_size=2).count(30) == 465
    assert make_strategy("pairs").count(45) == 1036
    with pytest.raises(ValueError, match="'pairs' would train 1,036 candidate groups for 45 tasks"):
        make_strategy("pairs").check_size([f"t{i}" for i in range(45)])
    with pytest.raises(ValueError, match=r"'pairs' estimates every larger group.*10 tasks \(here 11\).*affinity"):
        make_strategy("pairs").check_size([f"t{i}" for i in range(11)])


def test_beyond_ten_tasks_affinity_groupings_come_from_a_beam_search_that_agrees_with_the_exact_one():
    from mtl_search.grouping import _beam_partitions

    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(7)]
    for _ in range(10):  # where both run, the beam finds the exact search's best grouping and score
        matrix = rng.normal(0.0, 0.1, (7, 7))
        matrix[rng.random((7, 7)) < 0.1] = np.nan  # unmeasured pairs count as the exact search counts them
        exact = top_affinity_groupings(tasks, matrix, 3)
        beam = _beam_partitions(tasks, lambda g, m=matrix: {t: -v for t, v in affinity_onto(tasks, m, g).items()},
                                3, width=64 * 3, largest=7, max_groups=None)
        assert beam[0][1] == exact[0][1] and -beam[0][0] / 7 == pytest.approx(exact[0][0])
    # 30 tasks in 10 clusters of 3 (a billion subsets): the beam recovers the clusters.
    tasks = [f"t{i:02d}" for i in range(30)]
    cluster = np.repeat(np.arange(10), 3)
    matrix = rng.normal(0.0, 0.02, (30, 30)) + 0.2 * (cluster[:, None] == cluster[None, :])
    (score, best), *_ = top_affinity_groupings(tasks, matrix, 2)
    assert best == tuple(group_id(tasks[i] for i in range(3 * c, 3 * c + 3)) for c in range(10))
    groups = make_strategy("affinity", top_k=2).propose(tasks, matrix)
    assert len(groups) <= 30 + 2 * 10 and all(len(group_tasks(g)) <= 30 for g in groups)
    limited = top_affinity_groupings(tasks, matrix, 1, max_group_size=2, max_groups=20)
    assert all(len(group_tasks(g)) <= 2 for g in limited[0][1]) and len(limited[0][1]) <= 20


def test_long_groupings_are_compacted_for_tables_only():
    from mtl_search.grouping import compact_grouping

    assert compact_grouping("a+b|c") == "a+b|c"
    tasks = [f"t{i:02d}" for i in range(30)]
    singles = grouping_id(tasks)
    assert compact_grouping(singles) == "all 30 alone"
    two = grouping_id(["t00+t01+t02", "t03+t04", *tasks[5:]])
    assert compact_grouping(two) == "t00+t01+t02|t03+t04 (+25 alone)"
    best = grouping_id(group_id(tasks[i:i + 3]) for i in range(0, 30, 3))
    cut = compact_grouping(best, 40)
    assert len(cut) == 40 and cut.endswith("…") and cut.startswith("t00+t01+t02|")
    other = grouping_id([*(group_id(tasks[i:i + 3]) for i in range(0, 27, 3)), "t27+t28", "t29"])
    assert compact_grouping(other, 40, reference=best) == "#1 but t27+t28|t29"
